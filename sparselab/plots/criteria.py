"""Block benefit beside the classical criteria (magnitude, gradient, Taylor) and attributions, per block.

Example:
    >>> from sparselab.history import History
    >>> h = History()
    >>> for step in (0, 10):
    ...     h.log_blocks("crit_abs_w", {"blocks.0.attn": 1.0 + step, "blocks.0.mlp": 2.0}, step=step, epoch=0)
    >>> fig = plot_block_criteria(h, metrics=["crit_abs_w"])
    >>> fig.data[0].z.tolist()
    [[0.5, 1.0], [1.0, 0.18181818181818182]]
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import ConfigError, check_bool
from ..history import History, as_history
from .p3b import _nonfinite, _nonfinite_note, _pivot, block_label, select_run, sort_block_names

TITLES = {"benefit_cls": "ΔΨ class-token probe", "benefit_patch": "ΔΨ patch probe", "crit_abs_w": "mean |w|",
          "crit_abs_grad": "mean |∂L/∂w|", "crit_taylor": "mean (w·∂L/∂w)²"}
DEFAULT = ("benefit_cls", "crit_abs_w", "crit_abs_grad", "crit_taylor")


def plot_block_criteria(history: History, metrics: Sequence[str] = DEFAULT, run: str | None = None,
                        normalize: bool = True) -> go.Figure:
    """Blocks × time heatmaps, one per criterion; with ``normalize`` each column (moment) is divided by its largest
    |value|, so the panels compare *where in depth* each criterion puts importance, moment by moment. The colours
    are those of :func:`~sparselab.plots.plot_block_benefit`: positive blue, negative red, 0 white. Every panel
    lists the same blocks in depth order (a block a criterion did not measure is blank); values that are not
    finite are left blank and named in the title. Without ``normalize`` each panel has its own colour scale (the
    criteria have different units); hovering a cell gives the logged value."""
    history = as_history(history, "plot_block_criteria")
    check_bool("normalize", normalize)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ConfigError(f"metrics must name at least one block metric, e.g. {list(DEFAULT)}")
    blocks = select_run(history, run)["blocks"]
    missing = [m for m in metrics if m not in set(blocks.metric)]
    if missing:
        raise ConfigError(f"the History lacks {missing}; record them with sparselab.probes.BlockBenefit and "
                          f"BlockCriteria (present: {sorted(set(blocks.metric)) or 'none'})")
    fig = make_subplots(rows=1, cols=len(metrics), shared_yaxes=True,
                        subplot_titles=[TITLES.get(m, m) for m in metrics], horizontal_spacing=0.03)
    order = sort_block_names(blocks.loc[blocks.metric.isin(metrics), "block"])
    for i, metric in enumerate(metrics, start=1):
        raw = _pivot(blocks, metric).reindex(order)
        raw = raw.where(np.isfinite(raw))
        # normalised by the largest finite |value| of the moment; the hover keeps the logged value
        table = raw / raw.abs().max(axis=0).replace(0, 1) if normalize else raw
        shown = "%{customdata:.4g} (normalised %{z:.3f})" if normalize else "%{z:.4g}"
        fig.add_trace(go.Heatmap(z=table.to_numpy(), x=[str(c) for c in table.columns],
                                 y=[block_label(b) for b in table.index], coloraxis=_coloraxis(i, normalize),
                                 customdata=raw.to_numpy() if normalize else None,
                                 hovertemplate="%{y}, step %{x}: " + shown + "<extra>" + TITLES.get(metric, metric)
                                 + "</extra>"), row=1, col=i)
        fig.update_xaxes(title_text="step", type="category", row=1, col=i)
        if not normalize:  # raw criteria have their own units: one colour scale per panel
            _panel_colorbar(fig, i, TITLES.get(metric, metric))
    fig.update_yaxes(autorange="reversed", title_text="block", row=1, col=1)
    if normalize:
        fig.update_layout(coloraxis=dict(colorscale="RdBu", cmid=0,
                                         colorbar=dict(title="normalised")))
    fig.update_layout(template="plotly_white",
                      title="Where each criterion puts importance, per block over training"
                            + (" (normalised per moment)" if normalize else "")
                            + _nonfinite_note(_nonfinite(blocks, metrics)))
    return fig


def _panel_colorbar(fig: go.Figure, i: int, title: str) -> None:
    """Give panel ``i`` its own colour scale (0 white), with a horizontal colour bar named ``title`` below it."""
    domain = fig.layout["xaxis" if i == 1 else f"xaxis{i}"].domain
    fig.layout[_coloraxis(i, False)] = dict(colorscale="RdBu", cmid=0, colorbar=dict(
        title=dict(text=title, side="top"), orientation="h", x=(domain[0] + domain[1]) / 2, xanchor="center",
        len=domain[1] - domain[0], y=-0.25, yanchor="top", thickness=12))
    fig.update_layout(margin=dict(b=150))


def _coloraxis(i: int, normalize: bool) -> str:
    """The colour axis of panel ``i``: one shared by normalised panels, else one per panel."""
    return "coloraxis" if normalize or i == 1 else f"coloraxis{i}"


def plot_block_scores(scores: Mapping[str, Mapping[str, float]], normalize: bool = True) -> go.Figure:
    """Grouped bars of several per-block scores (e.g. ΔΨ at the end, captum conductance, mean |w|), each divided
    by its largest |value| when ``normalize``.

    Example:
        >>> fig = plot_block_scores({"a": {"blocks.0.attn": 2.0, "blocks.0.mlp": 1.0}})
        >>> list(fig.data[0].y)
        [1.0, 0.5]
    """
    check_bool("normalize", normalize)
    scores = _check_scores(scores)
    fig = go.Figure()
    bad: list[str] = []
    for name, per_block in scores.items():
        names = sort_block_names(per_block)
        values = [float(per_block[b]) for b in names]
        bad += [f"{block_label(b)} ({name}): {v}" for b, v in zip(names, values) if not math.isfinite(v)]
        top = max((abs(v) for v in values if math.isfinite(v)), default=1.0) or 1.0
        y = [None if not math.isfinite(v) else v / top if normalize else v for v in values]
        fig.add_bar(x=[block_label(b) for b in names], y=y, name=name)
    order = [block_label(b) for b in sort_block_names(b for per_block in scores.values() for b in per_block)]
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_layout(template="plotly_white", barmode="group", title="Per-block scores side by side"
                      + (" (each normalised to its maximum)" if normalize else "") + _nonfinite_note(bad, "not drawn"),
                      xaxis_title="block", yaxis_title="score")
    return fig


def _check_scores(scores: object) -> dict[str, dict[str, float]]:
    """``scores`` as name → {block → number} (a mapping or pandas Series per name, a DataFrame for all); anything
    else is a :class:`ConfigError` naming what is wrong."""
    if not hasattr(scores, "items") or not callable(scores.items):
        raise ConfigError(f"scores must map a name to per-block scores ({{'ΔΨ': {{'blocks.0.attn': 0.3, ...}}}}), got "
                          f"{type(scores).__name__}")
    out: dict[str, dict[str, float]] = {}
    for name, per_block in scores.items():
        if not hasattr(per_block, "items") or not callable(per_block.items):
            raise ConfigError(f"scores[{name!r}] must map a block name to a number, got {type(per_block).__name__}")
        values: dict[str, float] = {}
        for block, value in per_block.items():
            values[str(block)] = _number(value, f"scores[{name!r}][{block!r}]")
        out[name] = values
    if not out:
        raise ConfigError("no scores to plot")
    return out


def _number(value: object, what: str) -> float:
    """``value`` as a float (a Python, numpy or 0-d torch number); a string or other object is a ConfigError."""
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"{what} must be a number, got {value!r}")
