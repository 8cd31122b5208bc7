"""Figures of where the kept (high-magnitude) weights of a sparse network sit.

:func:`plot_layer_keep_ratios` shows the keep ratio of every prunable layer (optionally several methods side by
side); :func:`plot_weight_patterns` shows the structure inside layers, with panels chosen by the model type (CNN,
fully connected network, timm ViT). The numbers come from :mod:`sparselab.patterns`; masks are given as there:
``masks`` (True = kept), ``sparsity`` (global magnitude masks) or neither (the nonzero pattern of the weights).

Example:
    >>> import sparselab as sl
    >>> net = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
    >>> fig = plot_weight_patterns(net, sparsity=0.9)
    >>> [t.type for t in fig.data]
    ['heatmap', 'bar', 'bar']
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import nn

from ..errors import ConfigError, check_bool
from ..patterns import (
    dead_units,
    image_layer,
    input_pixel_map,
    kernel_positions,
    layer_keep_ratios,
    vit_blocks,
    vit_magnitude_maps,
)
from .style import TEMPLATE

__all__ = ["plot_layer_keep_ratios", "plot_weight_patterns"]

_SEQUENTIAL = "Viridis"
_PARTS = ("q", "k", "v", "proj")
_DEAD_COLORS = ("#e45756", "#4c78a8")


def _label(layer: str) -> str:
    return layer[:-len(".weight")] if layer.endswith(".weight") else layer


# ------------------------------------------------------------------------------------------------ keep ratios
def _check_table(table: object, name: str) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise ConfigError(f"{name} must be a table from sparselab.patterns.layer_keep_ratios (a DataFrame), got "
                          f"{type(table).__name__}")
    missing = [c for c in ("layer", "keep_ratio") if c not in table.columns]
    if missing:
        raise ConfigError(f"{name} lacks the column(s) {', '.join(missing)}; pass a table from "
                          f"sparselab.patterns.layer_keep_ratios (columns: {', '.join(map(str, table.columns))})")
    if table["layer"].duplicated().any():
        raise ConfigError(f"{name} lists a layer more than once: "
                          f"{', '.join(table.loc[table['layer'].duplicated(), 'layer'].astype(str)[:5])}")
    ratios = pd.to_numeric(table["keep_ratio"], errors="coerce")
    bad = (ratios.isna() & table["keep_ratio"].notna()) | (ratios.notna() & ~ratios.between(0, 1))
    if bad.any():
        rows = [f"{layer}: {value!r}" for layer, value in zip(table.loc[bad, "layer"], table.loc[bad, "keep_ratio"])]
        raise ConfigError(f"{name} holds keep ratios outside [0, 1] (a ratio is kept / all weights; leave a layer "
                          f"out or NaN to show no bar): {', '.join(rows[:5])}")
    return table


def _overall(table: pd.DataFrame) -> float | None:
    """Kept / all weights over the layers whose ``kept`` and ``numel`` are both known (a layer without a count is
    left out of both sums, not counted as pruned); None without those columns or counts."""
    if not {"kept", "numel"} <= set(table.columns):
        return None
    kept = pd.to_numeric(table["kept"], errors="coerce")
    numel = pd.to_numeric(table["numel"], errors="coerce")
    known = kept.notna() & numel.notna()
    if numel[known].sum() > 0:
        return float(kept[known].sum() / numel[known].sum())
    return None


def _count(value: object) -> str:
    """A weight count for a hover: ``1,234``, or ``?`` where the table has none (NaN)."""
    return "?" if pd.isna(value) else f"{int(value):,}"


def plot_layer_keep_ratios(model_or_table: nn.Module | pd.DataFrame | None = None, masks: Mapping | None = None,
                           sparsity: float | None = None, compare: Mapping[str, pd.DataFrame] | None = None,
                           log: bool = False, label: str | None = None) -> go.Figure:
    """Keep ratio (kept / all weights) of every prunable layer as bars, layers in module order.

    ``model_or_table`` is a model (its masks from ``masks``/``sparsity`` or its nonzero weights, see
    :func:`sparselab.patterns.kept_masks`) or a table from :func:`sparselab.patterns.layer_keep_ratios`.
    ``compare={"HS": table, "L1": table2}`` adds one bar series per method, side by side per layer (layers missing
    from a table leave a gap); ``model_or_table`` may then be left out, otherwise it is the first series, named
    ``label`` (default ``"keep ratio"``). Each legend entry gives the method's overall keep ratio when its table has
    ``kept`` and ``numel``. ``log=True`` draws the ratios on a log scale (a ratio of 0 is then not drawn;
    the title names those layers).

    Example:
        >>> import torch
        >>> from sparselab.patterns import layer_keep_ratios
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> fig = plot_layer_keep_ratios(compare={"global": layer_keep_ratios(net, sparsity=0.5),
        ...                                       "dense": layer_keep_ratios(net, sparsity=0.0)})
        >>> [t.name for t in fig.data], list(fig.data[1].y)
        (['global (overall 0.5)', 'dense (overall 1)'], [1.0, 1.0])
    """
    check_bool("log", log)
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"label must be a string (the name of the first series) or None, got {label!r}")
    series: list[tuple[str, pd.DataFrame]] = []
    if isinstance(model_or_table, nn.Module):
        series.append((label or "keep ratio", layer_keep_ratios(model_or_table, masks, sparsity)))
    elif model_or_table is not None:
        if masks is not None or sparsity is not None:
            raise ConfigError("masks and sparsity apply to a model; a keep-ratio table already holds its ratios")
        series.append((label or "keep ratio", _check_table(model_or_table, "model_or_table")))
    elif masks is not None or sparsity is not None:
        raise ConfigError("masks/sparsity were given without a model to apply them to")
    if compare is not None:
        if not isinstance(compare, Mapping) or not compare:
            raise ConfigError("compare must be a non-empty dict of method name → layer_keep_ratios table")
        for name, table in compare.items():
            series.append((str(name), _check_table(table, f"compare[{name!r}]")))
    if not series:
        raise ConfigError("plot_layer_keep_ratios needs a model, a layer_keep_ratios table or compare={...}")
    names = [n for n, _ in series]
    if len(set(names)) != len(names):
        raise ConfigError(f"series names must differ, got {names}; pass label= for the first one")

    layers = _merged_order([t["layer"].astype(str).tolist() for _, t in series])
    labels = [_label(layer) for layer in layers]
    fig = go.Figure()
    unshown: list[str] = []
    for name, table in series:
        t = table.assign(layer=table["layer"].astype(str)).set_index("layer").reindex(layers)
        y = [None if pd.isna(v) else float(v) for v in t["keep_ratio"]]
        if log:  # a log axis drops a ratio of 0 without a word, the bar of a layer pruned away
            unshown += [_label(layer) + (f" ({name})" if len(series) > 1 else "")
                        for layer, v in zip(layers, y) if v is not None and v <= 0]
        info = []
        for layer in layers:
            text = layer
            if layer in table["layer"].astype(str).values:
                row = t.loc[layer]
                if "shape" in t.columns and isinstance(row["shape"], (tuple, list)):
                    text += f"<br>shape {'×'.join(map(str, row['shape']))}"
                if "kept" in t.columns and "numel" in t.columns:
                    text += f"<br>kept {_count(row['kept'])} of {_count(row['numel'])}"
            else:
                text += "<br>(not in this table)"
            info.append(text)
        overall = _overall(table)
        legend = f"{name} (overall {overall:.3g})" if overall is not None else name
        fig.add_trace(go.Bar(x=labels, y=y, name=legend, customdata=info,
                             hovertemplate=name + "<br>%{customdata}<br>keep ratio %{y:.4g}<extra></extra>"))
    what = " vs ".join(names) if len(series) > 1 else names[0]
    fig.update_xaxes(title_text="layer (module order)", categoryorder="array", categoryarray=labels,
                     tickangle=-45 if len(labels) > 8 else 0)
    if log:
        fig.update_yaxes(title_text="keep ratio (kept / all weights, log scale)", type="log")
    else:
        fig.update_yaxes(title_text="keep ratio (kept / all weights)", range=[0, 1.05])
    title = "Keep ratio of each prunable layer" + (f": {what}" if len(series) > 1 else "")
    if unshown:
        shown = ", ".join(unshown[:4]) + (f" and {len(unshown) - 4} more" if len(unshown) > 4 else "")
        title += f"<br><sup>{len(unshown)} keep ratio(s) of 0, not drawn on the log axis: {shown}</sup>"
    fig.update_layout(template=TEMPLATE, barmode="group", showlegend=True, legend_title_text="method",
                      title=title)
    return fig


def _merged_order(orders: list[list[str]]) -> list[str]:
    """One layer order holding every layer of ``orders`` (each in module order): a layer that an earlier order
    lacks is placed after its predecessor in the order that holds it, not appended at the end."""
    merged: list[str] = []
    for order in orders:
        previous: str | None = None
        for layer in order:
            if layer not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, layer)
            previous = layer
    return merged


# ------------------------------------------------------------------------------------------- weight patterns
def plot_weight_patterns(model: nn.Module, masks: Mapping | None = None, sparsity: float | None = None,
                         image_shape: tuple[int, int, int] | None = None) -> go.Figure:
    """Where the kept weights sit inside the layers, with panels chosen by the model type.

    * timm ViT: heatmaps block × head of the q, k, v and proj weights of each head (one shared colour scale), and
      below them a block × neuron heatmap of the MLP hidden neurons, sorted within each block from the largest to
      the smallest value (hover shows the neuron index). Values are mean |w| per head slice and the fc1-row +
      fc2-column L1 norm per neuron, or kept fractions when ``masks``/``sparsity`` are given
      (:func:`sparselab.patterns.vit_magnitude_maps`).
    * CNN (any 3×3 convolution): heatmap conv layer × kernel position of the kept fraction at each of the 9
      positions (:func:`sparselab.patterns.kernel_positions`), next to bars of the fraction of dead filters /
      neurons (all weights pruned) and of inputs that no kept weight reads, per prunable layer
      (:func:`sparselab.patterns.dead_units`).
    * fully connected network whose first layer reads the flattened image (LeNet-300-100): heatmap H × W of the
      fraction of the first layer's weights kept at each input pixel (over channels and neurons,
      :func:`sparselab.patterns.input_pixel_map`; ``image_shape`` defaults to a square image), next to the dead
      neuron / dead input bars per layer.

    Masks as in :func:`sparselab.patterns.kept_masks`; without ``masks``/``sparsity`` the CNN and MLP panels use
    the nonzero weights.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3))
        >>> fig = plot_weight_patterns(net, sparsity=0.5)
        >>> fig.data[0].z.shape, [t.type for t in fig.data]
        ((2, 9), ['heatmap', 'bar', 'bar'])
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"plot_weight_patterns needs a model (nn.Module), got {type(model).__name__}")
    if vit_blocks(model):
        if image_shape is not None:
            raise ConfigError("image_shape applies to a fully connected network reading the flattened image, not "
                              "to a ViT")
        return _vit_patterns(model, masks, sparsity)
    positions = kernel_positions(model, masks, sparsity)
    if not positions.empty:
        if image_shape is not None:
            raise ConfigError("image_shape applies to a fully connected network reading the flattened image, not "
                              "to a CNN")
        return _cnn_patterns(model, positions, dead_units(model, masks, sparsity))
    if image_layer(model, None) is not None:
        return _mlp_patterns(model, masks, sparsity, image_shape)
    raise ConfigError(f"plot_weight_patterns supports timm ViTs, CNNs with 3×3 convolutions and fully connected "
                      f"networks reading the flattened image; {type(model).__name__} is none of these (use "
                      f"plot_layer_keep_ratios for its per-layer keep ratios)")


