"""The JSON-able description of a compact ViT: :func:`compact_spec` (the base model's constructor arguments and
the kept indices of every layer and gate), the checks and helpers that derive those arguments from a model
(:func:`_base_kwargs`, :func:`_norm_kind`, :func:`_act_name`), and :func:`_build`, which turns a description back
into a compact model (weights not yet loaded); plus the format constants (``SPEC_FORMAT``, ``SPEC_VERSION``) and the
file names :mod:`~sparselab.structure.compact.saving` writes (``SPEC_FILE``, ``WEIGHTS_FILE``).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..vit import GATES, QKV_UNITS, Masks, ViTStructure, is_identity
from .slicing import _check_block, _check_masks, _kept, compact_vit, pad_masks

SPEC_FORMAT = "sparselab-compact-vit"
SPEC_VERSION = 1
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"


# ====================================================================== spec (saving and loading: saving.py)
def _norm_kind(model: nn.Module) -> tuple[str, float]:
    from timm.layers import LayerNorm as TimmLayerNorm

    kinds, eps = set(), set()
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            if type(m) not in (nn.LayerNorm, TimmLayerNorm):
                raise ConfigError(f"{name} is {type(m).__name__}; compact specs support LayerNorm only")
            kinds.add("timm" if type(m) is TimmLayerNorm else "torch")
            eps.add(float(m.eps))
    if len(kinds) > 1 or len(eps) > 1:
        raise ConfigError(f"the model mixes LayerNorm types or eps ({sorted(kinds)}, {sorted(eps)}); "
                          "compact specs need one norm layer for the whole model")
    return (kinds.pop() if kinds else "timm"), (eps.pop() if eps else 1e-6)


#: timm's activation names (``get_act_layer``); a compact spec stores the name whose class the model uses
ACT_NAMES = ("gelu", "gelu_tanh", "quick_gelu", "silu", "swish", "mish", "relu", "relu6", "leaky_relu", "elu",
             "prelu", "celu", "selu", "sigmoid", "tanh", "hard_sigmoid", "hard_swish", "hard_mish", "identity")


def _act_name(act: nn.Module) -> str | None:
    """The ``act_layer`` argument that makes VisionTransformer build an activation computing like ``act``: a name
    that timm's ``get_act_layer`` (which VisionTransformer calls) resolves to ``act``'s class."""
    from timm.layers import get_act_layer

    if type(act) is nn.GELU:
        if act.approximate == "none":
            return None  # VisionTransformer's default
        if act.approximate == "tanh":
            return "gelu_tanh"
    else:
        for name in ACT_NAMES:
            try:
                layer = get_act_layer(name)
            except (KeyError, ValueError, TypeError):  # a name this timm version lacks
                continue
            if layer is type(act):
                return name
    raise ConfigError(f"MLP activation {act!r} has no timm name; compact specs cannot rebuild it")


def _base_kwargs(model: nn.Module) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(class name, VisionTransformer kwargs, norm description) that rebuild ``model``'s architecture."""
    from timm.layers import DropPath, LayerScale, PatchDropout, PatchEmbed
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if type(model) not in (VisionTransformer, VisionTransformerDistilled):
        raise ConfigError(f"compact specs support timm VisionTransformer and VisionTransformerDistilled, "
                          f"not {type(model).__name__}")
    structure = ViTStructure(model)
    for i, blk in enumerate(structure.layers):
        _check_block(i, blk)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not is_identity(getattr(pe, "norm", None)):
        raise ConfigError("compact specs support timm's PatchEmbed without a norm layer only")
    b0 = structure.layers[0]
    dim = structure.embed_dim
    heads, hidden = structure.num_heads[0], structure.hidden[0]
    if len(set(structure.num_heads)) > 1 or len(set(structure.hidden)) > 1 or len(set(structure.head_dim)) > 1:
        raise ConfigError("compact specs need the same heads and MLP width in every layer")
    if structure.head_dim[0] * heads != dim:
        raise ConfigError("compact specs need head_dim * num_heads == embed_dim")
    mlp_ratio = hidden / dim
    if int(dim * mlp_ratio) != hidden:
        raise ConfigError(f"MLP width {hidden} cannot be written as embed_dim * mlp_ratio")

    def flag(fn) -> bool:
        values = {bool(fn(b)) for b in structure.layers}
        if len(values) > 1:
            raise ConfigError("compact specs need the same block options (biases, qk-norm, LayerScale) in every "
                              "layer")
        return values.pop()

    qkv_bias = flag(lambda b: b.attn.qkv.bias is not None)
    proj_bias = flag(lambda b: b.attn.proj.bias is not None)
    if any((b.mlp.fc1.bias is not None) != proj_bias or (b.mlp.fc2.bias is not None) != proj_bias
           for b in structure.layers):
        raise ConfigError("compact specs need MLP biases that match the attention projection bias")
    qk_norm = flag(lambda b: not is_identity(b.attn.q_norm))
    layer_scale = flag(lambda b: isinstance(b.ls1, LayerScale))
    for b in structure.layers:
        for ls in (b.ls1, b.ls2):
            if not isinstance(ls, LayerScale if layer_scale else nn.Identity):
                raise ConfigError("compact specs need LayerScale on every branch or on none")
    norm_kind, norm_eps = _norm_kind(model)
    last = structure.layers[-1]
    fc_norm = not is_identity(model.fc_norm)
    kwargs: dict[str, Any] = dict(
        img_size=list(pe.img_size), patch_size=list(pe.patch_size), in_chans=int(pe.proj.in_channels),
        num_classes=int(model.num_classes), global_pool=str(model.global_pool), embed_dim=dim,
        depth=structure.depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
        proj_bias=proj_bias, init_values=float(getattr(b0.ls1, "init_values", 1.0)) if layer_scale else None,
        class_token=bool(model.has_class_token), pos_embed="learn" if model.pos_embed is not None else "none",
        no_embed_class=bool(model.no_embed_class), reg_tokens=int(model.num_reg_tokens),
        pre_norm=not is_identity(model.norm_pre), final_norm=fc_norm or not is_identity(model.norm),
        fc_norm=fc_norm, pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)),
        dynamic_img_size=bool(model.dynamic_img_size), dynamic_img_pad=bool(getattr(pe, "dynamic_img_pad", False)),
        drop_rate=float(model.head_drop.p), pos_drop_rate=float(model.pos_drop.p),
        patch_drop_rate=float(model.patch_drop.prob) if isinstance(model.patch_drop, PatchDropout) else 0.0,
        proj_drop_rate=float(b0.attn.proj_drop.p), attn_drop_rate=float(b0.attn.attn_drop.p),
        drop_path_rate=float(last.drop_path1.drop_prob) if isinstance(last.drop_path1, DropPath) else 0.0,
        act_layer=_act_name(b0.mlp.act),
    )
    if model.global_pool == "prr":
        kwargs.pop("pool_include_prefix")  # set by the constructor
    return type(model).__name__, kwargs, {"type": norm_kind, "eps": norm_eps}


