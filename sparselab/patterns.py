"""Where the kept (high-magnitude) weights of an unstructured sparse network sit.

Measurements for the HyperSparse analysis of sparse networks: the keep ratio of every layer; the structure inside
layers (which 3×3 kernel positions keep weights, which filters or neurons lose all of theirs, which input pixels a
first fully connected layer still reads); and for Vision Transformers the magnitude (or kept fraction) of every
attention head's q/k/v/proj weights and of every MLP hidden neuron.

Every function takes a model plus the kept weights, given in one of three ways (see :func:`kept_masks`):
``masks`` (``dict[param_name, BoolTensor]``, True = kept, one entry per prunable weight: the ``weight`` of every
``nn.Conv2d`` and ``nn.Linear``), ``sparsity`` (global magnitude masks at that sparsity), or neither (the nonzero
pattern of the weights, for a model whose pruned weights were set to exactly zero). Results are pandas DataFrames
or tensors; nothing is plotted here (see :mod:`sparselab.plots.patterns`).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> layer_keep_ratios(net, sparsity=0.5)[["layer", "numel"]].values.tolist()
    [['0.weight', 12], ['2.weight', 6]]
"""
from __future__ import annotations

import math
import operator
from typing import Any, Iterable, Mapping

import pandas as pd
import torch
from torch import nn

from .errors import ConfigError, DivergedError, check_bool
from .structure.unstructured import magnitude_masks, prunable_weights
from .structure.vit import reduce_gates

__all__ = ["kept_masks", "layer_keep_ratios", "kernel_positions", "dead_units", "input_pixel_map",
           "infer_image_shape", "vit_magnitude_maps", "vit_blocks", "vit_pattern_summary", "vit_pattern_table"]

Masks = Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------- masks
def _short(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@torch.no_grad()
def kept_masks(model: nn.Module, masks: Masks | None = None, sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """Boolean keep masks (True = kept, on the CPU) of every prunable weight, in module order.

    ``masks`` are checked against the prunable weights (same names, same shapes) and returned as bool tensors;
    otherwise ``sparsity`` gives global magnitude masks (:func:`~sparselab.structure.magnitude_masks`); when both
    are None the masks are the nonzero pattern of the weights (a model whose pruned weights are exactly zero).
    Passing both ``masks`` and ``sparsity`` is an error.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
        >>> kept_masks(net)["weight"].int().tolist()
        [[0, 1, 0], [1, 0, 0]]
        >>> kept_masks(net, sparsity=0.5)["weight"].sum().item()
        3
    """
    _check_model(model)
    weights = prunable_weights(model)
    if masks is not None and sparsity is not None:
        raise ConfigError("pass either masks or sparsity, not both (masks are used as given; sparsity builds "
                          "global magnitude masks)")
    if masks is None and sparsity is not None:
        return {name: m.detach().cpu().bool() for name, m in magnitude_masks(model, sparsity).items()}
    if masks is None:
        nan = [name for name, w in weights.items() if bool(torch.isnan(w.detach()).any())]
        if nan:  # NaN != 0 would count every diverged weight as kept
            raise DivergedError(f"the weights of {_short(nan)} hold NaN: their nonzero pattern says nothing about "
                                f"which weights are kept (pass masks=)")
        return {name: (w.detach() != 0).cpu() for name, w in weights.items()}
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks must be a dict of parameter name → bool tensor, got {type(masks).__name__}")
    unknown = [k for k in masks if k not in weights]
    missing = [k for k in weights if k not in masks]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"names that are not prunable weights: {_short(unknown)}")
        if missing:
            parts.append(f"prunable weights without a mask: {_short(missing)}")
        raise ConfigError(f"masks do not match the prunable weights (the weight of every Conv2d and Linear) of "
                          f"{type(model).__name__}: " + "; ".join(parts))
    out = {}
    for name, w in weights.items():
        m = masks[name]
        if not isinstance(m, torch.Tensor):
            raise ConfigError(f"mask {name!r} must be a tensor, got {type(m).__name__}")
        if tuple(m.shape) != tuple(w.shape):
            raise ConfigError(f"mask {name!r} has shape {tuple(m.shape)}, but the weight has shape "
                              f"{tuple(w.shape)}")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ConfigError(f"mask {name!r} must hold booleans or 0/1 (True = kept), got other values (scores "
                              f"or NaN?); build masks from scores with "
                              f"sparselab.structure.unstructured.masks_from_scores")
        out[name] = (m.detach() != 0).cpu() if m.dtype != torch.bool else m.detach().cpu()
    return out


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")


def _modules_by_weight(model: nn.Module) -> dict[str, nn.Module]:
    """Name → Conv2d/Linear module of every prunable weight, keyed and ordered as
    :func:`~sparselab.structure.prunable_weights` (a tied weight once, under its parameter name)."""
    _check_model(model)
    canonical = {id(p): name for name, p in model.named_parameters()}
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.setdefault(canonical.get(id(m.weight), f"{name}.weight" if name else "weight"), m)
    return out


def _kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, nn.Conv2d) else "linear"


