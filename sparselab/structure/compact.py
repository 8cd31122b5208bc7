"""Physically smaller Vision Transformers from structured masks, and saving/loading them.

:func:`compact_vit` turns a timm ``VisionTransformer`` plus boolean gate masks (see
:mod:`sparselab.structure.vit`) into a new model whose Linear layers only hold the kept rows and columns and whose
outputs equal those of the hard-masked model (the model with :class:`~sparselab.structure.gates.Gates` attached
and ``gates.set_hard(masks)``). Each block stays a timm ``Block``; its parts become:

=========  ===========================================================================================
part       in the compact block
=========  ===========================================================================================
``norm1``  ``Sequential(LayerNorm over all D channels, SelectChannels(kept attn_in))``
``attn``   a timm ``Attention`` with ``kept attn_in`` inputs, the same number of heads, ``kept attn_qkv``
           dims per head and ``kept attn_out`` outputs (q rows rescaled so the attention scale is unchanged;
           with qk-norm, q_norm/k_norm become :class:`ZeroPaddedLayerNorm`)
``ls1``    ``Sequential(ScatterChannels(kept attn_out, D), LayerScale or Identity)``
``norm2``  ``Sequential(LayerNorm over all D channels, SelectChannels(kept mlp_in))``
``mlp``    a timm ``Mlp`` with ``kept mlp_in`` inputs, ``kept mlp_hid`` hidden and ``kept mlp_out`` outputs
``ls2``    ``Sequential(ScatterChannels(kept mlp_out, D), LayerScale or Identity)``
=========  ===========================================================================================

Where a gate keeps every channel, its ``SelectChannels``/``ScatterChannels`` is an ``Identity`` (no copy).
A branch that keeps nothing in one of its gates no longer depends on its input: its norm and LayerScale become
``Identity`` and the branch becomes a :class:`ConstantBranch` that adds the (LayerScale-folded) constant the
masked branch produces, held only for the kept output channels (zero values when ``attn_out``/``mlp_out`` is
empty).

:func:`compact_spec` describes a compact model as a JSON-able dict (the base model's constructor arguments and
the kept indices); :func:`save_compact` / :func:`load_compact` write and read ``spec.json`` plus
``model.safetensors``. :func:`compact_stats` counts parameters and multiply-accumulates.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
    >>> masks = {0: {"mlp_hid": torch.arange(256) < 100}}
    >>> small = compact_vit(model, masks)
    >>> small.blocks[0].mlp.fc1.out_features
    100
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..atomic import atomic_write
from ..errors import CheckpointError, ConfigError
from ..models.checkpoints import state_dict_mismatch
from .vit import GATES, Masks, ViTStructure, is_identity

SPEC_FORMAT = "sparselab-compact-vit"
SPEC_VERSION = 1
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


# ====================================================================== small modules
class SelectChannels(nn.Module):
    """Keep the channels ``index`` of the last dimension.

    Example:
        >>> SelectChannels(torch.tensor([0, 2]))(torch.tensor([[1., 2., 3.]])).tolist()
        [[1.0, 3.0]]
    """

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.index)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} channels"


class ScatterChannels(nn.Module):
    """Place the last dimension of the input at channels ``index`` of a zero tensor with ``dim`` channels.

    Example:
        >>> ScatterChannels(torch.tensor([0, 2]), 3)(torch.tensor([[1., 2.]])).tolist()
        [[1.0, 0.0, 2.0]]
    """

    def __init__(self, index: torch.Tensor, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:-1], self.dim)
        return out.index_copy_(out.dim() - 1, self.index, x)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} -> {self.dim} channels"


class ZeroPaddedLayerNorm(nn.Module):
    """LayerNorm over ``full`` channels of which only ``kept`` are present; the missing ones count as zeros.

    Computes the statistics of the zero-padded vector (``mean = sum / full``, ``var = (sum((x - mean)^2) +
    (full - kept) * mean^2) / full``), normalises the kept channels and applies the (already sliced) affine
    ``weight``/``bias`` and then ``output_scale``. This equals a LayerNorm over the padded vector followed by
    dropping the padded channels.

    Example:
        >>> x = torch.tensor([[1., 2.]])
        >>> ln = nn.LayerNorm(3, elementwise_affine=False)
        >>> padded = ln(torch.tensor([[1., 2., 0.]]))[:, :2]
        >>> torch.allclose(ZeroPaddedLayerNorm(2, 3, eps=ln.eps)(x), padded)
        True
    """

    def __init__(self, kept: int, full: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 eps: float = 1e-5, output_scale: float = 1.0):
        super().__init__()
        if not 0 < kept <= full:
            raise ConfigError(f"ZeroPaddedLayerNorm needs 0 < kept <= full, got kept={kept}, full={full}")
        self.kept, self.full, self.eps, self.output_scale = int(kept), int(full), float(eps), float(output_scale)
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None:
                if t.shape != (kept,):
                    raise ConfigError(f"ZeroPaddedLayerNorm {name} must have shape ({kept},), got {tuple(t.shape)}")
                t = nn.Parameter(t.detach().clone())
            setattr(self, name, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.sum(-1, keepdim=True) / self.full
        d = x - mean
        var = ((d * d).sum(-1, keepdim=True) + (self.full - self.kept) * mean * mean) / self.full
        y = d * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        if self.output_scale != 1.0:
            y = y * self.output_scale
        return y

    def extra_repr(self) -> str:
        return f"{self.kept} of {self.full}, eps={self.eps}" + (
            f", output_scale={self.output_scale:.6g}" if self.output_scale != 1.0 else "")


class ConstantBranch(nn.Module):
    """A residual branch whose output does not depend on its input: ``value`` at channels ``index`` of ``dim``
    channels (zeros elsewhere), broadcast over all leading dimensions of the input.

    Example:
        >>> branch = ConstantBranch(torch.tensor([1]), torch.tensor([5.]), 3)
        >>> branch(torch.randn(2, 4, 3)).shape, branch(torch.randn(1, 1, 3))[0, 0].tolist()
        (torch.Size([2, 4, 3]), [0.0, 5.0, 0.0])
    """

    def __init__(self, index: torch.Tensor, value: torch.Tensor, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).clone(), persistent=False)
        self.value = nn.Parameter(value.detach().clone().reshape(-1))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        full = self.value.new_zeros(self.dim).index_copy(0, self.index, self.value)
        return full.to(x.dtype).expand(*x.shape[:-1], self.dim)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} of {self.dim} channels"


# ====================================================================== masks
def _check_masks(structure: ViTStructure, masks: Masks | None) -> dict[int, dict[str, torch.Tensor]]:
    """Validated boolean CPU masks for every layer and gate (missing layers/gates: all kept)."""
    full = structure.full_masks()
    if masks is None:
        return full
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks must be a dict layer -> gate -> boolean vector, got {type(masks).__name__}")
    for key, per in masks.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"masks keys must be layer numbers, got {key!r}") from None
        if not 0 <= layer < structure.depth:
            raise ConfigError(f"masks name layer {layer}, but the model has {structure.depth} layers "
                              f"(0..{structure.depth - 1})")
        if not isinstance(per, Mapping):
            raise ConfigError(f"masks for layer {layer} must be a dict gate -> boolean vector")
        sizes = structure.gate_sizes(layer)
        for gate, m in per.items():
            if gate not in sizes:
                raise ConfigError(f"masks for layer {layer} name unknown gate {gate!r}; gates: {', '.join(GATES)}")
            t = torch.as_tensor(m).detach().cpu()
            if t.dim() != 1 or t.numel() != sizes[gate]:
                raise ConfigError(f"mask for layer {layer}, gate {gate!r} has shape {tuple(t.shape)}; "
                                  f"the model's gate has {sizes[gate]} entries")
            if t.dtype != torch.bool:
                if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
                    raise ConfigError(f"mask for layer {layer}, gate {gate!r} must be boolean (or 0/1 values)")
                t = t != 0
            full[layer][gate] = t.clone()
    return full


def _kept(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask, as_tuple=False).reshape(-1)


# ====================================================================== building blocks
def _clear_hooks(module: nn.Module) -> nn.Module:
    for m in module.modules():
        for name in _HOOK_DICTS:
            d = getattr(m, name, None)
            if d is not None:
                d.clear()
    return module


def _fresh(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` without any forward/backward hooks."""
    return _clear_hooks(copy.deepcopy(module))


