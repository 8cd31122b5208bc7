"""Slicing a timm Vision Transformer into its compact form: mask validation (:func:`_check_masks`) and padding
(:func:`pad_masks`), the slicing of every block's attention and MLP branch into smaller timm ``Attention``/``Mlp``
modules (or constant branches), the zeroing of padded weights and :func:`compact_vit`, which puts it all together;
plus the hook-clearing and copying helpers these need.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

from ...errors import ConfigError, check_positive_int
from ..vit import GATE_WEIGHTS, Masks, ViTStructure, binary_mask, check_gate_layout, is_identity, qkv_grid, weight_index
from .modules import CompactBlock, CompactMlp, ConstantBranch, ScatterChannels, SelectChannels, ZeroPaddedLayerNorm

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


# ====================================================================== masks
def _check_masks(structure: ViTStructure, masks: Masks | None) -> dict[int, dict[str, torch.Tensor]]:
    """Validated boolean CPU masks for every layer and gate (missing layers/gates: all kept); the layout is checked
    by :func:`~sparselab.structure.vit.check_gate_layout`, as :class:`~sparselab.structure.gates.Gates` does."""
    full = structure.full_masks()
    if masks is None:
        return full
    for layer, gate, m in check_gate_layout(structure, masks, "masks", "boolean vector"):
        full[layer][gate] = binary_mask(m.detach().cpu(), layer, gate, "masks").clone()
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


def _constant(index: torch.Tensor, out_full: torch.Tensor, ls: nn.Module, dim: int, like: torch.Tensor,
              sources: list[torch.Tensor | None]) -> nn.Module:
    """ConstantBranch for a branch whose pre-LayerScale output is ``out_full`` (D channels, gated by ``index``),
    computed from the parameters ``sources`` (and ``ls``'s): the constant is trainable only if one of them is."""
    with torch.no_grad():
        gated = torch.zeros(dim, dtype=like.dtype, device=like.device)
        idx = index.to(like.device)
        gated[idx] = out_full[idx]
        scaled = ls.forward(gated)  # .forward: never through hooks
        value = scaled[idx]
    branch = ConstantBranch(idx, value, dim)
    trainable = any(p is not None and p.requires_grad for p in [*sources, *ls.parameters()])
    branch.value.requires_grad_(trainable)
    return branch


def _compact_attn(blk: nn.Module, m: dict[str, torch.Tensor], heads: int, head_dim: int, dim: int,
                  qkv_unit: str = "dim"):
    """(norm1, attn, ls1) for the compact block."""
    from timm.layers import Attention

    attn = blk.attn
    ref = attn.qkv.weight
    i_in, i_qkv, i_out = _kept(m["attn_in"]), _kept(m["attn_qkv"]), _kept(m["attn_out"])
    n_in, n_qkv, n_out = i_in.numel(), i_qkv.numel(), i_out.numel()
    per_dim = qkv_unit == "dim"
    new_heads, new_head_dim = (heads, n_qkv) if per_dim else (n_qkv, head_dim)
    qk_norm = not is_identity(attn.q_norm)
    if min(n_in, n_qkv, n_out) == 0:  # the branch output no longer depends on its input
        with torch.no_grad():
            v = torch.zeros(heads * head_dim, dtype=ref.dtype, device=ref.device)
            if n_in == 0 and attn.qkv.bias is not None:  # uniform attention over identical tokens returns v
                bv = attn.qkv.bias.detach()[2 * heads * head_dim:].view(heads, head_dim)
                grid = qkv_grid(m["attn_qkv"], qkv_unit, heads, head_dim)
                v = (bv * grid.to(bv.device, bv.dtype)).reshape(-1)
            out = F.linear(v, attn.proj.weight.detach(),
                           None if attn.proj.bias is None else attn.proj.bias.detach())
        sources = [attn.proj.weight, attn.proj.bias, attn.qkv.bias]
        return nn.Identity(), _constant(i_out, out, blk.ls1, dim, ref, sources), nn.Identity()

    new = Attention(
        dim=n_in, num_heads=new_heads, attn_head_dim=new_head_dim, dim_out=n_out, qkv_bias=attn.qkv.bias is not None,
        qk_norm=qk_norm, proj_bias=attn.proj.bias is not None, attn_drop=attn.attn_drop.p,
        proj_drop=attn.proj_drop.p, norm_layer=nn.LayerNorm if qk_norm else None,
    ).to(device=ref.device, dtype=ref.dtype)
    new.fused_attn = attn.fused_attn
    rows = weight_index("attn_qkv", "qkv", i_qkv, heads, head_dim, qkv_unit)
    # timm scales q.k by head_dim**-0.5; the masked model uses the full head_dim, the compact one the kept one
    q_scale = math.sqrt(new_head_dim / head_dim)
    with torch.no_grad():
        w = _cols(_rows(attn.qkv.weight, rows), i_in).clone()
        b = None if attn.qkv.bias is None else _rows(attn.qkv.bias, rows).clone()
        if not qk_norm and q_scale != 1.0:
            nq = new_heads * new_head_dim
            w[:nq] *= q_scale
            if b is not None:
                b[:nq] *= q_scale
        _copy_param(new.qkv.weight, w, attn.qkv.weight)
        _copy_param(new.qkv.bias, b, attn.qkv.bias)
        _copy_param(new.proj.weight, _cols(_rows(attn.proj.weight, i_out),
                                           weight_index("attn_qkv", "proj", i_qkv, heads, head_dim, qkv_unit)),
                    attn.proj.weight)
        _copy_param(new.proj.bias, None if attn.proj.bias is None else _rows(attn.proj.bias, i_out), attn.proj.bias)
    if qk_norm:
        kept_dims = i_qkv if per_dim else torch.arange(head_dim)
        for name, scale in (("q_norm", q_scale), ("k_norm", 1.0)):
            new.add_module(name, _padded_norm(getattr(attn, name), kept_dims, head_dim, scale, name))
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
        sources = [mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias]
        return nn.Identity(), _constant(i_out, out, blk.ls2, dim, ref, sources), nn.Identity()

    new = CompactMlp(n_in, n_hid, n_out, bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None),
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
    qk-norm (a normalised zero is not zero) or when its elements are whole heads (``structure.qkv_unit="head"``:
    the head count is no matrix width). :func:`compact_vit` zeroes the weights of the added elements, which
    keeps the outputs those of the unpadded masks.

    Raises:
        ConfigError: ``masks`` that :func:`compact_vit` would refuse (unknown layers or gates, wrong sizes,
            non-boolean values), or ``multiple`` not a positive integer.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> padded, added = pad_masks(ViTStructure(model), {0: {"mlp_hid": torch.arange(256) < 61}}, 8)
        >>> int(padded[0]["mlp_hid"].sum()), added[0]["mlp_hid"].nonzero().flatten().tolist()
        (64, [61, 62, 63])
    """
    multiple = check_positive_int("pad_to (1: no padding)", multiple)
    full = _check_masks(structure, masks)  # the layer and gate names, sizes and values checked, as compact_vit does
    for key, per in (masks or {}).items():
        for g, m in per.items():  # a mask given on another device stays there
            if isinstance(m, torch.Tensor) and m.device != full[int(key)][g].device:
                full[int(key)][g] = full[int(key)][g].to(m.device)
    added = {i: {g: torch.zeros_like(m) for g, m in per.items()} for i, per in full.items()}
    if multiple == 1:
        return full, added
    for i, per in full.items():
        for block in structure.blocks[2 * i:2 * i + 2]:
            if min(int(per[g].sum()) for g in block.gates) == 0:
                continue
            for g in block.gates:
                if g == "attn_qkv" and (structure.qk_norm or structure.qkv_unit == "head"):
                    continue
                m = per[g]
                want = min(-(-int(m.sum()) // multiple) * multiple, m.numel())
                extra = torch.nonzero(~m).flatten()[:want - int(m.sum())]
                m[extra] = True
                added[i][g][extra] = True
    return full, added


@torch.no_grad()
def _zero_padding(attn: nn.Module, mlp: nn.Module, kept: Mapping[str, torch.Tensor],
                  added: Mapping[str, torch.Tensor], heads: int, qkv_unit: str = "dim") -> None:
    """Zero the compact weights that belong to padding elements (every weight :data:`GATE_WEIGHTS` says they
    span, and the bias of a row), so they contribute nothing."""
    linear = {name: getattr(branch, name) for branch, names in ((attn, ("qkv", "proj")), (mlp, ("fc1", "fc2")))
              for name in names if hasattr(branch, name)}  # a constant branch has none
    head_dim = getattr(attn, "head_dim", 0)
    for gate, spans in GATE_WEIGHTS.items():
        positions = torch.nonzero(added[gate][_kept(kept[gate])]).flatten()  # where padding sits among the kept
        for name, axis in spans:
            if name not in linear or positions.numel() == 0:
                continue
            index = weight_index(gate, name, positions, heads, head_dim, qkv_unit)
            layer = linear[name]
            if axis == 0:
                layer.weight[index] = 0
                if layer.bias is not None:
                    layer.bias[index] = 0
            else:
                layer.weight[:, index] = 0


def compact_vit(model: nn.Module, masks: Masks | None = None, pad_to: int = 1, qkv_unit: str = "dim") -> nn.Module:
    """A new, physically smaller copy of a timm Vision Transformer that computes what the hard-masked model does.

    ``pad_to=8`` (or 16) rounds every kept width of a live branch up to a multiple by taking in pruned elements
    whose weights are set to zero (see :func:`pad_masks`): the outputs stay those of the hard-masked model while the
    matrix multiplications get the shapes CPU kernels run fastest (``benchmarks/bench_compact_latency.py``), at the
    price of a few zero parameters (so the parameter count exceeds ``structure.total_params(masks)``).

    ``masks`` maps layer -> gate -> boolean vector (see :mod:`sparselab.structure.vit`); layers or gates left out
    are kept whole. With ``qkv_unit="head"`` an ``attn_qkv`` mask has one entry per head, and the compact
    attention has the kept heads at the full head dimension (fewer heads instead of narrower ones). ``model`` is
    not changed and may have :class:`~sparselab.structure.gates.Gates` attached (their current values are
    ignored: only ``masks`` count). The result shares no tensors and no hooks with
    ``model``; everything outside the blocks (patch embedding, prefix tokens, position embedding, final norms,
    heads) is copied unchanged. Parameter ``requires_grad`` flags, dropout rates and the train/eval mode of
    every module are carried over (a constant branch is trainable when a parameter it is computed from is).

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
    structure = ViTStructure(model, qkv_unit)
    full = _check_masks(structure, masks)
    for i, blk in enumerate(structure.layers):
        _check_block(i, blk)
    dim = structure.embed_dim
    full, padding = pad_masks(structure, full, pad_to)

    new_blocks = []
    for i, blk in enumerate(structure.layers):
        heads, head_dim = structure.num_heads[i], structure.head_dim[i]
        norm1, attn, ls1 = _compact_attn(blk, full[i], heads, head_dim, dim, qkv_unit)
        norm2, mlp, ls2 = _compact_mlp(blk, full[i], dim)
        _zero_padding(attn, mlp, full[i], padding[i], heads, qkv_unit)
        nb = _copy_except(blk, [blk.norm1, blk.attn, blk.ls1, blk.norm2, blk.mlp, blk.ls2])
        for name, mod in (("norm1", norm1), ("attn", attn), ("ls1", ls1), ("norm2", norm2), ("mlp", mlp),
                          ("ls2", ls2)):
            setattr(nb, name, mod)
        if type(nb) is Block:  # a subclass keeps its own forward
            nb.__class__ = CompactBlock
        new_blocks.append(nb)

    blocks = model.blocks
    result = _copy_except(model, [blocks])
    result.blocks = type(blocks)(*new_blocks) if isinstance(blocks, nn.Sequential) else nn.Sequential(*new_blocks)
    _carry_modes(result, model)
    return _clear_hooks(result)


def _carry_modes(new: nn.Module, old: nn.Module) -> None:
    """Give every module of ``new`` the train/eval mode of the module of ``old`` at the same name, or else of the
    nearest enclosing one that ``old`` has (a dropout put in eval mode inside a training model stays off)."""
    modes = {name: m.training for name, m in old.named_modules()}
    for name, m in new.named_modules():
        parts = name.split(".") if name else []
        while ".".join(parts) not in modes:
            parts.pop()
        m.training = modes[".".join(parts)]