# ---------------------------------------------------------------------------------------------- keep ratios
def layer_keep_ratios(model: nn.Module, masks: Masks | None = None, sparsity: float | None = None) -> pd.DataFrame:
    """Keep ratio of every prunable layer, in module order.

    Columns: ``layer`` (parameter name), ``kind`` (``"conv"``/``"linear"``), ``shape`` (tuple), ``numel``,
    ``kept`` (kept weights) and ``keep_ratio`` (kept / numel). Masks as in :func:`kept_masks`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 2))
        >>> masks = {"0.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool),
        ...          "2.weight": torch.tensor([[True, False], [False, False]])}
        >>> layer_keep_ratios(net, masks)[["kind", "kept", "keep_ratio"]].values.tolist()
        [['conv', 18, 1.0], ['linear', 1, 0.25]]
    """
    kept = kept_masks(model, masks, sparsity)
    modules = _modules_by_weight(model)
    rows = []
    for name, m in kept.items():
        n, k = m.numel(), int(m.sum())
        rows.append(dict(layer=name, kind=_kind(modules[name]), shape=tuple(m.shape), numel=n, kept=k,
                         keep_ratio=k / n if n else float("nan")))
    return pd.DataFrame(rows, columns=["layer", "kind", "shape", "numel", "kept", "keep_ratio"])


