"""Interactive explorers for Jupyter: ipywidgets controls driving plotly figures in the kernel.

* :class:`SparsityExplorer` — prune a trained network (or checkpoints of it) by magnitude at any sparsity and see
  the held-out accuracy, the per-layer keep ratios and where the kept weights sit.
* :class:`BudgetExplorer` — for a P3B run, re-allocate the per-block budget at another prune ratio and see the
  compact model's size and batch-1 latency.
* :class:`TraceScrubber` — step through a P3B run's mask updates: block benefit, applied keep ratios, and how many
  elements every gate pruned or reactivated.

Every explorer keeps its controls and figures as attributes (``explorer.slider.value = 0.9`` updates everything,
which is also how the tests drive them), exposes the assembled ``ipywidgets.VBox`` as ``explorer.widget`` and
recomputes in :meth:`update`. Each figure is a :class:`LiveFigure`: a plotly figure changed in place with
``fig.batch_update()`` and redrawn into an ``ipywidgets.Output`` as an ordinary figure output. An executed notebook
therefore stays small (the figure data, with plotly.js at most once from the notebook renderer, instead of a copy of
plotly.js per ``FigureWidget``) and its figures render without a kernel.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=8)
    >>> explorer = SparsityExplorer(sl.models.create("lenet_300_100", image_size=8), data, max_eval=100)
    >>> explorer.slider.value = 0.9
    >>> round(explorer.achieved_sparsity, 3)
    0.9
    >>> explorer.widget  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch
from torch import nn

from .data.datasets import DataBundle
from .errors import ConfigError, check_bool, check_positive_int
from .history import History, as_history
from .latency import latency_ms
from .models.checkpoints import nonfinite_entries, state_dict_mismatch
from .patterns import image_layer, input_pixel_map, kernel_positions, layer_keep_ratios
from .plots.p3b import block_label, select_run, sort_block_names
from .plots.style import TEMPLATE
from .pruners.allocation import water_fill
from .structure.compact import compact_stats, compact_vit
from .structure.unstructured import masks_from_scores, prunable_weights
from .structure.unstructured import sparsity as mask_sparsity
from .structure.vit import ViTStructure
from .training.loop import check_model_fits_data

__all__ = ["SparsityExplorer", "BudgetExplorer", "TraceScrubber", "LiveFigure"]

GLOBAL = "global magnitude"
LAYER = "layer-wise magnitude"


# ------------------------------------------------------------------------------------------------ helpers
def _held_out(data: Any, max_eval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset (seeded permutation, at most ``max_eval`` items) of a bundle's test split (else val) or of
    a dataset, as (images, labels) tensors."""
    if max_eval < 1:
        raise ConfigError(f"max_eval must be at least 1, got {max_eval}")
    ds = data
    if hasattr(data, "split") and hasattr(data, "eval_split"):
        ds = data.test if data.test is not None else data.val
        if ds is None:
            raise ConfigError(f"dataset {data.name!r} has neither a test nor a val split to evaluate on")
    n = len(ds)
    if n == 0:
        raise ConfigError("the evaluation dataset is empty")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:min(n, max_eval)]
    if hasattr(ds, "images") and hasattr(ds, "labels") and torch.is_tensor(ds.images):
        return ds.images[idx].float(), ds.labels[idx].long()
    items = [ds[int(i)] for i in idx]
    if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
        raise ConfigError(f"the evaluation data must be a DataBundle or a dataset of (image, label) pairs; its items "
                          f"are {type(items[0]).__name__}")
    return torch.stack([torch.as_tensor(x) for x, _ in items]).float(), torch.tensor([int(y) for _, y in items])


def _check_checkpoints(checkpoints: Any) -> dict[str, Mapping[str, torch.Tensor]]:
    """``checkpoints`` as a dict of name → state_dict; anything else is a :class:`ConfigError` saying what it takes."""
    if checkpoints is None:
        return {}
    if isinstance(checkpoints, (list, tuple)) and all(isinstance(i, tuple) and len(i) == 2 for i in checkpoints):
        checkpoints = dict(checkpoints)  # (name, state_dict) pairs
    if not isinstance(checkpoints, Mapping):
        raise ConfigError(f"checkpoints must map a name to a state_dict, e.g. {{'ART 90%': model.state_dict()}}; got "
                          f"{type(checkpoints).__name__}")
    if checkpoints and all(torch.is_tensor(v) for v in checkpoints.values()):
        raise ConfigError("checkpoints must map a name to a state_dict; this is one state_dict itself (its values "
                          "are tensors): pass {'a name': state_dict}")
    for name, state in checkpoints.items():
        if isinstance(state, nn.Module):
            raise ConfigError(f"checkpoint {name!r} is a model ({type(state).__name__}); pass its state_dict()")
        if not isinstance(state, Mapping):
            raise ConfigError(f"checkpoint {name!r} must be a state_dict (parameter name → tensor), got "
                              f"{type(state).__name__}")
    return dict(checkpoints)