def _dead_bars(fig: go.Figure, dead: pd.DataFrame, row: int, col: int, units: str) -> None:
    labels = [_label(layer) for layer in dead["layer"]]
    fig.add_trace(go.Bar(y=labels, x=dead["dead_fraction"].to_numpy(dtype=float), orientation="h",
                         name=f"dead {units} (all weights pruned)", marker_color=_DEAD_COLORS[0],
                         customdata=np.stack([dead["dead"], dead["units"]], axis=1),
                         hovertemplate="%{y}<br>%{customdata[0]} of %{customdata[1]} " + units
                                       + " dead (%{x:.3f})<extra></extra>"), row=row, col=col)
    fig.add_trace(go.Bar(y=labels, x=dead["dead_input_fraction"].to_numpy(dtype=float), orientation="h",
                         name="inputs no kept weight reads", marker_color=_DEAD_COLORS[1],
                         customdata=np.stack([dead["dead_inputs"], dead["inputs"]], axis=1),
                         hovertemplate="%{y}<br>%{customdata[0]} of %{customdata[1]} inputs unread "
                                       "(%{x:.3f})<extra></extra>"), row=row, col=col)
    fig.update_xaxes(title_text="fraction of the layer's units", range=[0, 1.02], row=row, col=col)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=labels, row=row, col=col)