# ------------------------------------------------------------------------------------------ inside a layer
def kernel_positions(model: nn.Module, masks: Masks | None = None, sparsity: float | None = None) -> pd.DataFrame:
    """Kept fraction of the weights at each of the 9 positions of every 3×3 convolution.

    One row per conv layer with a 3×3 kernel and kernel position: ``layer``, ``row``, ``col`` (0..2; (1, 1) is the
    centre), ``kept`` (kept weights at that position, over all output × input channel pairs), ``total`` (those
    pairs) and ``kept_fraction`` (kept / total). Layers in module order, positions row-major. Masks as in
    :func:`kept_masks`. A model without 3×3 convolutions gives an empty table.

    Example:
        >>> import torch
        >>> net = torch.nn.Conv2d(2, 4, 3)
        >>> centre = torch.zeros(4, 2, 3, 3, dtype=torch.bool)
        >>> centre[:, :, 1, 1] = True
        >>> table = kernel_positions(net, {"weight": centre})
        >>> table.pivot(index="row", columns="col", values="kept_fraction").values.tolist()
        [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    kept = kept_masks(model, masks, sparsity)
    rows = []
    for name, module in _modules_by_weight(model).items():
        if not isinstance(module, nn.Conv2d) or tuple(module.kernel_size) != (3, 3):
            continue
        m = kept[name]
        total = m.shape[0] * m.shape[1]
        counts = m.sum(dim=(0, 1))
        for r in range(3):
            for c in range(3):
                k = int(counts[r, c])
                rows.append(dict(layer=name, row=r, col=c, kept=k, total=total,
                                 kept_fraction=k / total if total else float("nan")))
    return pd.DataFrame(rows, columns=["layer", "row", "col", "kept", "total", "kept_fraction"])


def dead_units(model: nn.Module, masks: Masks | None = None, sparsity: float | None = None) -> pd.DataFrame:
    """Units that lost all their kept weights, per prunable layer (module order).

    Output side: ``units`` (conv filters = output channels, linear neurons = output rows), ``dead`` (units none of
    whose weights is kept) and ``dead_fraction``. Input side: ``inputs`` (input channels / input features),
    ``dead_inputs`` (inputs that no kept weight reads) and ``dead_input_fraction``. Grouped convolutions count each
    input channel within its own group. Also ``layer`` and ``kind``. Masks as in :func:`kept_masks`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 4, bias=False)
        >>> mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]).bool()
        >>> dead_units(net, {"weight": mask})[["units", "dead", "inputs", "dead_inputs"]].values.tolist()
        [[4, 2, 3, 1]]
    """
    kept = kept_masks(model, masks, sparsity)
    rows = []
    for name, module in _modules_by_weight(model).items():
        m = kept[name]
        units = m.shape[0]
        alive_out = m.reshape(units, -1).any(dim=1)
        if isinstance(module, nn.Conv2d):
            g = module.groups
            alive_in = m.reshape(g, units // g, m.shape[1], -1).any(dim=3).any(dim=1).reshape(-1)
        else:
            alive_in = m.any(dim=0)
        inputs = alive_in.numel()
        dead, dead_in = int((~alive_out).sum()), int((~alive_in).sum())
        rows.append(dict(layer=name, kind=_kind(module), units=units, dead=dead,
                         dead_fraction=dead / units if units else float("nan"), inputs=inputs, dead_inputs=dead_in,
                         dead_input_fraction=dead_in / inputs if inputs else float("nan")))
    return pd.DataFrame(rows, columns=["layer", "kind", "units", "dead", "dead_fraction", "inputs", "dead_inputs",
                                       "dead_input_fraction"])


def image_layer(model: nn.Module, features: int | None) -> tuple[str, nn.Linear] | None:
    """The model's first prunable layer when it is a Linear layer reading ``features`` inputs (any count when
    None): the layer that reads the flattened image. A later Linear layer reads hidden features, not pixels."""
    first = next(iter(_modules_by_weight(model).items()), None)
    if first is None or not isinstance(first[1], nn.Linear):
        return None
    return first if features is None or first[1].in_features == features else None


def infer_image_shape(model: nn.Module) -> tuple[int, int, int]:
    """A plausible (C, H, W) of the square image that the model's first (Linear) layer reads flattened:
    1 channel when its input count is a square number, else 3 channels when a third of it is.

    Example:
        >>> import sparselab as sl
        >>> infer_image_shape(sl.models.create("lenet_300_100", num_classes=10))
        (1, 28, 28)
    """
    found = image_layer(model, None)
    if found is None:
        raise ConfigError(f"{type(model).__name__} does not start with a Linear layer that reads a flattened "
                          f"image (its first Conv2d/Linear layer is a convolution)")
    n = found[1].in_features
    for chans in (1, 3):
        side = math.isqrt(n // chans)
        if n % chans == 0 and side >= 1 and side * side * chans == n:
            return chans, side, side
    raise ConfigError(f"cannot tell the image shape read by {found[0]} ({n} input features are neither a "
                      f"square nor 3 × a square); pass image_shape=(C, H, W)")


def input_pixel_map(model: nn.Module, masks: Masks | None = None, sparsity: float | None = None,
                    image_shape: tuple[int, int, int] | None = None, fraction: bool = False) -> torch.Tensor:
    """Kept weights per input pixel of the first Linear layer that reads the flattened image.

    The layer is the model's first prunable layer, a Linear layer whose ``in_features`` equal C·H·W; its input
    index is ``c·H·W + h·W + w`` (``torch.flatten`` of a C×H×W image). Returns an (H, W) tensor: the number
    of kept weights reading each pixel, summed over channels and output neurons, or with ``fraction=True`` that
    count divided by C × out_features (float). ``image_shape`` defaults to :func:`infer_image_shape`. Masks as in
    :func:`kept_masks`. Raises :class:`~sparselab.errors.ConfigError` when no such layer exists.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> mask = torch.zeros(3, 4, dtype=torch.bool)
        >>> mask[:, 3] = True
        >>> mask[0, 0] = True
        >>> input_pixel_map(net, {"1.weight": mask}, image_shape=(1, 2, 2)).tolist()
        [[1, 0], [0, 3]]
    """
    check_bool("fraction", fraction)
    c, h, w = infer_image_shape(model) if image_shape is None else _image_shape(image_shape)
    found = image_layer(model, c * h * w)
    if found is None:
        first = next(iter(_modules_by_weight(model).items()), None)
        what = ("it has no Conv2d or Linear layer" if first is None else
                f"its first layer {first[0]} is a convolution" if isinstance(first[1], nn.Conv2d) else
                f"its first layer {first[0]} reads {first[1].in_features} input features")
        raise ConfigError(f"{type(model).__name__} has no Linear layer that reads a flattened {c}×{h}×{w} image "
                          f"({c * h * w} input features, as its first layer): {what}")
    name, module = found
    m = kept_masks(model, masks, sparsity)[name]
    counts = m.reshape(module.out_features, c, h, w).sum(dim=(0, 1))
    if fraction:
        return counts.double() / (c * module.out_features)
    return counts


def _image_shape(image_shape: Any) -> tuple[int, int, int]:
    """``image_shape`` as three positive integers (C, H, W); anything else is a :class:`ConfigError`."""
    try:
        if isinstance(image_shape, (str, bytes)):
            raise TypeError
        values = list(image_shape)
        if len(values) != 3 or any(isinstance(v, bool) for v in values):
            raise TypeError
        c, h, w = (operator.index(v) for v in values)
    except TypeError:
        raise ConfigError(f"image_shape must be (C, H, W), three positive integers, got {image_shape!r}") from None
    if min(c, h, w) < 1:
        raise ConfigError(f"image_shape must hold positive sizes, got {image_shape!r}")
    return c, h, w


# ---------------------------------------------------------------------------------------------------- ViTs
def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm-style ViT: ``model.blocks`` whose blocks have ``attn.qkv`` (fused q/k/v
    Linear), ``attn.proj``, ``attn.num_heads``, ``mlp.fc1`` and ``mlp.fc2``. Empty for any other model.

    Example:
        >>> import sparselab as sl
        >>> len(vit_blocks(sl.models.create("vit_nano_patch4_28"))), vit_blocks(torch.nn.Linear(2, 2))
        (4, [])
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        return []
    out = list(blocks.children()) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else []
    for b in out:
        attn, mlp = getattr(b, "attn", None), getattr(b, "mlp", None)
        if not (isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None),
                                                                                  nn.Linear)
                and isinstance(getattr(attn, "num_heads", None), int)
                and isinstance(getattr(mlp, "fc1", None), nn.Linear)
                and isinstance(getattr(mlp, "fc2", None), nn.Linear)):
            return []
    return out


def _weight_names(model: nn.Module) -> dict[int, str]:
    """id of each parameter → its name (a shared weight under the one name the masks use)."""
    return {id(p): name for name, p in model.named_parameters()}


def _check_finite_weights(model: nn.Module, blocks: list[nn.Module], names: dict[int, str]) -> None:
    bad = [names[id(lin.weight)] for b in blocks for lin in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)
           if not bool(torch.isfinite(lin.weight.detach()).all())]
    if bad:
        raise DivergedError(f"the weights of {_short(list(dict.fromkeys(bad)))} hold NaN or inf: their magnitudes "
                            f"are no numbers to map (pass masks= or sparsity= for kept fractions)")


@torch.no_grad()
def vit_magnitude_maps(model: nn.Module, masks: Masks | None = None,
                       sparsity: float | None = None) -> dict[str, pd.DataFrame]:
    """Per attention head and per MLP hidden neuron magnitude (or kept fraction) maps of a timm ViT.

    ``"attn"``: columns ``layer`` (block index), ``head``, ``part`` (``"q"``, ``"k"``, ``"v"``, ``"proj"``) and
    ``value``, one row per (layer, head, part). q/k/v are head ``h``'s rows ``h·d .. (h+1)·d`` of the respective
    third of ``attn.qkv.weight`` (d = head dim); proj are the columns ``h·d .. (h+1)·d`` of ``attn.proj.weight``
    that read that head's output.

    ``"mlp"``: columns ``layer``, ``neuron`` (hidden index) and ``value``, one row per hidden neuron: the weights of
    its ``mlp.fc1`` row and ``mlp.fc2`` column.

    Without ``masks``/``sparsity`` the values are magnitudes of the weights as they are: mean |w| of each head slice
    and the L1 norm (fc1 row + fc2 column) per neuron. With ``masks`` or ``sparsity`` (global magnitude masks) both
    are kept fractions of those weights instead.

    Example:
        >>> import sparselab as sl
        >>> maps = vit_magnitude_maps(sl.models.create("vit_nano_patch4_28"), sparsity=0.9)
        >>> len(maps["attn"]), len(maps["mlp"])  # 4 layers × 4 heads × 4 parts, 4 layers × 256 neurons
        (64, 1024)
    """
    blocks = vit_blocks(model)
    if not blocks:
        raise ConfigError(f"vit_magnitude_maps needs a timm VisionTransformer (blocks with attn.qkv, attn.proj, "
                          f"mlp.fc1, mlp.fc2); got {type(model).__name__}")
    use_masks = masks is not None or sparsity is not None
    kept = kept_masks(model, masks, sparsity) if use_masks else None
    names = _weight_names(model)

    def values(module: nn.Linear) -> torch.Tensor:
        if kept is not None:
            return kept[names[id(module.weight)]].double()
        return module.weight.detach().abs().double().cpu()

    if kept is None:
        _check_finite_weights(model, blocks, names)

    attn_rows, mlp_rows = [], []
    for layer, block in enumerate(blocks):
        attn, mlp = block.attn, block.mlp
        heads = attn.num_heads
        qkv, proj = values(attn.qkv), values(attn.proj)
        if qkv.shape[0] % (3 * heads) or proj.shape[1] % heads:
            raise ConfigError(f"block {layer}: attn.qkv has {qkv.shape[0]} outputs and attn.proj "
                              f"{proj.shape[1]} inputs, not divisible into q/k/v of {heads} heads")
        d = qkv.shape[0] // (3 * heads)
        parts = qkv.reshape(3, heads, d, qkv.shape[1])  # timm: qkv(x).reshape(B, N, 3, heads, d)
        proj_heads = proj.reshape(proj.shape[0], heads, proj.shape[1] // heads)
        for h in range(heads):
            for p, part in enumerate(("q", "k", "v")):
                attn_rows.append((layer, h, part, float(parts[p, h].mean())))
            attn_rows.append((layer, h, "proj", float(proj_heads[:, h].mean())))
        fc1, fc2 = values(mlp.fc1), values(mlp.fc2)
        per_neuron = reduce_gates({"qkv": qkv, "proj": proj, "fc1": fc1, "fc2": fc2}, d)["mlp_hid"]
        if kept is not None:
            per_neuron = per_neuron / (fc1.shape[1] + fc2.shape[0])
        mlp_rows.extend((layer, i, float(v)) for i, v in enumerate(per_neuron.tolist()))
    return {"attn": pd.DataFrame(attn_rows, columns=["layer", "head", "part", "value"]),
            "mlp": pd.DataFrame(mlp_rows, columns=["layer", "neuron", "value"])}


@torch.no_grad()
def vit_pattern_summary(model: nn.Module, masks: Masks | None = None, sparsity: float | None = None) -> dict:
    """Numbers that say where the kept weights of a sparse timm ViT sit (computed from its keep masks):

    - ``attn_kept`` / ``mlp_kept``: kept fraction of the attention (qkv + proj) and MLP (fc1 + fc2) weights;
    - ``depth_rho``: Spearman correlation of each block's kept fraction with its depth (negative: deep blocks lose
      more); ``per_block``: the kept fraction per block, attention and MLP;
    - ``head_spread``: mean over blocks of (largest − smallest) kept fraction among its heads, a head's fraction
      counted over all its weights (its q, k and v rows of ``attn.qkv`` and its columns of ``attn.proj``; 0: heads
      thinned alike);
    - ``dead_neurons``: share of MLP hidden neurons with no kept weight in fc1's row nor fc2's column;
    - ``unread_channels``: share of residual-stream channels (inputs of qkv and fc1) that no block reads any more,
      and ``channel_gini``: how unevenly the kept input weights spread over the channels (0 even, →1 few).

    Example:
        >>> import sparselab as sl
        >>> s = vit_pattern_summary(sl.models.create("vit_nano_patch4_28"), sparsity=0.9)
        >>> 0 < s["attn_kept"] < 1 and 0 < s["mlp_kept"] < 1
        True
    """
    from scipy.stats import spearmanr

    blocks = vit_blocks(model)
    if not blocks:
        raise ConfigError(f"vit_pattern_summary needs a timm VisionTransformer; got {type(model).__name__}")
    kept = kept_masks(model, masks, sparsity)
    names = _weight_names(model)

    def k(module: nn.Linear) -> torch.Tensor:
        return kept[names[id(module.weight)]]

    rows, attn_n, attn_k, mlp_n, mlp_k, spreads, dead, neurons = [], 0, 0, 0, 0, [], 0, 0
    reads = None
    for layer, b in enumerate(blocks):
        qkv, proj, fc1, fc2 = k(b.attn.qkv), k(b.attn.proj), k(b.mlp.fc1), k(b.mlp.fc2)
        a_n, a_k = qkv.numel() + proj.numel(), int(qkv.sum() + proj.sum())
        m_n, m_k = fc1.numel() + fc2.numel(), int(fc1.sum() + fc2.sum())
        attn_n, attn_k, mlp_n, mlp_k = attn_n + a_n, attn_k + a_k, mlp_n + m_n, mlp_k + m_k
        rows.append({"block": layer, "attn": a_k / a_n, "mlp": m_k / m_n, "all": (a_k + m_k) / (a_n + m_n)})
        heads = b.attn.num_heads
        d = qkv.shape[0] // (3 * heads)
        # a head's kept fraction over all its weights: its q/k/v rows hold three times as many as its proj columns
        head_kept = (qkv.reshape(3, heads, d, -1).double().sum(dim=(0, 2, 3))
                     + proj.reshape(proj.shape[0], heads, -1).double().sum(dim=(0, 2)))
        per_head = head_kept / (3 * d * qkv.shape[1] + proj.shape[0] * d)
        spreads.append(float(per_head.max() - per_head.min()))
        per_gate = reduce_gates({"qkv": qkv.long(), "proj": proj.long(), "fc1": fc1.long(), "fc2": fc2.long()}, d)
        alive = per_gate["mlp_hid"] > 0
        dead, neurons = dead + int((~alive).sum()), neurons + alive.numel()
        col = per_gate["attn_in"] + per_gate["mlp_in"]
        reads = col if reads is None else reads + col
    per_block = pd.DataFrame(rows)
    # kept fractions equal in every block have no ranking to correlate (scipy would warn and give NaN)
    rho = (float(spearmanr(per_block.block, per_block["all"]).statistic)
           if len(per_block) > 2 and per_block["all"].nunique() > 1 else math.nan)
    reads = reads.double()
    sorted_reads = torch.sort(reads).values
    n = len(sorted_reads)
    total = float(sorted_reads.sum())
    gini = (float((2 * torch.arange(1, n + 1, dtype=torch.float64) - n - 1).mul(sorted_reads).sum()) / (n * total)
            if total > 0 else math.nan)
    return {"attn_kept": attn_k / attn_n, "mlp_kept": mlp_k / mlp_n, "depth_rho": rho, "per_block": per_block,
            "head_spread": sum(spreads) / len(spreads), "dead_neurons": dead / neurons,
            "unread_channels": float((reads == 0).double().mean()), "channel_gini": gini}


def exchange_numbers(history) -> dict[str, float]:
    """From an ART History: the share of the kept set that was new after the first and after the last ART epoch
    (exploration → exploitation) and the number of ART epochs.

    Example:
        >>> sorted(exchange_numbers(art_history))  # doctest: +SKIP
        ['ART epochs', 'entered after first ART epoch', 'entered after last ART epoch']
    """
    from .history import as_history, select_run

    metrics = select_run(as_history(history, "exchange_numbers"))["metrics"]  # a merged History: one run only
    m = metrics.query("split == 'train'").pivot_table(index="step", columns="name", values="value")
    m = m.dropna(subset=["kept_entered"]) if "kept_entered" in m else m.iloc[0:0]
    epochs = metrics.query("name == 'art_epoch'").value
    return {"entered after first ART epoch": float(m.kept_entered.iloc[0]) if len(m) else math.nan,
            "entered after last ART epoch": float(m.kept_entered.iloc[-1]) if len(m) else math.nan,
            "ART epochs": float(epochs.max() + 1) if len(epochs) else math.nan}


def kernel_depth_summary(positions: pd.DataFrame) -> dict[str, float]:
    """From :func:`kernel_positions`: the Spearman ρ of the mean kept fraction against conv depth, and the largest
    and mean spread (max − min) of the kept fraction between the nine kernel positions within a layer."""
    from scipy.stats import spearmanr

    per_layer = positions.groupby("layer", sort=False).kept_fraction.mean()
    spread = positions.groupby("layer", sort=False).kept_fraction.agg(lambda v: v.max() - v.min())
    rho = (float(spearmanr(range(len(per_layer)), per_layer.to_numpy()).statistic)
           if len(per_layer) >= 3 and per_layer.nunique() > 1 else math.nan)
    return {"depth_rho": rho, "layers": float(len(per_layer)), "max_spread": float(spread.max()),
            "mean_spread": float(spread.mean())}


def vit_pattern_table(runs: Iterable) -> pd.DataFrame:
    """:func:`vit_pattern_summary` of several sparse ViTs as a table: one row per run, indexed by (``method``,
    ``sparsity``), one column per number (``per_block`` left out). ``runs`` are objects with ``method``,
    ``sparsity``, ``model`` and ``masks`` (e.g. the runs of :func:`sparselab.experiments.art.compare`; masks None:
    the model's nonzero weights count as kept).

    Example:
        >>> import sparselab as sl
        >>> from types import SimpleNamespace
        >>> model = sl.models.create("vit_nano_patch4_28")
        >>> run = SimpleNamespace(method="magnitude", sparsity=0.9, model=model, masks=kept_masks(model, sparsity=0.9))
        >>> table = vit_pattern_table([run])
        >>> table.index.names, "per_block" in table
        (FrozenList(['method', 'sparsity']), False)
    """
    rows = {}
    for run in runs:
        key = (run.method, run.sparsity)
        if key in rows:
            raise ConfigError(f"two runs of {run.method!r} at sparsity {run.sparsity}: the table has one row per "
                              f"method and sparsity (give one seed's runs)")
        summary = vit_pattern_summary(run.model, run.masks)
        rows[key] = {name: float(v) for name, v in summary.items() if name != "per_block"}
    if not rows:
        raise ConfigError("vit_pattern_table needs at least one run")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["method", "sparsity"])
    return table