def _check_finite(whose: str, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse a state_dict with NaN or ±inf entries: its magnitudes cannot be ranked, and the accuracy of a model
    computing NaN would be shown as if measured."""
    bad = nonfinite_entries(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConfigError(f"{whose} holds NaN or inf in {', '.join(bad[:3])}{more}: the explorer shows finite "
                          f"(trained, not diverged) weights only")


class LiveFigure(go.Figure):
    """A plotly figure shown in an ``ipywidgets.Output`` (:attr:`widget`) and redrawn there after every
    ``batch_update()`` block — the behaviour of a ``FigureWidget`` for explorers, stored as plain figure outputs.

    Example:
        >>> fig = LiveFigure()
        >>> with fig.batch_update():
        ...     _ = fig.add_bar(x=["a", "b"], y=[1, 2])
        >>> list(fig.data[0].y)
        [1, 2]
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._output = widgets.Output()
        self._shown = False

    @property
    def widget(self) -> widgets.Output:
        """The output area the figure is drawn into (drawn now, and again after every change)."""
        self._shown = True
        self.redraw()
        return self._output

    def batch_update(self):
        return _RedrawAfter(self, super().batch_update())

    def redraw(self) -> None:
        """Replace the drawn figure with the current one (only inside an IPython kernel, once shown)."""
        if not self._shown:
            return
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - IPython comes with ipywidgets
            return
        if get_ipython() is None:
            return
        # The figure becomes the output area's state; it is not captured with ``with output: display(...)``.
        # Capturing makes a headless client (nbclient, papermill) echo every captured output back to the kernel
        # as a comm message on the shell channel in the middle of the cell, and such runs stalled waiting for
        # the cell's reply.
        self._output.outputs = ({"output_type": "display_data", "data": _mime_bundle(self), "metadata": {}},)


def _mime_bundle(fig: go.Figure) -> dict[str, Any]:
    """The bundle that displaying ``fig`` publishes under plotly's default renderers. Unlike
    ``fig._repr_mimebundle_()`` it does not activate the renderers again: the ``notebook`` renderer would embed
    plotly.js (4.8 MB) once more on every call."""
    from plotly.io.base_renderers import MimetypeRenderer

    fig_dict = fig.to_dict()
    bundle: dict[str, Any] = {}
    for name in pio.renderers.default.split("+"):
        renderer = pio.renderers[name]
        if isinstance(renderer, MimetypeRenderer):
            bundle.update(renderer.to_mimebundle(fig_dict))
    return bundle


class _RedrawAfter:
    def __init__(self, fig: LiveFigure, inner):
        self.fig, self.inner = fig, inner

    def __enter__(self):
        return self.inner.__enter__()

    def __exit__(self, *exc):
        result = self.inner.__exit__(*exc)
        if exc[0] is None:
            self.fig.redraw()
        return result


def _bar_figure(title: str, names: list[str], y_title: str, traces: list[str]) -> LiveFigure:
    fig = LiveFigure(layout=dict(template=TEMPLATE, title=title, height=320, barmode="group",
                                 margin=dict(l=50, r=20, t=50, b=50), yaxis_title=y_title))
    for name in traces:
        fig.add_bar(x=names, y=[0.0] * len(names), name=name)
    return fig


# ---------------------------------------------------------------------------------------- SparsityExplorer
class SparsityExplorer:
    """Magnitude-prune a trained model at a chosen sparsity and see held-out accuracy and where weights are kept.

    Controls: ``slider`` (global sparsity, 0 to 0.995) and ``method`` (dropdown: ``"global magnitude"``,
    ``"layer-wise magnitude"``, then one entry per checkpoint, whose weights are pruned by global magnitude).
    Outputs: ``info`` (HTML with accuracy and achieved sparsity), ``bars`` (per-layer keep ratio; the kept counts
    are the bars' ``customdata``) and ``heatmap`` (kept fraction per input pixel of a first Linear layer that
    reads the flattened image, else the kept fraction per 3×3 kernel position of every convolution).

    The user's model is never changed: a private copy is loaded with the chosen weights and masked. Magnitudes
    and the held-out subset (``max_eval`` images of the test split, else val) are computed once. ``masks``, the
    bars, the heatmap and the achieved sparsity count the weights the evaluated copy keeps: a weight that is zero
    in the chosen weights (a sparse checkpoint) is pruned even where the magnitude mask keeps it. Weights holding
    NaN or inf are refused up front.

    Args:
        model: the trained network.
        data: a :class:`~sparselab.data.DataBundle` or a dataset of ``(image, label)`` pairs.
        checkpoints: name → state_dict of the same architecture (e.g. weights trained by ART or HyperSparse).
        image_shape: (C, H, W) read by the first Linear layer; default from the bundle or the layer's width.
        max_eval: held-out images evaluated per change.

    Example:
        >>> import sparselab as sl
        >>> data = sl.data.load("digits", image_size=8)
        >>> explorer = SparsityExplorer(sl.models.create("lenet_300_100", image_size=8), data, max_eval=50)
        >>> explorer.method.options[:2]
        ('global magnitude', 'layer-wise magnitude')
        >>> explorer.slider.value = 0.5
        >>> int(explorer.keep_table.kept.sum())
        25100
    """

    def __init__(self, model: nn.Module, data: Any, checkpoints: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                 image_shape: tuple[int, int, int] | None = None, max_eval: int = 1000):
        checkpoints = _check_checkpoints(checkpoints)
        max_eval = check_positive_int("max_eval", int(max_eval) if isinstance(max_eval, np.integer) else max_eval)
        clash = [k for k in checkpoints if k in (GLOBAL, LAYER)]
        if clash:
            raise ConfigError(f"checkpoint names must differ from the built-in methods {GLOBAL!r} and {LAYER!r}")
        if isinstance(data, DataBundle):  # the same clear error fit gives for a model/data mismatch
            check_model_fits_data(model, data)
        self._work = copy.deepcopy(model).eval()
        for p in self._work.parameters():
            p.requires_grad_(False)
        self._names = list(prunable_weights(self._work))
        device = next(self._work.parameters()).device
        x, y = _held_out(data, max_eval)
        self._x, self._y = x.to(device, dtype=next(self._work.parameters()).dtype), y.to(device)
        # original weights of every source, and their magnitudes (flat, per layer and concatenated)
        own = {k: v.detach().clone() for k, v in self._work.state_dict().items()}
        _check_finite("the model", own)
        # the model's own weights sit under None, so that a checkpoint may have any name (even "model")
        self._sources: dict[str | None, dict[str, torch.Tensor]] = {None: own}
        for name, state in checkpoints.items():
            mismatch = state_dict_mismatch(own, state)
            if mismatch:
                raise ConfigError(f"checkpoint {name!r} does not fit the model: {mismatch}")
            self._sources[name] = {k: torch.as_tensor(state[k]).detach().to(own[k].device, own[k].dtype).clone()
                                   for k in own}
            _check_finite(f"checkpoint {name!r}", self._sources[name])
        # magnitudes per source, computed once: each slider move only ranks them (masks_from_scores)
        self._mags: dict[str | None, dict[str, torch.Tensor]] = {
            src: {n: state[n].abs().float().cpu() for n in self._names} for src, state in self._sources.items()}
        self._checkpoints = list(checkpoints)

        self._pixel_shape: tuple[int, int, int] | None = None
        if image_shape is not None:
            self._check_image_shape(image_shape)
        elif hasattr(data, "in_chans") and hasattr(data, "image_size"):
            image_shape = (int(data.in_chans), int(data.image_size), int(data.image_size))
        if image_shape is not None:
            if image_layer(self._work, int(np.prod(image_shape))) is not None:
                self._pixel_shape = tuple(int(v) for v in image_shape)
        elif image_layer(self._work, None) is not None:
            from .patterns import infer_image_shape
            try:
                self._pixel_shape = infer_image_shape(self._work)
            except ConfigError:
                self._pixel_shape = None

        self.slider = widgets.FloatSlider(value=0.5, min=0.0, max=0.995, step=0.005, description="sparsity",
                                          readout_format=".3f", continuous_update=False)
        self.method = widgets.Dropdown(options=[GLOBAL, LAYER, *self._checkpoints], value=GLOBAL,
                                       description="weights")
        self.info = widgets.HTML()
        layers = list(self._names)
        self.bars = _bar_figure("Keep ratio per layer", layers, "kept fraction", ["keep ratio"])
        self.bars.update_yaxes(range=[0, 1.05])
        self.bars.update_layout(width=560)  # side by side with the heatmap in a notebook cell
        self.bars.data[0].hovertemplate = "%{x}<br>keep ratio %{y:.4f}<br>kept %{customdata}<extra></extra>"
        self.heatmap = LiveFigure(layout=dict(template=TEMPLATE, height=320, width=460,
                                              margin=dict(l=50, r=20, t=50, b=50)))
        if self._pixel_shape is not None:
            c, h, w = self._pixel_shape
            self.heatmap.add_heatmap(z=np.zeros((h, w)), colorscale="Viridis", zmin=0, zmax=1,
                                     colorbar=dict(title="kept"))
            self.heatmap.update_layout(title="Kept fraction per input pixel (first layer)")
            self.heatmap.update_yaxes(autorange="reversed", scaleanchor="x")
        else:
            self.heatmap.add_heatmap(z=[[0.0] * 9], colorscale="Viridis", zmin=0, zmax=1,
                                     colorbar=dict(title="kept"))
            has_kernels = not kernel_positions(self._work).empty
            self.heatmap.update_layout(
                title="Kept fraction per 3×3 kernel position" if has_kernels else
                "No 3×3 convolution, no first Linear layer reading the image: no map",
                xaxis_title="(row, col)")
            # the first layer on top, as in plot_weight_patterns
            self.heatmap.update_yaxes(autorange="reversed", title_text="3×3 conv layer (module order)")
        self.masks: dict[str, torch.Tensor] = {}
        self.keep_table = pd.DataFrame()
        self.accuracy = math.nan
        self.achieved_sparsity = math.nan
        self.slider.observe(lambda _: self.update(), names="value")
        self.method.observe(lambda _: self.update(), names="value")
        self.update()

    def _check_image_shape(self, image_shape: Any) -> None:
        """Refuse a given ``image_shape`` that is not (C, H, W) or that the model's first Linear layer does not read."""
        if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                           for v in image_shape)):
            raise ConfigError(f"image_shape must be (C, H, W), three positive integers, got {image_shape!r}")
        first = image_layer(self._work, None)
        if first is None:
            raise ConfigError(f"image_shape applies to a fully connected network reading the flattened image; "
                              f"{type(self._work).__name__} starts with a convolution (leave image_shape out)")
        n = int(np.prod(image_shape))
        if first[1].in_features != n:
            raise ConfigError(f"image_shape {tuple(image_shape)} has {n} values, but the first Linear layer "
                              f"{first[0].removesuffix('.weight')} reads {first[1].in_features} inputs")

    @property
    def model(self) -> nn.Module:
        """The private, masked working copy of the model (as last shown)."""
        return self._work

    @property
    def widget(self) -> widgets.VBox:
        """Controls, accuracy line and the two figures, ready to display."""
        return widgets.VBox([widgets.HBox([self.method, self.slider]), self.info,
                             widgets.HBox([self.bars.widget, self.heatmap.widget])])

    def _masks(self, source: str, scope: str, s: float) -> dict[str, torch.Tensor]:
        return masks_from_scores(self._mags[source], s, scope)

    @torch.no_grad()
    def update(self) -> None:
        """Reload the chosen weights into the working copy, mask them, evaluate and redraw."""
        s = float(self.slider.value)
        choice = self.method.value
        source = choice if choice in self._checkpoints else None
        scope = "layer" if choice == LAYER else "global"
        magnitude = self._masks(source, scope, s)
        self._work.load_state_dict(self._sources[source])
        params = dict(self._work.named_parameters())
        for name, m in magnitude.items():
            params[name].mul_(m.to(params[name].device, params[name].dtype))
        correct = 0
        for i in range(0, len(self._y), 512):
            out = self._work(self._x[i:i + 512])
            correct += int((out.argmax(1) == self._y[i:i + 512]).sum())
        # A weight that is zero in the chosen weights (a sparse checkpoint) is pruned whatever the magnitude mask
        # keeps: readouts and figures count the weights the evaluated model really has.
        masks = {name: m & (params[name].detach() != 0).cpu() for name, m in magnitude.items()}
        self.masks = masks
        self.accuracy = correct / len(self._y)
        self.achieved_sparsity = mask_sparsity(masks)
        self.keep_table = layer_keep_ratios(self._work, masks)
        removed = mask_sparsity(magnitude)
        zeros = (f"; magnitude pruning removes {removed:.4f}, the rest were zero in these weights already"
                 if self.achieved_sparsity > removed else "")
        self.info.value = (f"<b>{choice}</b> at sparsity {s:.3f}: held-out accuracy <b>{self.accuracy:.2%}</b> "
                           f"on {len(self._y)} images; achieved sparsity {self.achieved_sparsity:.4f} "
                           f"({int(self.keep_table.kept.sum())} of {int(self.keep_table.numel.sum())} weights kept"
                           f"{zeros})")
        if self._pixel_shape is not None:
            z = input_pixel_map(self._work, masks, image_shape=self._pixel_shape, fraction=True).numpy()
            x_labels, y_labels = None, None
        else:
            table = kernel_positions(self._work, masks)
            if len(table):
                table = table.assign(pos=[f"({r}, {c})" for r, c in zip(table.row, table.col)])
                pivot = table.pivot(index="layer", columns="pos", values="kept_fraction")
                pivot = pivot.loc[list(dict.fromkeys(table.layer))]
                z, x_labels, y_labels = pivot.to_numpy(), list(pivot.columns), list(pivot.index)
            else:
                z, x_labels, y_labels = np.zeros((0, 9)), None, []
        with self.bars.batch_update():
            bar = self.bars.data[0]
            bar.x = list(self.keep_table.layer)
            bar.y = self.keep_table.keep_ratio.tolist()
            bar.customdata = self.keep_table.kept.tolist()
        with self.heatmap.batch_update():
            hm = self.heatmap.data[0]
            hm.z = z.tolist()
            if x_labels is not None:
                hm.x, hm.y = x_labels, y_labels


