"""Figures for P3B structured pruning of Vision Transformers (and BlockBenefit probes during fine-tuning).

P3B logs, at every mask update step and for every block ``blocks.{layer}.attn`` / ``blocks.{layer}.mlp``, the
``blocks`` metrics ``benefit_cls``, ``benefit_patch`` (raw block benefit ΔΨ of the class-token and patch
probes), ``score_cls``, ``score_patch``, ``importance``, ``keep_goal`` (κ), ``keep_applied`` (κ̃),
``kept_params`` and ``dense_params``, plus one ``events`` row per gate element whose hard state changed.

Block labels use the module index of the block name: ``blocks.3.attn`` is shown as ``attn 3``. Layer depth on
the x axis of the profile and bar plots counts from 1 (``blocks.0.*`` is depth 1).

Example:
    >>> sort_block_names(["blocks.10.mlp", "blocks.9.attn", "blocks.0.mlp", "blocks.0.attn"])
    ['blocks.0.attn', 'blocks.0.mlp', 'blocks.9.attn', 'blocks.10.mlp']
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import ConfigError, check_bool
from ..history import _KINDS, History, _parse, as_history, select_run, sort_block_names
from .style import TEMPLATE

__all__ = ["plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "sort_block_names", "block_label",
           "select_run"]

_KIND_TITLE = {"attn": "attention blocks", "mlp": "MLP blocks"}
_VARIANT_TITLE = {"cls": "class-token probe", "patch": "patch probe"}
_METRIC_TITLE = {"benefit": "Block benefit ΔΨ", "score": "Block score"}
_METRIC_SYMBOL = {"benefit": "ΔΨ", "score": "score"}
_KEEP_TITLE = {"keep_applied": "keep ratio κ̃", "keep_goal": "goal keep ratio κ"}
_DIVERGING = "RdBu"
_SEQUENTIAL = "Viridis"
_NEEDS_BENEFIT = ("It needs the History of a P3B pruning run or of fine-tuning with BlockBenefit probes, which "
                  "log these per-block metrics.")
_NEEDS_P3B = "It needs the History of a P3B pruning run, which logs these per-block metrics."


# ---------------------------------------------------------------------------------------------------- helpers
def block_label(name: str) -> str:
    """Short axis label of a block: ``blocks.3.attn`` becomes ``attn 3``; other names are kept.

    Example:
        >>> block_label("blocks.3.attn"), block_label("head")
        ('attn 3', 'head')
    """
    p = _parse(name)
    return f"{p[1]} {p[0]}" if p else name


def _require(blocks: pd.DataFrame, metrics: Sequence[str], caller: str, needs: str) -> None:
    present = sorted(blocks["metric"].unique().tolist())
    missing = [m for m in metrics if m not in present]
    if missing:
        raise ConfigError(f"{caller} needs the block metric(s) {', '.join(map(repr, missing))} in "
                          f"History.blocks, which are missing; block metrics present: "
                          f"{', '.join(present) if present else 'none'}. {needs}")


def _pivot(blocks: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Values of ``metric`` as a blocks × steps frame (depth-ordered rows, ascending steps; the last value logged
    wins, a NaN included, and a step whose values are all NaN keeps its column)."""
    df = blocks[blocks["metric"] == metric].drop_duplicates(["block", "step"], keep="last")
    wide = df.pivot(index="block", columns="step", values="value").astype(float)
    return wide.reindex(index=sort_block_names(wide.index), columns=sorted(wide.columns))


