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

from .art import plot_exchange, plot_gradient_profile
from .p3b import plot_block_benefit, plot_keep_ratios, plot_reactivations
from .patterns import plot_layer_keep_ratios, plot_weight_patterns

__all__ = ["plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "plot_layer_keep_ratios",
           "plot_weight_patterns", "plot_gradient_profile", "plot_exchange"]