def _copy_except(module: nn.Module, skip: list[nn.Module]) -> nn.Module:
    """Deep copy of ``module`` where the submodules in ``skip`` are replaced by placeholders (not copied)."""
    memo = {id(m): nn.Identity() for m in skip}
    return _clear_hooks(copy.deepcopy(module, memo))


def _rows(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return w.detach().index_select(0, idx.to(w.device))


def _cols(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return w.detach().index_select(1, idx.to(w.device))


def _copy_param(dst: torch.Tensor | None, src: torch.Tensor | None, original: torch.Tensor | None) -> None:
    """Copy ``src`` (a slice of ``original``) into ``dst`` and carry over ``original.requires_grad``."""
    if dst is None:
        return
    with torch.no_grad():
        dst.copy_(src)
    dst.requires_grad_(bool(original.requires_grad))


def _qkv_rows(heads: int, head_dim: int, kept: torch.Tensor) -> torch.Tensor:
    """Rows of the fused qkv weight for head dims ``kept`` of every head in q, k and v (q first)."""
    base = torch.arange(3 * heads).unsqueeze(1) * head_dim
    return (base + kept.unsqueeze(0)).reshape(-1)


def _head_cols(heads: int, head_dim: int, kept: torch.Tensor) -> torch.Tensor:
    return (torch.arange(heads).unsqueeze(1) * head_dim + kept.unsqueeze(0)).reshape(-1)


def _constant(index: torch.Tensor, out_full: torch.Tensor, ls: nn.Module, dim: int, like: torch.Tensor) -> nn.Module:
    """ConstantBranch for a branch whose pre-LayerScale output is ``out_full`` (D channels, gated by ``index``)."""
    with torch.no_grad():
        gated = torch.zeros(dim, dtype=like.dtype, device=like.device)
        idx = index.to(like.device)
        gated[idx] = out_full[idx]
        scaled = ls.forward(gated)  # .forward: never through hooks
        value = scaled[idx]
    return ConstantBranch(idx, value, dim)


def _compact_attn(blk: nn.Module, m: dict[str, torch.Tensor], heads: int, head_dim: int, dim: int):
    """(norm1, attn, ls1) for the compact block."""
    from timm.layers import Attention

    attn = blk.attn
    ref = attn.qkv.weight
    i_in, i_hd, i_out = _kept(m["attn_in"]), _kept(m["attn_qkv"]), _kept(m["attn_out"])
    n_in, n_hd, n_out = i_in.numel(), i_hd.numel(), i_out.numel()
    qk_norm = not is_identity(attn.q_norm)
    if min(n_in, n_hd, n_out) == 0:  # the branch output no longer depends on its input
        with torch.no_grad():
            v = torch.zeros(heads * head_dim, dtype=ref.dtype, device=ref.device)
            if n_in == 0 and attn.qkv.bias is not None:  # uniform attention over identical tokens returns v
                bv = attn.qkv.bias.detach()[2 * heads * head_dim:].view(heads, head_dim)
                v = (bv * m["attn_qkv"].to(bv.device, bv.dtype)).reshape(-1)
            out = F.linear(v, attn.proj.weight.detach(),
                           None if attn.proj.bias is None else attn.proj.bias.detach())
        return nn.Identity(), _constant(i_out, out, blk.ls1, dim, ref), nn.Identity()

    new = Attention(
        dim=n_in, num_heads=heads, attn_head_dim=n_hd, dim_out=n_out, qkv_bias=attn.qkv.bias is not None,
        qk_norm=qk_norm, proj_bias=attn.proj.bias is not None, attn_drop=attn.attn_drop.p,
        proj_drop=attn.proj_drop.p, norm_layer=nn.LayerNorm if qk_norm else None,
    ).to(device=ref.device, dtype=ref.dtype)
    new.fused_attn = attn.fused_attn
    rows = _qkv_rows(heads, head_dim, i_hd)
    # timm scales q.k by head_dim**-0.5; the masked model uses the full head_dim, the compact one the kept one
    q_scale = math.sqrt(n_hd / head_dim)
    with torch.no_grad():
        w = _cols(_rows(attn.qkv.weight, rows), i_in).clone()
        b = None if attn.qkv.bias is None else _rows(attn.qkv.bias, rows).clone()
        if not qk_norm:
            nq = heads * n_hd
            w[:nq] *= q_scale
            if b is not None:
                b[:nq] *= q_scale
        _copy_param(new.qkv.weight, w, attn.qkv.weight)
        _copy_param(new.qkv.bias, b, attn.qkv.bias)
        _copy_param(new.proj.weight, _cols(_rows(attn.proj.weight, i_out), _head_cols(heads, head_dim, i_hd)),
                    attn.proj.weight)
        _copy_param(new.proj.bias, None if attn.proj.bias is None else _rows(attn.proj.bias, i_out), attn.proj.bias)
    if qk_norm:
        for name, scale in (("q_norm", q_scale), ("k_norm", 1.0)):
            new.add_module(name, _padded_norm(getattr(attn, name), i_hd, head_dim, scale, name))
    norm1 = nn.Sequential(_fresh(blk.norm1), _select(i_in.to(ref.device), dim))
    ls1 = nn.Sequential(_scatter(i_out.to(ref.device), dim), _fresh(blk.ls1))
    return norm1, new, ls1


def _select(index: torch.Tensor, dim: int) -> nn.Module:
    # all channels kept: no copy at all (indices from _kept are sorted, so a full set is the identity)
    return nn.Identity() if index.numel() == dim else SelectChannels(index)


def _scatter(index: torch.Tensor, dim: int) -> nn.Module:
    return nn.Identity() if index.numel() == dim else ScatterChannels(index, dim)


def _padded_norm(norm: nn.Module, kept: torch.Tensor, full: int, scale: float, name: str) -> ZeroPaddedLayerNorm:
    if not isinstance(norm, nn.LayerNorm):
        raise ConfigError(f"attn.{name} is {type(norm).__name__}; compaction supports LayerNorm qk-norm only")
    weight = None if norm.weight is None else _rows(norm.weight, kept)
    bias = None if getattr(norm, "bias", None) is None else _rows(norm.bias, kept)
    out_scale = scale
    if weight is not None:  # fold the q scale into the affine parameters
        weight = weight * scale
        bias = None if bias is None else bias * scale
        out_scale = 1.0
    mod = ZeroPaddedLayerNorm(kept.numel(), full, weight, bias, eps=norm.eps, output_scale=out_scale)
    for p_new, p_old in ((mod.weight, norm.weight), (mod.bias, getattr(norm, "bias", None))):
        if p_new is not None and p_old is not None:
            p_new.requires_grad_(p_old.requires_grad)
    return mod


def _compact_mlp(blk: nn.Module, m: dict[str, torch.Tensor], dim: int):
    """(norm2, mlp, ls2) for the compact block."""
    from timm.layers import Mlp

    mlp = blk.mlp
    ref = mlp.fc1.weight
    i_in, i_hid, i_out = _kept(m["mlp_in"]), _kept(m["mlp_hid"]), _kept(m["mlp_out"])
    n_in, n_hid, n_out = i_in.numel(), i_hid.numel(), i_out.numel()
    if min(n_in, n_hid, n_out) == 0:
        with torch.no_grad():
            h = torch.zeros(mlp.fc1.out_features, dtype=ref.dtype, device=ref.device)
            if n_in == 0:  # fc1 sees zeros: the hidden layer is act(bias), gated
                pre = h if mlp.fc1.bias is None else mlp.fc1.bias.detach()
                h = mlp.act.forward(pre) * m["mlp_hid"].to(ref.device, ref.dtype)
            out = F.linear(h, mlp.fc2.weight.detach(), None if mlp.fc2.bias is None else mlp.fc2.bias.detach())
        return nn.Identity(), _constant(i_out, out, blk.ls2, dim, ref), nn.Identity()

    new = Mlp(n_in, n_hid, n_out, bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None),
              drop=(mlp.drop1.p, mlp.drop2.p)).to(device=ref.device, dtype=ref.dtype)
    new.act = _fresh(mlp.act)
    with torch.no_grad():
        _copy_param(new.fc1.weight, _cols(_rows(mlp.fc1.weight, i_hid), i_in), mlp.fc1.weight)
        _copy_param(new.fc1.bias, None if mlp.fc1.bias is None else _rows(mlp.fc1.bias, i_hid), mlp.fc1.bias)
        _copy_param(new.fc2.weight, _cols(_rows(mlp.fc2.weight, i_out), i_hid), mlp.fc2.weight)
        _copy_param(new.fc2.bias, None if mlp.fc2.bias is None else _rows(mlp.fc2.bias, i_out), mlp.fc2.bias)
    norm2 = nn.Sequential(_fresh(blk.norm2), _select(i_in.to(ref.device), dim))
    ls2 = nn.Sequential(_scatter(i_out.to(ref.device), dim), _fresh(blk.ls2))
    return norm2, new, ls2


def _check_block(i: int, blk: nn.Module) -> None:
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import Block

    where = f"blocks.{i}"
    if not isinstance(blk, Block):
        raise ConfigError(f"{where} is {type(blk).__name__}; compaction supports timm's pre-norm Block only")
    if type(blk.attn) is not Attention:
        raise ConfigError(f"{where}.attn is {type(blk.attn).__name__}; compaction supports timm.layers.Attention")
    if type(blk.mlp) is not Mlp:
        raise ConfigError(f"{where}.mlp is {type(blk.mlp).__name__}; compaction supports timm.layers.Mlp")
    for name in ("ls1", "ls2"):
        if not hasattr(blk, name):
            raise ConfigError(f"{where} has no {name}; compaction needs timm's Block layout")


# ====================================================================== public API
def _require_timm_attention_widths() -> None:
    import inspect

    from timm.layers import Attention

    params = inspect.signature(Attention.__init__).parameters
    if "dim_out" not in params or "attn_head_dim" not in params:
        import timm

        raise ConfigError(f"compaction needs timm's Attention(attn_head_dim=..., dim_out=...), which timm "
                          f"{timm.__version__} lacks; upgrade timm (pip install -U timm)")


def pad_masks(structure: ViTStructure, masks: Masks, multiple: int = 8
              ) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict[str, torch.Tensor]]]:
    """Masks whose kept counts are rounded up to a multiple of ``multiple`` (capped at the gate size) by adding
    the lowest-index pruned elements, and for each layer and gate the elements so added.

    Only live branches are padded (a branch with an empty gate stays a constant), and not ``attn_qkv`` under
    qk-norm (a normalised zero is not zero). :func:`compact_vit` zeroes the weights of the added elements, which
    keeps the outputs those of the unpadded masks.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> padded, added = pad_masks(ViTStructure(model), {0: {"mlp_hid": torch.arange(256) < 61}}, 8)
        >>> int(padded[0]["mlp_hid"].sum()), added[0]["mlp_hid"].nonzero().flatten().tolist()
        (64, [61, 62, 63])
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"pad_to must be a positive integer (1: no padding), got {multiple!r}")
    full = {i: {g: masks[i][g].clone() if i in masks and g in masks[i] else torch.ones(n, dtype=torch.bool)
                for g, n in structure.gate_sizes(i).items()} for i in range(structure.depth)}
    added = {i: {g: torch.zeros_like(m) for g, m in per.items()} for i, per in full.items()}
    if multiple == 1:
        return full, added
    for i, per in full.items():
        for block in structure.blocks[2 * i:2 * i + 2]:
            if min(int(per[g].sum()) for g in block.gates) == 0:
                continue
            for g in block.gates:
                if g == "attn_qkv" and structure.qk_norm:
                    continue
                m = per[g]
                want = min(-(-int(m.sum()) // multiple) * multiple, m.numel())
                extra = torch.nonzero(~m).flatten()[:want - int(m.sum())]
                m[extra] = True
                added[i][g][extra] = True
    return full, added


@torch.no_grad()
def _zero_padding(attn: nn.Module, mlp: nn.Module, kept: Mapping[str, torch.Tensor],
                  added: Mapping[str, torch.Tensor], heads: int) -> None:
    """Zero the compact weights that belong to padding elements, so they contribute nothing."""
    def positions(g: str) -> torch.Tensor:  # where the added elements sit among the kept ones
        return torch.nonzero(added[g][_kept(kept[g])]).flatten()

    if hasattr(attn, "qkv"):
        qkv, proj, hd = attn.qkv, attn.proj, attn.head_dim
        qkv.weight[:, positions("attn_in")] = 0
        for p in positions("attn_qkv").tolist():
            rows = [c * heads * hd + h * hd + p for c in range(3) for h in range(heads)]
            qkv.weight[rows] = 0
            if qkv.bias is not None:
                qkv.bias[rows] = 0
            proj.weight[:, [h * hd + p for h in range(heads)]] = 0
        out = positions("attn_out")
        proj.weight[out] = 0
        if proj.bias is not None:
            proj.bias[out] = 0
    if hasattr(mlp, "fc1"):
        fc1, fc2 = mlp.fc1, mlp.fc2
        fc1.weight[:, positions("mlp_in")] = 0
        hid = positions("mlp_hid")
        fc1.weight[hid] = 0
        fc2.weight[:, hid] = 0
        if fc1.bias is not None:
            fc1.bias[hid] = 0
        out = positions("mlp_out")
        fc2.weight[out] = 0
        if fc2.bias is not None:
            fc2.bias[out] = 0


def compact_vit(model: nn.Module, masks: Masks | None = None, pad_to: int = 1) -> nn.Module:
    """A new, physically smaller copy of a timm Vision Transformer that computes what the hard-masked model does.

    ``pad_to=8`` (or 16) rounds every kept width of a live branch up to a multiple by taking in pruned elements
    whose weights are set to zero (see :func:`pad_masks`): the outputs stay those of the hard-masked model while the
    matrix multiplications get the shapes CPU kernels run fastest (``benchmarks/bench_compact_latency.py``), at the
    price of a few zero parameters (so the parameter count exceeds ``structure.total_params(masks)``).

    ``masks`` maps layer -> gate -> boolean vector (see :mod:`sparselab.structure.vit`); layers or gates left out
    are kept whole. ``model`` is not changed and may have :class:`~sparselab.structure.gates.Gates` attached
    (their current values are ignored: only ``masks`` count). The result shares no tensors and no hooks with
    ``model``; everything outside the blocks (patch embedding, prefix tokens, position embedding, final norms,
    heads) is copied unchanged. Parameter ``requires_grad`` flags, dropout rates and the train/eval mode are
    carried over.

    Raises:
        ConfigError: masks with unknown layers or gates, wrong sizes or non-boolean values (the message names the
            layer and gate), or blocks that are not timm ``Block``/``Attention``/``Mlp``.

    Example:
        >>> import timm, torch
        >>> from sparselab.structure import Gates, ViTStructure
        >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
        >>> structure = ViTStructure(model)
        >>> masks = structure.full_masks()
        >>> masks[1]["attn_qkv"] = torch.arange(16) < 8
        >>> masks[1]["mlp_hid"] = torch.arange(256) % 2 == 0
        >>> small = compact_vit(model, masks)
        >>> gates = Gates(structure); gates.set_hard(masks)
        >>> x = torch.randn(2, 1, 28, 28)
        >>> torch.allclose(small(x), model(x), rtol=1e-5, atol=1e-5)
        True
        >>> sum(p.numel() for p in small.parameters()) == structure.total_params(masks)
        True
    """
    _require_timm_attention_widths()
    structure = ViTStructure(model)
    full = _check_masks(structure, masks)
    for i, blk in enumerate(structure.layers):
        _check_block(i, blk)
    dim = structure.embed_dim
    full, padding = pad_masks(structure, full, pad_to)

    new_blocks = []
    for i, blk in enumerate(structure.layers):
        heads, head_dim = structure.num_heads[i], structure.head_dim[i]
        norm1, attn, ls1 = _compact_attn(blk, full[i], heads, head_dim, dim)
        norm2, mlp, ls2 = _compact_mlp(blk, full[i], dim)
        _zero_padding(attn, mlp, full[i], padding[i], heads)
        nb = _copy_except(blk, [blk.norm1, blk.attn, blk.ls1, blk.norm2, blk.mlp, blk.ls2])
        for name, mod in (("norm1", norm1), ("attn", attn), ("ls1", ls1), ("norm2", norm2), ("mlp", mlp),
                          ("ls2", ls2)):
            setattr(nb, name, mod)
        new_blocks.append(nb)

    blocks = model.blocks
    result = _copy_except(model, [blocks])
    result.blocks = type(blocks)(*new_blocks) if isinstance(blocks, nn.Sequential) else nn.Sequential(*new_blocks)
    result.train(model.training)
    return _clear_hooks(result)


def compact_stats(model: nn.Module) -> dict[str, int]:
    """Parameters and multiply-accumulates (MACs) of one forward pass on one image of a (compact or dense) ViT.

    Counted: the patch-embedding convolution (once per output position), every ``nn.Linear`` inside
    ``model.blocks`` once per token, the two attention matmuls of every timm ``Attention`` inside the blocks
    (q·k and attn·v: ``tokens^2 x heads x head_dim x 2``) and every other ``nn.Linear`` (the heads) once.
    Not counted: norms, activations, softmax, additions, LayerScale, channel select/scatter and constant
    branches. ``tokens`` is the number of patches at the configured image size plus the prefix tokens.

    Example:
        >>> import timm
        >>> s = compact_stats(timm.create_model("vit_nano_patch4_28", num_classes=10))
        >>> s["params"], s["tokens"], s["flops"] > 0
        (205066, 50, True)
    """
    from timm.layers import Attention

    if not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise ConfigError(f"{type(model).__name__} is not a timm VisionTransformer (no .patch_embed/.blocks)")
    pe = model.patch_embed
    grid = tuple(pe.grid_size)
    patches = int(grid[0] * grid[1])
    tokens = patches + int(getattr(model, "num_prefix_tokens", 1))
    macs = 0
    conv = getattr(pe, "proj", None)
    if isinstance(conv, nn.Conv2d):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        macs += conv.out_channels * (conv.in_channels // conv.groups) * k * patches
    block_modules = set()
    for m in model.blocks.modules():
        block_modules.add(id(m))
        if isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features * tokens
        elif isinstance(m, Attention):
            macs += 2 * tokens * tokens * m.num_heads * m.head_dim
    for m in model.modules():
        if id(m) not in block_modules and isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
    return {"params": sum(p.numel() for p in model.parameters()), "flops": int(macs), "tokens": tokens}


# ====================================================================== spec, save, load
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


def _act_name(act: nn.Module) -> str | None:
    """The ``act_layer`` argument that makes VisionTransformer build an activation computing like ``act``."""
    from timm.layers.create_act import _ACT_LAYER_DEFAULT

    if type(act) is nn.GELU:
        if act.approximate == "none":
            return None  # VisionTransformer's default
        if act.approximate == "tanh":
            return "gelu_tanh"
    else:
        for name, layer in _ACT_LAYER_DEFAULT.items():
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


def compact_spec(model: nn.Module, masks: Masks | None = None, pad_to: int = 1) -> dict[str, Any]:
    """A JSON-able description of ``compact_vit(model, masks, pad_to)``: the base model's constructor arguments,
    the kept widths and the kept indices of every layer and gate (what :func:`load_compact` needs to rebuild it;
    with padding, the padded ones: the zeroed weights travel in the weights file).

    ``model`` is the dense (base) model the masks refer to; ``None`` masks mean all kept.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> spec = compact_spec(model, {0: {"mlp_hid": torch.arange(256) < 64}})
        >>> spec["architecture"], spec["kwargs"]["embed_dim"], spec["layers"][0]["kept"]["mlp_hid"]
        ('VisionTransformer', 64, 64)
    """
    arch, kwargs, norm = _base_kwargs(model)
    structure = ViTStructure(model)
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
            "dtype": str(dtype).replace("torch.", ""), "layers": layers}


def _spec_error(kind: type[Exception], msg: str) -> Exception:
    return kind(f"compact spec: {msg}")


def _masks_from_spec(spec: Mapping[str, Any], error: type[Exception]) -> dict[int, dict[str, torch.Tensor]]:
    masks = {}
    for i, layer in enumerate(spec["layers"]):
        per = {}
        for g in GATES:
            n = int(layer["sizes"][g])
            idx = torch.as_tensor(layer["indices"][g], dtype=torch.long)
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
    if spec.get("version") != SPEC_VERSION:
        raise _spec_error(error, f"version {spec.get('version')!r} is not supported (expected {SPEC_VERSION})")
    classes = {"VisionTransformer": VisionTransformer, "VisionTransformerDistilled": VisionTransformerDistilled}
    try:
        cls = classes[spec["architecture"]]
        kwargs = dict(spec["kwargs"])
        norm = spec["norm"]
        norm_cls = TimmLayerNorm if norm["type"] == "timm" else nn.LayerNorm
        kwargs["norm_layer"] = functools.partial(norm_cls, eps=float(norm["eps"]))
        for key in ("img_size", "patch_size"):
            kwargs[key] = tuple(kwargs[key])
        dtype = getattr(torch, spec["dtype"])
        masks = _masks_from_spec(spec, error)
        if len(masks) != int(kwargs["depth"]):
            raise _spec_error(error, f"{len(masks)} layer masks for depth {kwargs['depth']}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, (CheckpointError, ConfigError)):
            raise
        raise _spec_error(error, f"malformed ({type(exc).__name__}: {exc})") from None
    try:
        base = cls(**kwargs, weight_init="skip", device=device, dtype=dtype)
        return compact_vit(base, masks)
    except ConfigError as exc:
        raise _spec_error(error, str(exc)) from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise _spec_error(error, f"cannot build the model ({type(exc).__name__}: {exc})") from None


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_compact(model: nn.Module, spec: Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Write a compact model to ``directory`` as ``spec.json`` (from :func:`compact_spec`) and
    ``model.safetensors`` (its state dict); each file is written to a temporary file and then renamed.

    The spec is checked against the model first (the model it describes must have the same state-dict keys and
    shapes); a mismatch raises :class:`~sparselab.errors.ConfigError`. Returns the directory.

    Example:
        >>> import tempfile, timm, torch
        >>> base = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> masks = {0: {"mlp_hid": torch.arange(256) < 64}}
        >>> folder = save_compact(compact_vit(base, masks), compact_spec(base, masks), tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['model.safetensors', 'spec.json']
    """
    from safetensors.torch import save_file

    try:
        text = json.dumps(spec, indent=1, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"compact spec is not JSON-serialisable ({exc})") from None
    expected = _build(json.loads(text), ConfigError, device="meta").state_dict()
    state = _state(model)
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise ConfigError(f"the model does not match the compact spec: {problem}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": SPEC_FORMAT}))

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    atomic_write(folder / SPEC_FILE, write_json)
    return folder