def _cnn_patterns(model: nn.Module, positions: pd.DataFrame, dead: pd.DataFrame) -> go.Figure:
    layers = list(dict.fromkeys(positions["layer"]))
    z = np.stack([positions[positions["layer"] == layer].sort_values(["row", "col"])["kept_fraction"]
                  .to_numpy(dtype=float) for layer in layers])
    x = [f"({r},{c})" for r in range(3) for c in range(3)]
    n = max(len(layers), len(dead))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.22,
                        subplot_titles=["kept fraction at each 3×3 kernel position",
                                        "dead filters / neurons and unread inputs per layer"])
    fig.add_trace(go.Heatmap(z=z, x=x, y=[_label(layer) for layer in layers], colorscale=_SEQUENTIAL, zmin=0,
                             zmax=max(float(z.max()), 1e-12), name="kept fraction",
                             colorbar=dict(title="kept<br>fraction", x=float(fig.layout.xaxis.domain[1]) + 0.01,
                                           len=0.9, thickness=12),
                             hovertemplate="%{y}<br>kernel position (row,col) %{x}<br>kept fraction %{z:.3f}"
                                           "<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title_text="kernel position (row, col); (1,1) = centre", row=1, col=1)
    fig.update_yaxes(title_text="3×3 conv layer (module order)", autorange="reversed", row=1, col=1)
    _dead_bars(fig, dead, 1, 2, "filters/neurons")
    fig.update_layout(template=TEMPLATE, barmode="group", height=max(420, 18 * n + 180),
                      legend=dict(orientation="h", y=-0.12 if n < 20 else -0.05),
                      title=f"Where the kept weights of {type(model).__name__} sit: 3×3 kernel positions and dead "
                            f"filters")
    return fig


def _mlp_patterns(model: nn.Module, masks: Mapping | None, sparsity: float | None,
                  image_shape: tuple[int, int, int] | None) -> go.Figure:
    frac = input_pixel_map(model, masks, sparsity, image_shape=image_shape, fraction=True).numpy()
    counts = input_pixel_map(model, masks, sparsity, image_shape=image_shape).numpy()
    dead = dead_units(model, masks, sparsity)
    dead = dead[dead["kind"] == "linear"].reset_index(drop=True)
    first = _label(image_layer(model, None)[0])
    h, w = frac.shape
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.2,
                        subplot_titles=[f"fraction of {first} weights kept per input pixel",
                                        "dead neurons and unread inputs per layer"])
    fig.add_trace(go.Heatmap(z=frac, x=list(range(w)), y=list(range(h)), colorscale=_SEQUENTIAL, zmin=0,
                             zmax=max(float(frac.max()), 1e-12), customdata=counts, name="kept fraction",
                             colorbar=dict(title="kept<br>fraction", x=float(fig.layout.xaxis.domain[1]) + 0.01,
                                           len=0.9, thickness=12),
                             hovertemplate="pixel (row %{y}, col %{x})<br>kept fraction %{z:.3f}<br>"
                                           "%{customdata} kept weights<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title_text="pixel column", constrain="domain", row=1, col=1)
    fig.update_yaxes(title_text="pixel row", autorange="reversed", scaleanchor="x", constrain="domain", row=1,
                     col=1)
    _dead_bars(fig, dead, 1, 2, "neurons")
    fig.update_layout(template=TEMPLATE, barmode="group", height=460, legend=dict(orientation="h", y=-0.15),
                      title=f"Where the kept weights of {type(model).__name__} sit: input pixels of {first} and "
                            f"dead neurons")
    return fig


def _vit_patterns(model: nn.Module, masks: Mapping | None, sparsity: float | None) -> go.Figure:
    maps = vit_magnitude_maps(model, masks, sparsity)
    attn, mlp = maps["attn"], maps["mlp"]
    kept = masks is not None or sparsity is not None
    attn_what = "kept fraction" if kept else "mean |w|"
    mlp_what = "kept fraction of fc1 row + fc2 column" if kept else "L1 norm of fc1 row + fc2 column"
    layers = sorted(attn["layer"].unique().tolist())
    fig = make_subplots(rows=2, cols=4, specs=[[{}, {}, {}, {}], [{"colspan": 4}, None, None, None]],
                        row_heights=[0.5, 0.5], vertical_spacing=0.16, horizontal_spacing=0.05,
                        subplot_titles=[f"{p}: {attn_what} per head" for p in _PARTS]
                        + [f"MLP hidden neurons: {mlp_what}, sorted within each block"])
    vmax = max(float(attn["value"].max()), 1e-12)
    for i, part in enumerate(_PARTS, start=1):
        wide = attn[attn["part"] == part].pivot(index="layer", columns="head", values="value")
        wide = wide.reindex(index=layers, columns=sorted(wide.columns))
        fig.add_trace(go.Heatmap(z=wide.to_numpy(dtype=float), x=list(wide.columns), y=layers,
                                 coloraxis="coloraxis", name=part,
                                 hovertemplate="block %{y}, head %{x}<br>" + part + " " + attn_what
                                               + " %{z:.4g}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=i)
        fig.update_yaxes(autorange="reversed", dtick=1, showticklabels=i == 1, row=1, col=i)
    fig.update_yaxes(title_text="block", row=1, col=1)
    neurons = mlp.groupby("layer").size().max()
    z = np.full((len(layers), neurons), np.nan)
    index = np.full((len(layers), neurons), -1)
    for r, layer in enumerate(layers):
        rows = mlp[mlp["layer"] == layer].sort_values("value", ascending=False, kind="stable")
        z[r, :len(rows)] = rows["value"].to_numpy(dtype=float)
        index[r, :len(rows)] = rows["neuron"].to_numpy()
    fig.add_trace(go.Heatmap(z=z, x=list(range(neurons)), y=layers, coloraxis="coloraxis2", name="MLP neurons",
                             customdata=index,
                             hovertemplate="block %{y}, rank %{x}<br>neuron %{customdata}<br>" + mlp_what
                                           + " %{z:.4g}<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title_text="hidden neuron rank within the block (largest first)", row=2, col=1)
    fig.update_yaxes(title_text="block", autorange="reversed", dtick=1, row=2, col=1)
    top, bottom = fig.layout.yaxis.domain, fig.layout.yaxis5.domain
    fig.update_layout(
        template=TEMPLATE, height=max(640, 60 * len(layers) + 420),
        coloraxis=dict(colorscale=_SEQUENTIAL, cmin=0, cmax=vmax,
                       colorbar=dict(title=attn_what, y=(top[0] + top[1]) / 2, len=top[1] - top[0],
                                     thickness=12)),
        # plotly ignores cmin unless cmax is set too: without it the scale would start at the smallest neuron
        coloraxis2=dict(colorscale=_SEQUENTIAL, cmin=0, cmax=max(float(np.nanmax(z)), 1e-12),
                        colorbar=dict(title="kept<br>fraction" if kept else "L1 norm",
                                      y=(bottom[0] + bottom[1]) / 2, len=bottom[1] - bottom[0], thickness=12)),
        title=f"Where the {'kept' if kept else 'large'} weights of the ViT sit: attention heads (q, k, v, proj) "
              f"and MLP neurons")
    return fig