def compact_spec(model: nn.Module, masks: Masks | None = None, pad_to: int = 1, qkv_unit: str = "dim"
                 ) -> dict[str, Any]:
    """A JSON-able description of ``compact_vit(model, masks, pad_to, qkv_unit)``: the base model's constructor
    arguments, what one ``attn_qkv`` element is, the kept widths and the kept indices of every layer and gate (what
    :func:`load_compact` needs to rebuild it; with padding, the padded ones: the zeroed weights travel in the
    weights file).

    ``model`` is the dense (base) model the masks refer to; ``None`` masks mean all kept.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> spec = compact_spec(model, {0: {"mlp_hid": torch.arange(256) < 64}})
        >>> spec["architecture"], spec["kwargs"]["embed_dim"], spec["layers"][0]["kept"]["mlp_hid"]
        ('VisionTransformer', 64, 64)
    """
    arch, kwargs, norm = _base_kwargs(model)
    structure = ViTStructure(model, qkv_unit)
    full, _ = pad_masks(structure, _check_masks(structure, masks), pad_to)
    dtype = next(model.parameters()).dtype
    layers = []
    for i in range(structure.depth):
        layers.append({
            "sizes": structure.gate_sizes(i),
            "kept": {g: int(full[i][g].sum()) for g in GATES},
            "indices": {g: _kept(full[i][g]).tolist() for g in GATES},
        })
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "architecture": arch, "kwargs": kwargs, "norm": norm,
            "dtype": str(dtype).replace("torch.", ""), "qkv_unit": qkv_unit, "layers": layers}


def _spec_error(kind: type[Exception], msg: str) -> Exception:
    return kind(f"compact spec: {msg}")


