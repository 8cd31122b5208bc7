"""Figures of results over seeds: accuracy against the prune ratio with 95 % intervals, and paired differences.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"method": ["p3b", "p3b", "uniform", "uniform"], "prune_ratio": 0.5, "seed": [0, 1] * 2,
    ...                   "acc": [0.9, 0.92, 0.88, 0.9]})
    >>> [tr.name for tr in plot_accuracy_ci(t).data]
    ['p3b', 'uniform']
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from ..errors import ConfigError
from ..stats import CONFIDENCE, _need, confidence_label, summarize_ci, verdict
from .style import TEMPLATE


def plot_accuracy_ci(table, setting: str = "prune_ratio", value: str = "acc", method: str = "method",
                     methods: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Mean ``value`` (in %) against ``setting`` per method, with the Student-t 95 % interval over seeds as error
    bars; a dense reference (``setting == 0``) is drawn as a horizontal band. ``methods`` picks and orders the
    methods shown (each must be in the table; a string is one method)."""
    _need(table, [value, setting, method])
    if table.empty:
        raise ConfigError("the result table has no rows: there is nothing to plot")
    summary = summarize_ci(table, value, setting, method)
    fig = go.Figure()
    present = list(dict.fromkeys(summary[method]))
    if isinstance(methods, str):  # one method, not its characters
        methods = [methods]
    if methods is not None:
        unknown = [m for m in methods if m not in present]
        if unknown or not methods:
            raise ConfigError(f"methods must name methods of the table, got {list(methods)}; it holds: "
                              f"{', '.join(map(str, present))}")
    chosen = list(methods) if methods is not None else present
    for m in chosen:
        rows = summary[summary[method] == m].sort_values(setting)
        if rows.empty:
            continue
        if (rows[setting] == 0).all() and len(chosen) > 1:  # the dense reference
            r = rows.iloc[0]
            has_interval = bool(np.isfinite([r["low"], r["high"]]).all())
            if has_interval:
                fig.add_hrect(y0=r["low"] * 100, y1=r["high"] * 100, fillcolor="grey", opacity=0.15, line_width=0)
            fig.add_hline(y=r["mean"] * 100, line_dash="dot", line_color="grey",
                          annotation_text=f"{m} {r['mean'] * 100:.1f} % (n={int(r['n'])}"
                                          + ("" if has_interval else ", no interval") + ")")
            continue
        fig.add_trace(go.Scatter(
            x=rows[setting] * 100, y=rows["mean"] * 100, name=m, mode="lines+markers",
            error_y=dict(type="data", symmetric=False, array=(rows["high"] - rows["mean"]) * 100,
                         arrayminus=(rows["mean"] - rows["low"]) * 100),
            customdata=rows[["n"]].to_numpy(),
            hovertemplate=f"{m}<br>{setting} %{{x:g}} %<br>{value} %{{y:.2f}} %<br>seeds %{{customdata[0]}}"
                          "<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title or f"{value} against {setting} (mean, {CONFIDENCE:.0%} "
                                                          f"interval over seeds)",
                      xaxis_title=f"{setting} (%)", yaxis_title=f"{value} (%)", legend_title=method)
    return fig


def plot_paired_differences(diffs, setting: str = "prune_ratio", method: str = "method",
                            expect: str = "positive", title: str | None = None) -> go.Figure:
    """Each method − baseline (points, in accuracy points) with its interval per setting, coloured by the
    verdict (green supports, red contradicts, grey inconclusive); the zero line marks no difference. The title
    names the confidence :func:`~sparselab.stats.paired_differences` computed the intervals with (its
    ``attrs["confidence"]``; 95 % for a table without it)."""
    _need(diffs, [method, "baseline", setting, "diff", "low", "high", "n"])
    if diffs.empty:
        raise ConfigError("the table of paired differences has no rows: there is nothing to plot")
    colours = {"supports": "#2ca02c", "contradicts": "#d62728", "inconclusive": "#7f7f7f"}
    fig = go.Figure()
    labels = [f"{r[method]} − {r['baseline']} @ {r[setting] * 100:g} %" for _, r in diffs.iterrows()]
    for label, (_, r) in zip(labels, diffs.iterrows()):
        v = verdict(r["low"], r["high"], expect)
        fig.add_trace(go.Scatter(
            x=[r["diff"] * 100], y=[label], mode="markers", marker=dict(color=colours[v], size=9), name=v,
            showlegend=False, error_x=dict(type="data", symmetric=False, array=[(r["high"] - r["diff"]) * 100],
                                           arrayminus=[(r["diff"] - r["low"]) * 100]),
            hovertemplate=f"{label}<br>%{{x:+.2f}} points<br>{int(r['n'])} seeds — {v}<extra></extra>"))
    fig.add_vline(x=0, line_color="black", line_width=1)
    confidence = diffs.attrs.get("confidence", CONFIDENCE)
    fig.update_layout(template=TEMPLATE, title=title or f"Paired differences over seeds "
                                                          f"({confidence_label(confidence)} intervals)",
                      xaxis_title="difference (accuracy points)", height=max(300, 40 * len(labels) + 120))
    return fig