def load_compact(directory: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a compact model written by :func:`save_compact` and load its weights; returned in eval mode.

    Raises:
        CheckpointError: the directory is missing or empty, a file is missing, unreadable or malformed, or the
            weights do not fit the described model.

    Example:
        >>> import tempfile, timm, torch
        >>> base = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
        >>> small = compact_vit(base, {2: {"attn_out": torch.arange(64) < 32}})
        >>> folder = save_compact(small, compact_spec(base, {2: {"attn_out": torch.arange(64) < 32}}),
        ...                       tempfile.mkdtemp())
        >>> x = torch.randn(1, 1, 28, 28)
        >>> torch.equal(load_compact(folder)(x), small(x))
        True
    """
    from ..models.checkpoints import read_state_dict

    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(f"compact model directory {folder} does not exist")
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    if not spec_path.is_file():
        what = "is empty" if not any(folder.iterdir()) else f"has no {SPEC_FILE}"
        raise CheckpointError(f"compact model directory {folder} {what}; save_compact writes {SPEC_FILE} and "
                              f"{WEIGHTS_FILE}")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{spec_path} could not be read ({type(exc).__name__}: {exc})") from None
    if not weights_path.is_file():
        raise CheckpointError(f"compact model directory {folder} has {SPEC_FILE} but no {WEIGHTS_FILE}")
    model = _build(spec, CheckpointError)
    state = read_state_dict(weights_path)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{weights_path} does not match {spec_path}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


__all__ = ["compact_vit", "compact_spec", "pad_masks", "compact_stats", "save_compact", "load_compact",
           "SelectChannels", "ScatterChannels", "ZeroPaddedLayerNorm", "ConstantBranch"]
