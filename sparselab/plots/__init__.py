"""Plotly figures of a run's :class:`~sparselab.history.History` or of a (pruned) model.

History views take a History (or one run of a merged History, chosen with ``run=``); weight-pattern views take a
model (and optionally masks). Every function returns a ``plotly.graph_objects.Figure``; nothing is printed or shown.

Example:
    >>> from sparselab.history import History
    >>> from sparselab.plots import plot_reactivations
    >>> fig = plot_reactivations(History())
    >>> fig.layout.annotations[0].text.startswith("No mask changes")
    True
"""
from __future__ import annotations

import plotly.io as pio

from .art import plot_art_keep_ratios, plot_exchange, plot_gradient_profile
from .attribution import plot_attribution_comparison
from .criteria import plot_block_criteria, plot_block_scores
from .export import export_figures
from .p3b import plot_block_benefit, plot_keep_ratios, plot_reactivations
from .patterns import plot_layer_keep_ratios, plot_weight_patterns

def use_notebook_renderer() -> str:
    """Show figures in JupyterLab *and* keep them in exported HTML: plotly's mimetype renderer plus the
    ``notebook`` renderer, which embeds plotly.js once so the HTML works offline. Returns the renderer string.

    Example:
        >>> use_notebook_renderer()
        'plotly_mimetype+notebook'
    """
    pio.renderers.default = "plotly_mimetype+notebook"
    return pio.renderers.default


__all__ = ["use_notebook_renderer", "export_figures", "plot_attribution_comparison", "plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "plot_layer_keep_ratios",
           "plot_weight_patterns", "plot_gradient_profile", "plot_exchange", "plot_art_keep_ratios", "plot_block_criteria", "plot_block_scores"]