def _whole(value: Any, what: str, error: type[Exception]) -> Any:
    """``value`` if it is a whole number or a list of them (JSON integers, not floats or booleans)."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise _spec_error(error, f"{what} must be {'a list of ' if isinstance(value, list) else 'an '}"
                                 f"integer{'s' if isinstance(value, list) else ''}, got {value!r:.80}")
    return value


def _masks_from_spec(spec: Mapping[str, Any], error: type[Exception]) -> dict[int, dict[str, torch.Tensor]]:
    masks = {}
    for i, layer in enumerate(spec["layers"]):
        per = {}
        for g in GATES:
            n = _whole(layer["sizes"][g], f"layer {i}, gate {g!r} size", error)
            if n < 1:
                raise _spec_error(error, f"layer {i}, gate {g!r} has size {n}; sizes are >= 1")
            _whole(layer["kept"][g], f"layer {i}, gate {g!r} kept width", error)
            idx = torch.as_tensor(_whole(layer["indices"][g], f"layer {i}, gate {g!r} indices", error),
                                  dtype=torch.long)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise _spec_error(error, f"layer {i}, gate {g!r} has indices outside 0..{n - 1}")
            m = torch.zeros(n, dtype=torch.bool)
            m[idx] = True
            if int(m.sum()) != int(layer["kept"][g]) or int(m.sum()) != idx.numel():
                raise _spec_error(error, f"layer {i}, gate {g!r}: kept width does not match its indices")
            per[g] = m
        masks[i] = per
    return masks


def _build(spec: Mapping[str, Any], error: type[Exception] = CheckpointError,
           device: torch.device | str = "cpu") -> nn.Module:
    """The compact model described by ``spec`` (weights not meaningful until loaded)."""
    from timm.layers import LayerNorm as TimmLayerNorm
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, Mapping) else type(spec).__name__
        raise _spec_error(error, f"not a {SPEC_FORMAT} description (format {found!r})")
    if spec.get("version") != SPEC_VERSION or isinstance(spec.get("version"), bool):
        raise _spec_error(error, f"version {spec.get('version')!r} is not supported (expected {SPEC_VERSION})")
    classes = {"VisionTransformer": VisionTransformer, "VisionTransformerDistilled": VisionTransformerDistilled}
    try:
        cls = classes[spec["architecture"]]
        kwargs = dict(spec["kwargs"])
        norm = spec["norm"]
        if norm["type"] not in ("timm", "torch"):
            raise _spec_error(error, f"norm type {norm['type']!r} is not one of timm, torch")
        eps = float(norm["eps"])
        if not 0 <= eps < float("inf"):
            raise _spec_error(error, f"norm eps must be a finite number >= 0, got {norm['eps']!r}")
        norm_cls = TimmLayerNorm if norm["type"] == "timm" else nn.LayerNorm
        kwargs["norm_layer"] = functools.partial(norm_cls, eps=eps)
        for key in ("img_size", "patch_size"):
            kwargs[key] = tuple(kwargs[key])
        dtype = getattr(torch, spec["dtype"], None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise _spec_error(error, f"dtype {spec['dtype']!r} is not a floating-point torch dtype")
        qkv_unit = spec.get("qkv_unit", "dim")  # specs written before head pruning existed prune head dimensions
        if qkv_unit not in QKV_UNITS:
            raise _spec_error(error, f"qkv_unit {qkv_unit!r} is not one of {', '.join(QKV_UNITS)}")
        masks = _masks_from_spec(spec, error)
        if len(masks) != int(kwargs["depth"]):
            raise _spec_error(error, f"{len(masks)} layer masks for depth {kwargs['depth']}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, (CheckpointError, ConfigError)):
            raise
        raise _spec_error(error, f"malformed ({type(exc).__name__}: {exc})") from None
    try:
        base = cls(**kwargs, weight_init="skip", device=device, dtype=dtype)
        return compact_vit(base, masks, qkv_unit=qkv_unit)
    except ConfigError as exc:
        raise _spec_error(error, str(exc)) from None
    except CheckpointError:
        raise
    # timm's constructor checks its arguments with asserts, lookups, divisions and tensor shapes
    except (TypeError, ValueError, AssertionError, ArithmeticError, LookupError, RuntimeError) as exc:
        raise _spec_error(error, f"cannot build the model ({type(exc).__name__}: {exc})") from None