# ------------------------------------------------------------------------------------------ P3B histories
def _block_table(history: History, run: str | None, metrics: tuple[str, ...], who: str) -> pd.DataFrame:
    tables = select_run(as_history(history, who), run)
    blocks = tables["blocks"]
    have = set(blocks.metric.unique()) if len(blocks) else set()
    missing = [m for m in metrics if m not in have]
    if missing:
        raise ConfigError(f"{who} needs the History of a P3B pruning run: the per-block metrics "
                          f"{', '.join(missing)} were not recorded (found: {', '.join(sorted(have)) or 'none'})")
    return blocks


class BudgetExplorer:
    """Re-allocate a P3B run's per-block budget at another prune ratio and measure the compact model.

    Moving ``slider`` (prune ratio, 0.05 to 0.95) water-fills the last recorded block ``importance`` (uniform when
    the run logged none) to the parameter budget of that ratio — P3B's formula: every block Linear layer is
    prunable, everything else (norms, embeddings, head) is kept. Each block then keeps the first elements of its
    ``attn_qkv`` (attention) or ``mlp_hid`` (MLP) gate, as many as meet its keep ratio; the masked model is
    compacted with :func:`~sparselab.structure.compact_vit`, counted with
    :func:`~sparselab.structure.compact_stats` and timed at batch size 1 (:func:`~sparselab.latency.latency_ms`,
    5 repeats). Results: ``keep_goal`` / ``keep_applied`` (per block), ``masks``, ``compact``, ``params``,
    ``latency``, ``achieved_ratio``; shown in ``bars`` and ``info``.

    Example:
        >>> import sparselab as sl
        >>> h = History()
        >>> h.log_blocks("keep_goal", {f"blocks.{i}.{k}": 0.5 for i in range(4) for k in ("attn", "mlp")},
        ...              step=1, epoch=0)
        >>> explorer = BudgetExplorer(h, sl.models.create("vit_nano_patch4_28", num_classes=10))
        >>> explorer.slider.value = 0.5
        >>> abs(explorer.achieved_ratio - 0.5) < 0.01
        True
    """

    def __init__(self, history: History, model: nn.Module, run: str | None = None, blocks_only: bool = False,
                 measure_latency: bool = True):
        check_bool("blocks_only", blocks_only)
        check_bool("measure_latency", measure_latency)
        history = as_history(history, "BudgetExplorer")
        blocks = _block_table(history, run, ("keep_goal",), "BudgetExplorer")
        self.structure = s = ViTStructure(model)
        self._model = model
        names = [b.name for b in s.blocks]
        logged = sort_block_names(blocks[blocks.metric == "keep_goal"].block)
        if sorted(logged) != sorted(names):
            raise ConfigError(f"the History's blocks ({', '.join(logged)}) are not the model's blocks "
                              f"({', '.join(names)}); pass the model the run pruned")
        imp = blocks[blocks.metric == "importance"]
        if len(imp):
            step = int(imp.step.max())
            last = imp[imp.step == step].groupby("block").value.last()
            lacking = [n for n in names if n not in last.index]
            if lacking:
                raise ConfigError(f"the History's block importance of step {step} lacks the blocks "
                                  f"{', '.join(lacking)}; P3B logs the importance of every block at each update")
            bad = [f"{n} ({last[n]})" for n in names if not math.isfinite(float(last[n]))]
            if bad:
                raise ConfigError(f"the History's block importance of step {step} is not finite for "
                                  f"{', '.join(bad)}; it cannot be water-filled (was the run diverging?)")
            self.importance = torch.tensor([float(last[n]) for n in names], dtype=torch.float64)
            self.importance_step: int | None = step
        else:
            self.importance = torch.ones(len(names), dtype=torch.float64)
            self.importance_step = None
        self.dense_linear = torch.tensor([s.linear_params(b) for b in s.blocks], dtype=torch.float64)
        blocks_total = float(sum(s.block_params(b) for b in s.blocks))
        self._total = blocks_total if blocks_only else blocks_total + s.outside_params()
        self.blocks_only = blocks_only
        self.measure_latency = measure_latency
        self._gate = {b.name: ("attn_qkv" if b.kind == "attn" else "mlp_hid") for b in s.blocks}
        # Linear parameters as a function of kept gate elements n: 0 for n = 0, else a·n + c
        self._affine: list[tuple[float, float, int]] = []
        for b in s.blocks:
            g = self._gate[b.name]
            size = s.gate_sizes(b.layer)[g]
            f1 = s.linear_params(b, {b.layer: {g: torch.arange(size) < 1}})
            f2 = s.linear_params(b, {b.layer: {g: torch.arange(size) < 2}}) if size > 1 else 2 * f1
            self._affine.append((float(f2 - f1), float(f1 - (f2 - f1)), size))
        c, hw = model.patch_embed.proj.in_channels, tuple(model.patch_embed.img_size)
        self.input_shape = (int(c), int(hw[0]), int(hw[1]))
        self._cache: dict[tuple[int | bool, ...], tuple[int, float]] = {}

        self.slider = widgets.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.01, description="prune ratio",
                                          readout_format=".2f", continuous_update=False)
        self.info = widgets.HTML()
        self.bars = _bar_figure("Keep ratio per block", [block_label(n) for n in names], "keep ratio",
                                ["goal κ (water-filled)", "compact model"])
        self.bars.update_yaxes(range=[0, 1.05])
        self.keep_goal = torch.zeros(len(names), dtype=torch.float64)
        self.keep_applied = torch.zeros(len(names), dtype=torch.float64)
        self.units: list[int] = []
        self.masks: dict[int, dict[str, torch.Tensor]] = {}
        self.compact: nn.Module | None = None
        self.params = 0
        self.latency = math.nan
        self.achieved_ratio = math.nan
        self.slider.observe(lambda _: self.update(), names="value")
        self.update()

    @property
    def widget(self) -> widgets.VBox:
        """Slider, size/latency line and keep-ratio bars, ready to display."""
        return widgets.VBox([self.slider, self.info, self.bars.widget])

    def budget(self, prune_ratio: float) -> float:
        """Linear parameters the blocks may keep at ``prune_ratio`` (P3B's budget)."""
        return (1 - prune_ratio) * self._total - (self._total - float(self.dense_linear.sum()))

    def _units(self, targets: torch.Tensor, budget: float) -> list[int]:
        """Kept gate elements per block: closest to each block's target, rounded so the total meets the budget."""
        real, units = [], []
        for (a, c, size), t in zip(self._affine, targets.tolist()):
            x = min(max((t - c) / a, 0.0), float(size)) if t > 0.5 * (a + c) else 0.0
            real.append(x)
            units.append(int(math.floor(x + 1e-9)))

        def kept(u: list[int]) -> float:
            return sum(0.0 if n == 0 else a * n + c for n, (a, c, _) in zip(u, self._affine))

        for k in sorted(range(len(units)), key=lambda k: real[k] - units[k], reverse=True):
            a, c, size = self._affine[k]
            if units[k] >= size:
                continue
            trial = units.copy()
            trial[k] += 1
            if abs(kept(trial) - budget) < abs(kept(units) - budget):
                units = trial
        return units

    @torch.no_grad()
    def update(self) -> None:
        """Water-fill at the slider's ratio, build and compact the masked model, count and time it, redraw."""
        s = self.structure
        ratio = float(self.slider.value)
        budget = self.budget(ratio)
        if budget < 0:
            most = float(self.dense_linear.sum()) / self._total
            self.info.value = (f"<b>prune ratio {ratio:.2f} is out of reach</b>: only {most:.3f} of the "
                               f"{'blocks' if self.blocks_only else 'model'} lies in prunable Linear layers")
            # nothing of the previous ratio may stay on show as if it were this one's
            nan = torch.full((len(s.blocks),), math.nan, dtype=torch.float64)
            self.keep_goal, self.keep_applied = nan, nan.clone()
            self.units, self.masks, self.compact = [], {}, None
            self.params, self.latency, self.achieved_ratio = 0, math.nan, math.nan
            with self.bars.batch_update():
                self.bars.data[0].y = [None] * len(s.blocks)
                self.bars.data[1].y = [None] * len(s.blocks)
            return
        kappa = water_fill(self.importance, self.dense_linear, budget)
        units = self._units(kappa * self.dense_linear, budget)
        masks = s.full_masks()
        for b, n in zip(s.blocks, units):
            g = self._gate[b.name]
            masks[b.layer][g] = torch.arange(s.gate_sizes(b.layer)[g]) < n
        applied = torch.tensor([s.linear_params(b, masks) for b in s.blocks], dtype=torch.float64)
        self.keep_goal, self.keep_applied = kappa, applied / self.dense_linear
        self.units, self.masks = units, masks
        self.achieved_ratio = s.prune_ratio(masks, blocks_only=self.blocks_only)
        self.compact = compact_vit(self._model, masks).eval()
        key = (*units, bool(self.measure_latency))  # a latency left out is not one measured
        if key not in self._cache:
            ms = (latency_ms(self.compact, self.input_shape, batch_size=1, repeats=5)
                  if self.measure_latency else math.nan)
            self._cache[key] = (compact_stats(self.compact)["params"], ms)
        self.params, self.latency = self._cache[key]
        dense = sum(p.numel() for p in self._model.parameters())
        source = (f"importance of step {self.importance_step}" if self.importance_step is not None
                  else "uniform importance (none recorded)")
        timed = (f"batch-1 latency <b>{self.latency:.2f} ms</b>" if math.isfinite(self.latency)
                 else "batch-1 latency not measured (measure_latency=False)")
        self.info.value = (f"prune ratio {ratio:.2f} ({source}): compact model <b>{self.params:,}</b> parameters "
                           f"of {dense:,} (achieved ratio {self.achieved_ratio:.4f} of the "
                           f"{'blocks' if self.blocks_only else 'model'}'s parameters), {timed}")
        with self.bars.batch_update():
            self.bars.data[0].y = self.keep_goal.tolist()
            self.bars.data[1].y = self.keep_applied.tolist()


