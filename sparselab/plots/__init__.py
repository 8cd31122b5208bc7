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
from .stats import plot_accuracy_ci, plot_paired_differences


def use_notebook_renderer() -> str:
    """Show figures in JupyterLab *and* keep them in exported HTML: plotly's mimetype renderer plus the
    ``notebook`` renderer, which embeds plotly.js once so the HTML works offline. Inside a kernel plotly.js is
    embedded right away, in the calling cell's output, so that figures drawn later into widget outputs (the
    explorers) never carry or lose it. Returns the renderer string.

    Example:
        >>> use_notebook_renderer()
        'plotly_mimetype+notebook'
    """
    pio.renderers.default = "plotly_mimetype+notebook"
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return pio.renderers.default
    if get_ipython() is not None and hasattr(pio.renderers, "_activate_pending_renderers"):
        pio.renderers._activate_pending_renderers()
    return pio.renderers.default


__all__ = ["use_notebook_renderer", "plot_accuracy_ci", "plot_paired_differences", "export_figures",
           "plot_attribution_comparison", "plot_block_benefit", "plot_keep_ratios", "plot_reactivations",
           "plot_layer_keep_ratios", "plot_weight_patterns", "plot_gradient_profile", "plot_exchange",
           "plot_art_keep_ratios", "plot_block_criteria", "plot_block_scores"]
