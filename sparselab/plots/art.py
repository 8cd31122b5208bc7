"""Figures for ART / HyperSparse runs: the gradient profile and the exploration → exploitation exchange.

Example:
    >>> from sparselab.history import History
    >>> h = History(meta={"run": "hs", "profiles": [{"art_epoch": 0, "relative_index": [0.65, 1.0],
    ...     "abs_w": [0.01, 0.5], "grad": [2.0, 0.01], "sparsity": 0.9, "regularizer": "hypersparse"}]})
    >>> len(plot_gradient_profile(h).data)
    3
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import ConfigError, check_bool
from ..history import History, as_history
from .p3b import select_run
from .style import TEMPLATE


def _run_meta(history: History, run: str | None) -> dict:
    """The meta of one run: of ``run`` in a merged History, else the History's own (where ``run`` must be None or
    its ``meta['run']``, as in :func:`~sparselab.plots.p3b.select_run`)."""
    meta = history.meta
    if "runs" in meta:
        metas = _merged_metas(meta)
        runs = list(metas)
        if run is None:
            if len(runs) != 1:
                raise ConfigError(f"this History merges {len(runs)} runs ({', '.join(runs)}); pass run=")
            run = runs[0]
        if str(run) not in metas:
            raise ConfigError(f"unknown run {run!r}; this History holds: {', '.join(runs) or 'none'}")
        return metas[str(run)]
    own = meta.get("run")
    if run is not None and str(run) != str(own):
        label = f"run {own!r}" if own is not None else "one run without a name"
        raise ConfigError(f"run={run!r} was given, but this History holds {label}; run= selects one run of a "
                          f"History merged with History.concat")
    return meta


def _merged_metas(meta: dict) -> dict[str, dict]:
    """Run name → meta of every run of a merged History's ``meta``; a merged History that was merged again keeps
    the names of its own runs (as its rows do, see :meth:`History.concat`)."""
    out: dict[str, dict] = {}
    for name, sub in meta["runs"].items():
        out.update(_merged_metas(sub) if isinstance(sub, dict) and "runs" in sub else {str(name): sub})
    return out


def _check_epochs(epochs: object) -> list[int]:
    """``epochs`` as a list of ART epochs (whole numbers); anything else is a :class:`ConfigError`."""
    items = list(epochs) if isinstance(epochs, Iterable) and not isinstance(epochs, (str, bytes)) else None
    if items is None or not all(isinstance(e, numbers.Real) and not isinstance(e, bool) and float(e).is_integer()
                                for e in items):
        raise ConfigError(f"epochs must be a list of ART epochs (whole numbers), got {epochs!r}")
    return [int(e) for e in items]


def plot_gradient_profile(history: History, run: str | None = None, epochs: Sequence[int] | None = None,
                          ) -> go.Figure:
    """Sorted |w| (top) and the regularizer's |∂L/∂w| aligned to it (bottom), from the 65th percentile of the
    sorted magnitudes up, at several ART epochs; the dashed line marks the target sparsity κ and the dotted line
    the L1 gradient (constant 1) for reference.

    Example:
        >>> fig = plot_gradient_profile(History(meta={"profiles": [{"art_epoch": 3, "relative_index": [0.7, 0.9],
        ...     "abs_w": [0.1, 0.2], "grad": [1.5, 0.5], "sparsity": 0.8, "regularizer": "l1"}]}))
        >>> fig.data[0].name
        'ART epoch 3'
    """
    history = as_history(history, "plot_gradient_profile")
    profiles = _run_meta(history, run).get("profiles")
    if not profiles:
        raise ConfigError("this History has no gradient profiles: they are recorded by sparselab.ART")
    if epochs is not None:
        wanted = set(_check_epochs(epochs))
        profiles = [p for p in profiles if p["art_epoch"] in wanted]
        if not profiles:
            raise ConfigError(f"no profile at ART epochs {sorted(wanted)}")
    seen, unique = set(), []
    for p in profiles:  # the stopping epoch may be snapshotted twice
        if p["art_epoch"] not in seen:
            seen.add(p["art_epoch"])
            unique.append(p)
    colors = pcolors.sample_colorscale("Viridis", [i / max(len(unique) - 1, 1) for i in range(len(unique))])
    unshown = [f"{what} at ART epoch {p['art_epoch']}: {n}" for p in unique for what, key in (("|w|", "abs_w"),
               ("gradient", "grad")) if (n := _not_on_log_axis(p[key]))]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("sorted weight magnitude |w|", "regularizer gradient |∂L/∂w|"))
    for p, color in zip(unique, colors):
        name = f"ART epoch {p['art_epoch']}"
        fig.add_trace(go.Scatter(x=p["relative_index"], y=p["abs_w"], name=name, legendgroup=name,
                                 line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=p["relative_index"], y=p["grad"], name=name, legendgroup=name, showlegend=False,
                                 line=dict(color=color)), row=2, col=1)
    x = unique[0]["relative_index"]
    fig.add_trace(go.Scatter(x=[x[0], x[-1]], y=[1, 1], name="L1 gradient", mode="lines",
                             line=dict(color="grey", dash="dot")), row=2, col=1)
    kappa = unique[0]["sparsity"]
    fig.add_vline(x=kappa, line=dict(color="black", dash="dash"), annotation_text=f"κ = {kappa:g}")
    fig.update_yaxes(type="log", row=1, col=1, title_text="|w|")
    fig.update_yaxes(type="log", row=2, col=1, title_text="|∂L/∂w|")
    fig.update_xaxes(title_text="relative index in sorted |w|", row=2, col=1)
    reg = unique[0].get("regularizer", "")
    note = ""
    if unshown:
        shown = ", ".join(unshown[:4]) + (f" and {len(unshown) - 4} more" if len(unshown) > 4 else "")
        note = f"<br><sup>values not above 0 or not finite, not drawn on the log axes: {shown}</sup>"
    fig.update_layout(template=TEMPLATE, title=f"Gradient profile of the {reg} regularizer over ART epochs" + note,
                      height=600)
    return fig


def _not_on_log_axis(values: Sequence[float]) -> int:
    """How many of ``values`` a log axis leaves out without a word: zeros (a zero weight, or a gradient that
    underflowed), negatives and NaN or ±inf."""
    return sum(1 for v in values if v is None or not math.isfinite(float(v)) or float(v) <= 0)


def plot_exchange(history: History, runs: Sequence[str] | None = None) -> go.Figure:
    """Exploration → exploitation per ART epoch: the fraction of the kept (top 1−κ) set that entered and that left
    since the previous epoch (left), and the overlap of each epoch's kept set with the final one (right); one
    colour per run (e.g. HyperSparse vs L1 vs L2 of a merged History).

    Example:
        >>> h = History(meta={"run": "hs"})
        >>> for e, (a, b, c) in enumerate([(0.3, 0.3, 0.5), (0.1, 0.1, 0.8), (0.01, 0.01, 1.0)]):
        ...     h.log_metrics({"art_epoch": e, "kept_entered": a, "kept_left": b, "overlap_final": c},
        ...                   step=e, epoch=e)
        >>> len(plot_exchange(h).data)
        3
    """
    history = as_history(history, "plot_exchange")
    metrics = history.metrics
    if runs is not None:
        runs = [runs] if isinstance(runs, str) else [str(r) for r in runs]
        if not runs:
            raise ConfigError("runs must name at least one run (or be None for all of them)")
    if "run" in metrics.columns:
        names = list(dict.fromkeys(metrics.run.astype(str)))
        if runs is not None:
            missing = [r for r in runs if r not in names]
            if missing:
                raise ConfigError(f"unknown runs {missing}; this History holds: {', '.join(names) or 'none'}")
            names = list(dict.fromkeys(runs))
        tables = {r: select_run(history, r)["metrics"] for r in names}
    else:
        own = str(history.meta.get("run", "run"))
        missing = [r for r in runs or [] if r != own]
        if missing:
            raise ConfigError(f"unknown runs {missing}; this History holds one run, {own!r} (runs= selects runs of "
                              f"a History merged with History.concat)")
        tables = {own: metrics}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("kept set: entered / left since the previous epoch",
                                                        "overlap with the final kept set"))
    palette = pcolors.qualitative.Plotly
    found = False
    for i, (name, m) in enumerate(tables.items()):
        wide = m[m.split == "train"].pivot_table(index="step", columns="name", values="value")
        if "art_epoch" not in wide:
            continue
        found = True
        wide = wide.dropna(subset=["art_epoch"]).sort_values("art_epoch")
        color = palette[i % len(palette)]
        x = wide["art_epoch"]
        if "kept_entered" in wide:
            fig.add_trace(go.Scatter(x=x, y=wide["kept_entered"], name=f"{name}: entered", legendgroup=name,
                                     line=dict(color=color)), row=1, col=1)
        if "kept_left" in wide:
            fig.add_trace(go.Scatter(x=x, y=wide["kept_left"], name=f"{name}: left", legendgroup=name,
                                     line=dict(color=color, dash="dot")), row=1, col=1)
        if "overlap_final" in wide:
            fig.add_trace(go.Scatter(x=x, y=wide["overlap_final"], name=f"{name}: overlap", legendgroup=name,
                                     line=dict(color=color, width=3)), row=1, col=2)
    if not found:
        raise ConfigError("this History has no ART traces (art_epoch, kept_entered, ...): run sparselab.ART")
    fig.update_xaxes(title_text="ART epoch")
    fig.update_yaxes(title_text="fraction of the kept set", row=1, col=1)
    fig.update_yaxes(title_text="overlap", range=[0, 1.02], row=1, col=2)
    fig.update_layout(template=TEMPLATE, title="Exploration → exploitation of the kept weights during ART")
    return fig



def plot_art_keep_ratios(history: History, run: str | None = None, log: bool = False) -> go.Figure:
    """Keep ratio of every prunable layer over ART epochs (the ``keep_ratio`` block metric that ART logs at the
    end of each ART epoch: the share of the layer's weights in the current top 1−κ), one line per layer in
    module order. ``log=True`` draws a log axis, which cannot show a ratio of 0 (a layer with no weight in the
    top 1−κ): such values are named in the title.

    Example:
        >>> h = History(meta={"run": "hs"})
        >>> for e, (a, b) in enumerate([(0.3, 0.1), (0.2, 0.05)]):
        ...     h.log_metrics({"art_epoch": e}, step=10 * e, epoch=e)
        ...     h.log_blocks("keep_ratio", {"fc1.weight": a, "fc2.weight": b}, step=10 * e, epoch=e)
        >>> fig = plot_art_keep_ratios(h)
        >>> [t.name for t in fig.data], list(fig.data[0].x)
        (['fc1.weight', 'fc2.weight'], [0, 1])
    """
    history = as_history(history, "plot_art_keep_ratios")
    check_bool("log", log)
    tables = select_run(history, run)
    blocks = tables["blocks"]
    blocks = blocks[blocks["metric"] == "keep_ratio"]
    if blocks.empty:
        raise ConfigError("this History has no per-layer keep ratios (block metric 'keep_ratio'): they are "
                          "recorded by sparselab.ART")
    metrics = tables["metrics"]
    epochs = metrics[metrics["name"] == "art_epoch"].groupby("step")["value"].last()
    x_of = {int(s): int(v) for s, v in epochs.items()}
    x_title = "ART epoch" if x_of else "epoch"
    layers = list(dict.fromkeys(blocks["block"]))  # the order ART logs them in: module order
    colors = pcolors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
    fig = go.Figure()
    unshown: list[str] = []
    for layer, color in zip(layers, colors):
        rows = blocks[blocks["block"] == layer].groupby("step").agg(value=("value", "last"), epoch=("epoch", "last"))
        x = [x_of.get(int(s), int(e)) if x_of else int(e) for s, e in zip(rows.index, rows["epoch"])]
        if log:  # a log axis drops these points without a word
            unshown += [f"{layer} at {x_title} {xi}: {v:g}" for xi, v in zip(x, rows["value"]) if v <= 0]
        fig.add_trace(go.Scatter(x=x, y=rows["value"].tolist(), mode="lines+markers", name=layer,
                                 line=dict(color=color),
                                 hovertemplate=f"{layer}<br>{x_title} %{{x}}<br>keep ratio %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text="keep ratio (kept / all weights)", type="log" if log else "linear")
    note = ""
    if unshown:
        shown = ", ".join(unshown[:4]) + (f" and {len(unshown) - 4} more" if len(unshown) > 4 else "")
        note = f"<br><sup>{len(unshown)} value(s) not above 0, not drawn on the log axis: {shown}</sup>"
    fig.update_layout(template=TEMPLATE, title="Keep ratio per layer over ART epochs" + note)
    return fig