class TraceScrubber:
    """Step through the mask updates of a P3B run.

    ``slider`` (an ``IntSlider`` from the first to the last recorded update step; values between updates snap to
    the nearest recorded step, or to the next one in the direction of the move when the nearest is the update
    already shown, so that a one-notch move never lands back where it started) selects one update, shown as:
    ``benefit`` (per-block benefit ΔΨ of the class-token and patch probes, when recorded), ``keep`` (applied keep
    ratio κ̃ per block) and ``table`` (HTML of ``events_table``: elements reactivated and pruned at that update, per
    block and gate).

    Example:
        >>> h = History()
        >>> for step, keep in ((4, 0.8), (8, 0.6)):
        ...     h.log_blocks("keep_applied", {"blocks.0.attn": keep, "blocks.0.mlp": keep}, step=step, epoch=0)
        >>> h.log_events(step=8, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[1, 2], old=1, new=0)
        >>> scrubber = TraceScrubber(h)
        >>> scrubber.steps, scrubber.slider.value
        ([4, 8], 8)
        >>> scrubber.events_table.pruned.tolist()
        [2]
    """

    def __init__(self, history: History, run: str | None = None):
        history = as_history(history, "TraceScrubber")
        blocks = _block_table(history, run, ("keep_applied",), "TraceScrubber")
        self._blocks = blocks[blocks.metric.isin(["keep_applied", "keep_goal", "benefit_cls", "benefit_patch"])]
        self._events = select_run(history, run)["events"]
        self.steps: list[int] = sorted(int(v) for v in blocks[blocks.metric == "keep_applied"].step.unique())
        patch = blocks[blocks.metric == "benefit_patch"].step
        #: update steps whose window held a patch-probe batch; None for a run without patch probes
        self._patch_steps: set[int] | None = {int(v) for v in patch.unique()} if len(patch) else None
        self.names = sort_block_names(blocks[blocks.metric == "keep_applied"].block)
        labels = [block_label(n) for n in self.names]
        diffs = [b - a for a, b in zip(self.steps, self.steps[1:])]
        stride = math.gcd(*diffs) if diffs else 1
        self.slider = widgets.IntSlider(value=self.steps[-1], min=self.steps[0], max=self.steps[-1],
                                        step=max(stride, 1), description="update step", continuous_update=False)
        self.info = widgets.HTML()
        self.table = widgets.HTML()
        self.benefit = _bar_figure("Block benefit ΔΨ", labels, "ΔΨ", ["class token", "patch"])
        self.keep = _bar_figure("Applied keep ratio κ̃", labels, "keep ratio", ["κ̃"])
        self.keep.update_yaxes(range=[0, 1.05])
        self.events_table = pd.DataFrame()
        self.step = self.steps[-1]
        self.slider.observe(lambda _: self.update(), names="value")
        self.update()

    @property
    def widget(self) -> widgets.VBox:
        """Slider, step line, the two figures and the events table, ready to display."""
        self.benefit.update_layout(width=560)
        self.keep.update_layout(width=560)
        return widgets.VBox([self.slider, self.info, widgets.HBox([self.benefit.widget, self.keep.widget]),
                             self.table])

    def values(self, metric: str, step: int) -> list[float]:
        """The History's ``metric`` per block (in ``names`` order) at ``step``; NaN where not recorded."""
        df = self._blocks[(self._blocks.metric == metric) & (self._blocks.step == step)]
        got = df.groupby("block").value.last()
        return [float(got.get(n, math.nan)) for n in self.names]

    def update(self) -> None:
        """Snap the slider to a recorded update step and redraw that update."""
        value = int(self.slider.value)
        step = min(self.steps, key=lambda s: (abs(s - value), s))
        if step == self.step and value != step:  # snapping back would undo the move: go on to the next update
            index = self.steps.index(step) + (1 if value > step else -1)
            step = self.steps[min(max(index, 0), len(self.steps) - 1)]
        if step != value:
            self.slider.value = step  # re-enters update() with a recorded step
            return
        self.step = step
        ev = self._events[self._events.step == step]
        rows = []
        for (block, gate), g in ev.groupby(["block", "gate"], sort=False):
            rows.append(dict(block=block, gate=gate, reactivated=int(((g.old == 0) & (g.new == 1)).sum()),
                             pruned=int(((g.old == 1) & (g.new == 0)).sum())))
        table = pd.DataFrame(rows, columns=["block", "gate", "reactivated", "pruned"])
        if len(table):
            order = {n: i for i, n in enumerate(sort_block_names(table.block))}
            table = table.sort_values(["block", "gate"], key=lambda col: col.map(order) if col.name == "block"
                                      else col).reset_index(drop=True)
        self.events_table = table
        index = self.steps.index(step)
        unmeasured = self._patch_steps is not None and step not in self._patch_steps
        note = " (no patch-probe batch in this window: the class-token score decided alone)" if unmeasured else ""
        self.info.value = (f"update {index + 1} of {len(self.steps)} at step <b>{step}</b>: "
                           f"{int(table.reactivated.sum()) if len(table) else 0} elements reactivated, "
                           f"{int(table.pruned.sum()) if len(table) else 0} pruned{note}")
        self.table.value = (table.to_html(index=False, border=0) if len(table)
                            else "<i>no mask element changed at this update</i>")
        with self.benefit.batch_update():
            self.benefit.data[0].y = self.values("benefit_cls", step)
            self.benefit.data[1].y = self.values("benefit_patch", step)
        with self.keep.batch_update():
            self.keep.data[0].y = self.values("keep_applied", step)