def _nonfinite(blocks: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Each logged value of ``metrics`` that is NaN or ±inf, as ``"attn 3 at step 40: nan"`` (the last value of a
    block and step counts, as in :func:`_pivot`)."""
    df = blocks[blocks["metric"].isin(metrics)].drop_duplicates(["metric", "block", "step"], keep="last")
    bad = df[~np.isfinite(df["value"].to_numpy(dtype=float))]
    bad = bad.assign(order=bad["block"].map({b: i for i, b in enumerate(sort_block_names(bad["block"]))}))
    return [f"{block_label(b)} at step {int(st)}{'' if len(metrics) == 1 else f' ({m})'}: {v}"
            for b, st, m, v in bad.sort_values(["step", "order"])[["block", "step", "metric", "value"]]
            .itertuples(index=False)]


def _nonfinite_note(items: list[str], what: str = "left blank") -> str:
    """A title line naming the values that are not finite (empty when all are)."""
    if not items:
        return ""
    shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
    return f"<br><sup>{len(items)} value(s) not finite, {what}: {shown}</sup>"


def _epochs(blocks: pd.DataFrame, metrics: Sequence[str]) -> dict[int, int]:
    df = blocks[blocks["metric"].isin(metrics)]
    return {int(s): int(e) for s, e in df.groupby("step")["epoch"].first().items()}


def _default_moments(steps: Sequence[int], count: int = 5) -> list[int]:
    if len(steps) <= count:
        return list(steps)
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, count)).astype(int))
    return [steps[i] for i in idx]


def _match_moments(moments: Sequence[int], steps: Sequence[int]) -> list[int]:
    """Each requested step replaced by the nearest recorded step (the earlier one on a tie), ascending, unique."""
    arr = np.asarray(steps)
    matched = {int(arr[int(np.argmin(np.abs(arr - float(m))))]) for m in moments}
    return sorted(matched)


def _colors(n: int, scale: str = _SEQUENTIAL) -> list[str]:
    if n <= 1:
        return pcolors.sample_colorscale(scale, [0.0])
    return pcolors.sample_colorscale(scale, [i / (n - 1) for i in range(n)])


def _variants(variant: str) -> list[str]:
    if variant == "both":
        return ["cls", "patch"]
    if variant in _VARIANT_TITLE:
        return [variant]
    raise ConfigError(f"variant must be 'both', 'cls' or 'patch', got {variant!r}")


def _colorbar_x(fig: go.Figure, axis: str) -> float:
    return float(fig.layout[axis].domain[1]) + 0.01


# ---------------------------------------------------------------------------------------------- block benefit
def plot_block_benefit(history: History, view: Literal["heatmap", "profile"] = "heatmap",
                       variant: Literal["both", "cls", "patch"] = "both", moments: Sequence[int] | None = None,
                       normalize: bool | None = None, run: str | None = None, metric: str = "benefit") -> go.Figure:
    """Block benefit ΔΨ (``{metric}_cls`` / ``{metric}_patch`` of ``History.blocks``) of every ViT block.

    ``view="heatmap"``: blocks (depth order, attention and MLP interleaved) × step, one heatmap per probe, on a
    diverging colour scale centred at 0: blue where the block lowers the probe loss (ΔΨ > 0), red where it raises
    it (the block hurts the probe). ``normalize=True``
    divides each step's column by its largest |value|.

    ``view="profile"``: rows class-token / patch probe, columns attention / MLP blocks; x is layer depth (1..L) and
    there is one line per moment. ``moments`` lists steps (each matched to the nearest recorded step); by default
    up to 5 recorded steps spread from the first to the last. ``normalize`` (default True here) divides each curve
    by its largest |value|, so curves of different moments share one scale.

    ``variant="both"`` plots the probes the run logged (only the class-token one for ``patch_probe=None``).
    ``metric="score"`` plots the transformed scores ``score_cls`` / ``score_patch`` instead; ``run`` picks one run
    of a History merged with :meth:`History.concat`; ``history`` may also be the path of a saved History.

    Example:
        >>> h = History()
        >>> for step, late in [(0, 0.0), (10, 0.4)]:
        ...     h.log_blocks("benefit_cls", {"blocks.0.attn": 0.2, "blocks.0.mlp": 0.3,
        ...                                  "blocks.1.attn": -0.1, "blocks.1.mlp": late}, step=step, epoch=0)
        >>> fig = plot_block_benefit(h, view="profile", variant="cls")
        >>> [t.name for t in fig.data]
        ['step 0 (epoch 0)', 'step 10 (epoch 0)', 'step 0 (epoch 0)', 'step 10 (epoch 0)']
        >>> plot_block_benefit(h, variant="cls").data[0].z.shape
        (4, 2)
    """
    history = as_history(history, "plot_block_benefit")
    check_bool("normalize", normalize, optional=True)
    variants = _variants(variant)
    tables = select_run(history, run)
    blocks = tables["blocks"]
    if variant == "both":  # a run with one kind of probe only (patch_probe=None: class-token probes) plots that one
        logged = [v for v in variants if f"{metric}_{v}" in set(blocks.metric)]
        variants = logged or variants
    names = [f"{metric}_{v}" for v in variants]
    _require(blocks, names, "plot_block_benefit", _NEEDS_BENEFIT)
    title = _METRIC_TITLE.get(metric, f"Block {metric}")
    symbol = _METRIC_SYMBOL.get(metric, metric)
    if view == "heatmap":
        if moments is not None:  # the heatmap shows every recorded step
            raise ConfigError("moments picks the steps of view='profile'; the heatmap shows every recorded step (pass "
                              "view='profile', or leave moments out)")
        return _benefit_heatmap(blocks, variants, names, bool(normalize), title, symbol)
    if view == "profile":
        return _benefit_profile(blocks, variants, names, moments, True if normalize is None else bool(normalize),
                                title, symbol)
    raise ConfigError(f"view must be 'heatmap' or 'profile', got {view!r}")


def _benefit_heatmap(blocks: pd.DataFrame, variants: list[str], names: list[str], normalize: bool, title: str,
                     symbol: str) -> go.Figure:
    wides = [_pivot(blocks, n) for n in names]
    order = sort_block_names(b for w in wides for b in w.index)
    steps = sorted({int(s) for w in wides for s in w.columns})
    labels = [block_label(b) for b in order]
    fig = make_subplots(rows=1, cols=len(variants), shared_yaxes=True, horizontal_spacing=0.12,
                        subplot_titles=[f"{title} ({_VARIANT_TITLE[v]})" for v in variants])
    zlabel = f"{symbol} / max|{symbol}| of the step" if normalize else symbol
    for i, (v, wide) in enumerate(zip(variants, wides), start=1):
        z = wide.reindex(index=order, columns=steps).to_numpy(dtype=float, copy=True)
        z[~np.isfinite(z)] = np.nan  # NaN and ±inf are left blank and named in the title, never drawn as a colour
        cells = np.array(order, dtype=object)[:, None].repeat(len(steps), axis=1)
        customdata, hover = cells, "%{customdata}<br>step %{x}<br>" + symbol + " %{z:.4g}<extra></extra>"
        if normalize:  # by the largest finite |value| of the step; the hover keeps the logged value
            customdata = np.stack([cells, z.astype(object)], axis=-1)
            hover = ("%{customdata[0]}<br>step %{x}<br>" + symbol + " %{customdata[1]:.4g}<br>normalised %{z:.3f}"
                     "<extra></extra>")
            scale = np.nanmax(np.abs(z), axis=0, initial=0.0) if z.size else np.zeros(len(steps))
            z = np.divide(z, scale, out=np.zeros_like(z), where=scale > 0) + np.where(np.isnan(z), np.nan, 0.0)
        coloraxis = "coloraxis" if i == 1 else f"coloraxis{i}"
        fig.add_trace(go.Heatmap(z=z, x=steps, y=labels, coloraxis=coloraxis, name=_VARIANT_TITLE[v],
                                 customdata=customdata, hovertemplate=hover), row=1, col=i)
        axis = "xaxis" if i == 1 else f"xaxis{i}"
        fig.layout[coloraxis] = dict(colorscale=_DIVERGING, cmid=0.0,
                                     colorbar=dict(title=zlabel, x=_colorbar_x(fig, axis), len=0.9, thickness=14))
        fig.update_xaxes(title_text="step", row=1, col=i)
    fig.update_yaxes(title_text="block (depth order)", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    probes = " and ".join(_VARIANT_TITLE[v] for v in variants)
    norm = ", each step normalised by its max |value|" if normalize else ""
    fig.update_layout(template=TEMPLATE, title=f"{title} per block over training ({probes}{norm})"
                      + _nonfinite_note(_nonfinite(blocks, names)),
                      height=max(350, 18 * len(order) + 150))
    return fig


def _benefit_profile(blocks: pd.DataFrame, variants: list[str], names: list[str], moments: Sequence[int] | None,
                     normalize: bool, title: str, symbol: str) -> go.Figure:
    wides = [_pivot(blocks, n) for n in names]
    steps = sorted({int(s) for w in wides for s in w.columns})
    if not any(_parse(b) for w in wides for b in w.index):
        raise ConfigError(f"the profile view needs blocks named 'blocks.{{layer}}.attn' / 'blocks.{{layer}}.mlp'; "
                          f"found {sort_block_names(b for w in wides for b in w.index)}")
    if moments is None:
        chosen = _default_moments(steps)
    else:
        if isinstance(moments, (str, bytes)) or not hasattr(moments, "__iter__") or not all(
                isinstance(m, (int, float, np.integer, np.floating)) and not isinstance(m, bool)
                and math.isfinite(float(m)) for m in moments):
            raise ConfigError(f"moments must be a list of steps (numbers), got {moments!r}")
        moments = list(moments)
        if len(moments) == 0:
            raise ConfigError("moments must list at least one step (or be None for the default)")
        chosen = _match_moments(moments, steps)
    epochs = _epochs(blocks, names)
    colors = _colors(len(chosen))
    titles = [f"{_VARIANT_TITLE[v]}, {_KIND_TITLE[k]}" for v in variants for k in _KINDS]
    fig = make_subplots(rows=len(variants), cols=2, shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=0.12, horizontal_spacing=0.08)
    depth = 0
    for r, wide in enumerate(wides, start=1):
        parsed = {b: _parse(b) for b in wide.index}
        depth = max([depth] + [p[0] + 1 for p in parsed.values() if p])
        for c, kind in enumerate(_KINDS, start=1):
            rows = sorted(((p[0], b) for b, p in parsed.items() if p and p[1] == kind))
            for m, (step, color) in enumerate(zip(chosen, colors)):
                if step in wide.columns:
                    col = wide[step]
                    pts = [(layer + 1, b, float(col[b])) for layer, b in rows if math.isfinite(col[b])]
                else:
                    pts = []
                x = [p[0] for p in pts]
                raw = np.array([p[2] for p in pts], dtype=float)
                y = raw
                if normalize and raw.size:
                    peak = float(np.max(np.abs(raw)))
                    y = raw / peak if peak > 0 else raw
                fig.add_trace(go.Scatter(
                    x=x, y=y, mode="lines+markers", name=f"step {step} (epoch {epochs.get(step, 0)})",
                    legendgroup=f"step {step}", showlegend=(r == 1 and c == 1), line=dict(color=color),
                    marker=dict(size=6), customdata=[[p[1], p[2]] for p in pts],
                    hovertemplate=("%{customdata[0]}<br>depth %{x}<br>" + symbol + " %{customdata[1]:.4g}"
                                   + ("<br>normalised %{y:.3f}" if normalize else "") + "<extra>step "
                                   + str(step) + "</extra>")),
                    row=r, col=c)
    ylabel = f"normalised {symbol} ({symbol} / max|{symbol}|)" if normalize else symbol
    fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"), row="all", col="all")
    fig.update_yaxes(title_text=ylabel, col=1)
    fig.update_xaxes(title_text="layer depth (1..L)", row=len(variants))
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=1 if depth <= 16 else 2, range=[0.5, depth + 0.5])
    norm = " (each curve normalised by its max |value|)" if normalize else ""
    fig.update_layout(template=TEMPLATE, title=f"{title} per layer at selected steps{norm}"
                      + _nonfinite_note(_nonfinite(blocks[blocks["step"].isin(chosen)], names), "not drawn"),
                      legend_title_text="moment", height=320 * len(variants) + 120)
    return fig


# ------------------------------------------------------------------------------------------------ keep ratios
def plot_keep_ratios(history: History, metric: str = "keep_applied", run: str | None = None) -> go.Figure:
    """Keep ratio of every ViT block: over the mask update steps (left) and its final value (right).

    Left: one line per block, coloured by depth (sequential colour scale), attention solid and MLP dashed.
    Right: the ratio at each block's last logged step as bars, attention and MLP side by side per layer; when
    ``keep_goal`` (κ) is logged and ``metric`` is not itself ``keep_goal``, the final goal is drawn as markers.
    Blocks not named ``blocks.{layer}.attn`` / ``blocks.{layer}.mlp`` have no layer depth: both panels show them,
    the right one as grey bars after the last layer, each labelled with its name.
    ``metric`` is ``keep_applied`` (κ̃, the ramped ratio that was applied) or ``keep_goal``.

    Example:
        >>> h = History()
        >>> for step, k in [(10, 0.9), (20, 0.7)]:
        ...     h.log_blocks("keep_applied", {"blocks.0.attn": k, "blocks.0.mlp": 1.0}, step=step, epoch=0)
        ...     h.log_blocks("keep_goal", {"blocks.0.attn": 0.6, "blocks.0.mlp": 1.0}, step=step, epoch=0)
        >>> fig = plot_keep_ratios(h)
        >>> [t.name for t in fig.data]
        ['attn 0', 'mlp 0', 'attn (final κ̃)', 'mlp (final κ̃)', 'goal κ']
        >>> [list(t.y) for t in fig.data if t.type == "bar"]
        [[0.7], [1.0]]
    """
    history = as_history(history, "plot_keep_ratios")
    if metric not in _KEEP_TITLE:  # the axes and titles are those of a keep ratio in [0, 1]
        raise ConfigError(f"metric must be 'keep_applied' or 'keep_goal' (a keep ratio), got {metric!r}; "
                          f"plot_block_criteria(history, metrics=[...]) shows other block metrics")
    blocks = select_run(history, run)["blocks"]
    _require(blocks, [metric], "plot_keep_ratios", _NEEDS_P3B)
    wide = _pivot(blocks, metric)
    label = _KEEP_TITLE.get(metric, metric)
    symbol = {"keep_applied": "κ̃", "keep_goal": "κ"}.get(metric, metric)
    order = list(wide.index)
    colors = _colors(len(order))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.1,
                        subplot_titles=[f"{label} per block over training", f"final {label} per block"])
    for block, color in zip(order, colors):
        series = wide.loc[block]
        series = series[np.isfinite(series)]
        p = _parse(block)
        fig.add_trace(go.Scatter(
            x=series.index.astype(int).tolist(), y=series.to_numpy(dtype=float), mode="lines",
            name=block_label(block),
            line=dict(color=color, dash="dash" if p and p[1] == "mlp" else "solid"),
            hovertemplate=block + "<br>step %{x}<br>" + symbol + " %{y:.3f}<extra></extra>"), row=1, col=1)

    final = {b: wide.loc[b][np.isfinite(wide.loc[b])] for b in order}
    final = {b: s for b, s in final.items() if len(s)}
    depth = max([_parse(b)[0] + 1 for b in final if _parse(b)] + [0])
    others = [b for b in final if not _parse(b)]
    goal = _pivot(blocks, "keep_goal") if metric != "keep_goal" and (blocks["metric"] == "keep_goal").any() \
        else None
    kept = _pivot(blocks, "kept_params") if (blocks["metric"] == "kept_params").any() else None
    dense = _pivot(blocks, "dense_params") if (blocks["metric"] == "dense_params").any() else None
    offsets = {"attn": -0.2, "mlp": 0.2}
    goal_x, goal_y, goal_text = [], [], []
    for kind in (*_KINDS, "other"):
        members = others if kind == "other" else [b for b in final if _parse(b) and _parse(b)[1] == kind]
        if not members:
            continue
        x = ([depth + 1 + i for i in range(len(others))] if kind == "other"
             else [_parse(b)[0] + 1 + offsets[kind] for b in members])
        y = [float(final[b].iloc[-1]) for b in members]
        info = []
        for b in members:
            last = int(final[b].index[-1])
            text = f"{b}<br>step {last}"
            if kept is not None and b in kept.index and last in kept.columns and not math.isnan(kept.at[b, last]):
                text += f"<br>kept {kept.at[b, last]:,.0f} params"
                if dense is not None and b in dense.index and last in dense.columns:
                    text += f" of {dense.at[b, last]:,.0f}"
            info.append(text)
        fig.add_trace(go.Bar(x=x, y=y, width=0.38, name=f"{kind} (final {symbol})",
                             marker=dict(color={"attn": "#4c78a8", "mlp": "#f58518"}.get(kind, "#8c8c8c")),
                             customdata=info, hovertemplate="%{customdata}<br>" + symbol
                             + " %{y:.3f}<extra></extra>"), row=1, col=2)
        if goal is not None:
            for b, xb in zip(members, x):
                if b in goal.index:
                    g = goal.loc[b][np.isfinite(goal.loc[b])]
                    if len(g):
                        goal_x.append(xb)
                        goal_y.append(float(g.iloc[-1]))
                        goal_text.append(f"{b}<br>step {int(g.index[-1])}")
    goal_nonfinite = [f"goal κ of {item}" for item in _nonfinite(blocks, ["keep_goal"])] if goal is not None else []
    if goal_x:
        fig.add_trace(go.Scatter(x=goal_x, y=goal_y, mode="markers", name="goal κ",
                                 marker=dict(symbol="line-ew-open", size=16, color="black", line=dict(width=2.5)),
                                 customdata=goal_text,
                                 hovertemplate="%{customdata}<br>goal κ %{y:.3f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="mask update step", row=1, col=1)
    if others:  # layer ticks, then one tick per other block, labelled with its name
        layers = list(range(1, depth + 1, 1 if depth <= 16 else 2))
        fig.update_xaxes(title_text="layer depth (1..L); attn left, mlp right; then other blocks" if depth
                         else "other blocks",
                         tickmode="array", tickvals=layers + [depth + 1 + i for i in range(len(others))],
                         ticktext=[str(v) for v in layers] + [block_label(b) for b in others],
                         range=[0.4, depth + len(others) + 0.6], row=1, col=2)
    else:
        depth = max(depth, 1)
        fig.update_xaxes(title_text="layer depth (1..L); attn left, mlp right", tickmode="linear", tick0=1,
                         dtick=1 if depth <= 16 else 2, range=[0.4, depth + 0.6], row=1, col=2)
    fig.update_yaxes(title_text=label, range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text=f"final {label}", range=[0, 1.05], row=1, col=2)
    fig.update_layout(template=TEMPLATE, barmode="overlay",
                      title=f"Keep ratio {symbol} of each block (colour: depth; attn solid, mlp dashed)"
                      + _nonfinite_note(_nonfinite(blocks, [metric]) + goal_nonfinite, "not drawn"))
    return fig


# ------------------------------------------------------------------------------------------------ reactivations
def plot_reactivations(history: History, run: str | None = None) -> go.Figure:
    """Mask changes of every block: reactivations (0→1 flips of gate elements) per block and mask update step as a
    heatmap (left), and per block the total reactivations next to the total prunings (1→0) as grouped bars
    (right). Steps are those with events or with a logged ``keep_applied``; hovering a cell lists flips per gate.

    A History without events gives a figure that says so instead of an error.

    Example:
        >>> h = History()
        >>> h.log_events(step=10, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[1, 2, 3], old=1, new=0)
        >>> h.log_events(step=20, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[2], old=0, new=1)
        >>> fig = plot_reactivations(h)
        >>> fig.data[0].z.tolist(), [t.y.tolist() for t in fig.data[1:]]
        ([[0.0, 1.0]], [[1], [3]])
    """
    history = as_history(history, "plot_reactivations")
    tables = select_run(history, run)
    events, blocks = tables["events"], tables["blocks"]
    title = "Mask reactivations (0→1 flips) per block and mask update step"
    if events.empty:
        fig = go.Figure()
        fig.add_annotation(text="No mask changes recorded: this History has no events (no gate element changed "
                                "its hard state).", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                           font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(template=TEMPLATE, title=title)
        return fig
    known = blocks.loc[blocks["metric"] == "keep_applied", "block"].tolist()
    order = sort_block_names(list(events["block"]) + [b for b in known if _parse(b)])
    steps = sorted(set(events["step"].astype(int)) | set(blocks.loc[blocks["metric"] == "keep_applied", "step"]
                                                         .astype(int)))
    labels = [block_label(b) for b in order]
    react = events[(events["old"] == 0) & (events["new"] == 1)]
    counts = react.groupby(["block", "step"]).size().unstack(fill_value=0)
    z = counts.reindex(index=order, columns=steps, fill_value=0).to_numpy(dtype=float)
    per_gate = react.groupby(["block", "step", "gate"]).size()
    hover = np.full(z.shape, "none", dtype=object)
    pos_b = {b: i for i, b in enumerate(order)}
    pos_s = {s: j for j, s in enumerate(steps)}
    for (b, s), group in per_gate.groupby(level=[0, 1]):
        hover[pos_b[b], pos_s[int(s)]] = ", ".join(f"{g}: {n}" for (_, _, g), n in group.items())

    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.16,
                        subplot_titles=["reactivations (0→1) per mask update step",
                                        "total reactivations vs prunings per block"])
    fig.add_trace(go.Heatmap(z=z, x=steps, y=labels, colorscale="Blues", zmin=0,
                             zmax=max(float(z.max()), 1.0), name="reactivations", customdata=hover,
                             colorbar=dict(title="0→1 flips", x=_colorbar_x(fig, "xaxis"), len=0.9,
                                           thickness=14),
                             hovertemplate="block %{y}<br>step %{x}<br>%{z:.0f} reactivations<br>"
                                           "%{customdata}<extra></extra>"), row=1, col=1)
    from ..probes.flips import flip_counts

    totals = flip_counts(events).reindex(order, fill_value=0)
    n_react, n_pruned = totals["reactivated"], totals["pruned"]
    fig.add_trace(go.Bar(x=labels, y=n_react.to_numpy(dtype=int), name="reactivations (0→1)",
                         marker_color="#54a24b", hovertemplate="%{x}: %{y} reactivations<extra></extra>"),
                  row=1, col=2)
    fig.add_trace(go.Bar(x=labels, y=n_pruned.to_numpy(dtype=int), name="prunings (1→0)", marker_color="#e45756",
                         hovertemplate="%{x}: %{y} prunings<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="mask update step", row=1, col=1)
    fig.update_yaxes(title_text="block (depth order)", autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="block (depth order)", categoryorder="array", categoryarray=labels, row=1, col=2)
    fig.update_yaxes(title_text="gate elements flipped", row=1, col=2)
    fig.update_layout(template=TEMPLATE, barmode="group", title=title, height=max(380, 18 * len(order) + 150))
    return fig
