"""The look every sparselab figure shares (plots and widgets alike)."""
TEMPLATE = "plotly_white"
