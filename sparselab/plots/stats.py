"""Figures of results over seeds: accuracy against the prune ratio with confidence intervals, and paired
differences.

Accuracies and other shares in [0, 1] (:func:`sparselab.stats.in_percent`) are drawn in %, their differences in
points; any other value (a loss) is drawn as it is, named on the axis.

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

from ..errors import ConfigError, check_bool
from ..stats import CONFIDENCE, _need, confidence_label, in_percent, is_accuracy, summarize_ci, verdict
from .style import TEMPLATE


def _scale(value: str, percent: bool | None) -> float:
    """100 where ``value`` is drawn in % (``percent``, by default :func:`~sparselab.stats.in_percent`), else 1."""
    check_bool("percent", percent, optional=True)
    return 100.0 if (in_percent(value) if percent is None else percent) else 1.0


def _setting_text(setting: str, x) -> str:
    """A setting's value as a figure prints it: a share (:func:`~sparselab.stats.in_percent`, e.g. the prune
    ratio) in %, any other setting (an epoch count, a λ) as it is, named."""
    return f"{x * 100:g} %" if _scale(setting, None) == 100 else f"{setting} {x:g}"


def plot_accuracy_ci(table, setting: str = "prune_ratio", value: str = "acc", method: str = "method",
                     methods: Sequence[str] | None = None, title: str | None = None,
                     confidence: float = CONFIDENCE, percent: bool | None = None) -> go.Figure:
    """Mean ``value`` against ``setting`` (in % where it is a share, such as the prune ratio) per method, with
    the Student-t ``confidence`` interval over seeds as error bars; a dense reference (``setting == 0``) is drawn
    as a horizontal band. ``methods`` picks and orders the methods shown (each must be in the table; a string is
    one method). ``value`` is drawn in % when it is an accuracy or another share (``percent=None``,
    :func:`~sparselab.stats.in_percent`), else as it is;
    ``percent`` forces one or the other.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"method": "p3b", "prune_ratio": 0.5, "seed": [0, 1], "loss": [0.4, 0.6]})
        >>> fig = plot_accuracy_ci(t, value="loss", confidence=0.9)
        >>> fig.data[0].y.round(3).tolist(), fig.layout.yaxis.title.text
        ([0.5], 'loss')
    """
    _need(table, [value, setting, method])
    if table.empty:
        raise ConfigError("the result table has no rows: there is nothing to plot")
    scale = _scale(value, percent)
    unit = " %" if scale == 100 else ""
    x_scale = _scale(setting, None)
    x_unit = " %" if x_scale == 100 else ""
    summary = summarize_ci(table, value, setting, method, confidence=confidence)
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
                fig.add_hrect(y0=r["low"] * scale, y1=r["high"] * scale, fillcolor="grey", opacity=0.15,
                              line_width=0)
            fig.add_hline(y=r["mean"] * scale, line_dash="dot", line_color="grey",
                          annotation_text=f"{m} {r['mean'] * scale:.{1 if unit else 3}f}{unit} (n={int(r['n'])}"
                                          + ("" if has_interval else ", no interval") + ")")
            continue
        fig.add_trace(go.Scatter(
            x=rows[setting] * x_scale, y=rows["mean"] * scale, name=m, mode="lines+markers",
            error_y=dict(type="data", symmetric=False, array=(rows["high"] - rows["mean"]) * scale,
                         arrayminus=(rows["mean"] - rows["low"]) * scale),
            customdata=rows[["n"]].to_numpy(),
            hovertemplate=f"{m}<br>{setting} %{{x:g}}{x_unit}<br>{value} %{{y:.{2 if unit else 4}f}}{unit}<br>seeds "
                          "%{customdata[0]}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title or f"{value} against {setting} (mean, "
                                                          f"{confidence_label(confidence)} interval over seeds)",
                      xaxis_title=f"{setting} (%)" if x_unit else setting,
                      yaxis_title=f"{value} (%)" if unit else value,
                      legend_title=method)
    return fig


def plot_paired_differences(diffs, setting: str = "prune_ratio", method: str = "method",
                            expect: str = "positive", title: str | None = None, value: str | None = None,
                            percent: bool | None = None) -> go.Figure:
    """Each method − baseline with its interval per setting, coloured by the verdict (green supports, red
    contradicts, grey inconclusive); the zero line marks no difference. The title names the confidence
    :func:`~sparselab.stats.paired_differences` computed the intervals with (its ``attrs["confidence"]``; 95 %
    for a table without it).

    The axis names the compared value: ``value``, else the table's ``attrs["value"]`` (which
    :func:`~sparselab.stats.paired_differences` records), else ``acc``. Differences of an accuracy read in
    accuracy points, of another share (:func:`~sparselab.stats.in_percent`) in percentage points, of any other
    value (a loss) as they are; ``percent`` forces points (True) or the raw difference (False). A row without a
    difference (no seed in common, or no finite value) keeps its line, marked as such.

    Example:
        >>> import pandas as pd
        >>> from sparselab.stats import paired_differences
        >>> t = pd.DataFrame({"method": ["a", "a", "b", "b"], "prune_ratio": 0.5, "seed": [0, 1, 0, 1],
        ...                   "loss": [0.5, 0.7, 0.3, 0.4]})
        >>> fig = plot_paired_differences(paired_differences(t, "b", value="loss"), expect="negative")
        >>> fig.layout.xaxis.title.text, round(fig.data[0].x[0], 3)
        ('difference in loss', 0.25)
    """
    _need(diffs, [method, "baseline", setting, "diff", "low", "high", "n"])
    if diffs.empty:
        raise ConfigError("the table of paired differences has no rows: there is nothing to plot")
    recorded = diffs.attrs.get("value")
    if value is not None and recorded is not None and value != recorded:
        raise ConfigError(f"value={value!r} was given, but this table holds differences of {recorded!r} (its "
                          f"attrs['value']); leave value out or pass {recorded!r}")
    value = value if value is not None else recorded if recorded is not None else "acc"
    scale = _scale(value, percent)
    if scale == 100 and is_accuracy(value):
        axis, unit = "difference (accuracy points)", " points"
    elif scale == 100:
        axis, unit = f"difference in {value} (percentage points)", " points"
    else:
        axis, unit = f"difference in {value}", ""
    colours = {"supports": "#2ca02c", "contradicts": "#d62728", "inconclusive": "#7f7f7f"}
    fig = go.Figure()
    labels = [f"{r[method]} − {r['baseline']} @ {_setting_text(setting, r[setting])}" for _, r in diffs.iterrows()]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # they would share one line of the figure, their points drawn over each other
        raise ConfigError(f"the table of paired differences holds {', '.join(map(repr, repeated))} more than once; "
                          f"a figure draws one difference per method, baseline and {setting} (was a table "
                          f"appended twice?)")
    shown = []
    for label, (_, r) in zip(labels, diffs.iterrows()):
        n = int(r["n"])
        seeds = f"{n} seed{'s' if n != 1 else ''}"
        if not np.isfinite(float(r["diff"])):  # nothing to draw: the line says so rather than staying empty
            label = f"{label} (no difference measured, {seeds})"
            shown.append(label)
            fig.add_trace(go.Scatter(x=[None], y=[label], mode="markers", showlegend=False, hoverinfo="skip"))
            continue
        shown.append(label)
        v = verdict(r["low"], r["high"], expect)
        interval = "" if np.isfinite([r["low"], r["high"]]).all() else ", no interval"
        fig.add_trace(go.Scatter(
            x=[r["diff"] * scale], y=[label], mode="markers", marker=dict(color=colours[v], size=9), name=v,
            showlegend=False, error_x=dict(type="data", symmetric=False, array=[(r["high"] - r["diff"]) * scale],
                                           arrayminus=[(r["diff"] - r["low"]) * scale]),
            hovertemplate=f"{label}<br>%{{x:+.{2 if unit else 4}f}}{unit}<br>{seeds}{interval} — {v}"
                          "<extra></extra>"))
    fig.add_vline(x=0, line_color="black", line_width=1)
    confidence = diffs.attrs.get("confidence", CONFIDENCE)
    what = "" if is_accuracy(value) else f" in {value}"
    fig.update_yaxes(categoryorder="array", categoryarray=shown)
    fig.update_layout(template=TEMPLATE, title=title or f"Paired differences{what} over seeds "
                                                          f"({confidence_label(confidence)} intervals)",
                      xaxis_title=axis, height=max(300, 40 * len(labels) + 120))
    return fig
