"""The small modules a compact ViT is built from: :class:`SelectChannels` and :class:`ScatterChannels` (keep a
subset of the channels / put it back among zeros), :class:`ZeroPaddedLayerNorm` (a LayerNorm over channels of which
only some are present, for qk-norm on sliced heads), :class:`ConstantBranch` (a residual branch that no longer
depends on its input), :class:`CompactBlock` (timm's Block adding a branch that writes only some residual channels
to just those channels) and :class:`CompactMlp` (timm's Mlp applying its GELU in place where nothing else can see
the pre-activation).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.modules import module as module_hooks

from ...errors import ConfigError


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
        # gather with a broadcast index: on CPU 3-10x faster than index_select along the last dimension
        return x.gather(-1, self.index.expand(*x.shape[:-1], -1))

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
        # scatter with a broadcast index: on CPU faster than index_copy_ along the last dimension
        return out.scatter_(-1, self.index.expand(*x.shape[:-1], -1), x)

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


def add_branch(x: torch.Tensor, out: torch.Tensor, ls: nn.Module, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(ls(out))``; when ``ls`` only scatters ``out`` into zeros (a ``ScatterChannels`` followed by
    no LayerScale) and there is no drop path, ``out`` is added to its channels of ``x`` directly — one
    ``index_add`` instead of a zero fill, a scatter and a full-width add, the same values.

    Example:
        >>> ls = nn.Sequential(ScatterChannels(torch.tensor([0, 2]), 3), nn.Identity())
        >>> add_branch(torch.ones(1, 3), torch.tensor([[1., 2.]]), ls, nn.Identity()).tolist()
        [[2.0, 1.0, 3.0]]
    """
    index = scattered_channels(ls, drop_path)
    if index is not None:  # under autocast ``out`` may be float16 / bfloat16 where x + out would promote
        return x.index_add(-1, index, out.to(x.dtype))
    return x + drop_path(ls(out))


def scattered_channels(ls: nn.Module, drop_path: nn.Module) -> torch.Tensor | None:
    """The residual channels a branch writes when ``drop_path(ls(out))`` only scatters ``out`` into zeros (a
    ``ScatterChannels`` followed by no LayerScale, and no drop path); None when it does more.

    Example:
        >>> ls = nn.Sequential(ScatterChannels(torch.tensor([0, 2]), 3), nn.Identity())
        >>> scattered_channels(ls, nn.Identity()).tolist(), scattered_channels(nn.Identity(), nn.Identity())
        ([0, 2], None)
    """
    if (isinstance(ls, nn.Sequential) and len(ls) == 2 and isinstance(ls[0], ScatterChannels)
            and isinstance(ls[1], nn.Identity) and isinstance(drop_path, nn.Identity)):
        return ls[0].index
    return None


class CompactBlock(Block):
    """timm's pre-norm ``Block`` of a compact ViT: the same modules and the same outputs, with each branch's output
    added through :func:`add_branch`, so a branch that writes only some residual channels costs no full-width copy.
    Extra arguments (timm's ``attn_mask``, ``is_causal``) go to the attention as in ``Block``.

    Example:
        >>> import timm
        >>> from sparselab.structure.compact import compact_vit
        >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> small = compact_vit(model, {0: {"mlp_out": torch.arange(64) < 40}})
        >>> type(small.blocks[0]).__name__
        'CompactBlock'
    """

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = add_branch(x, self.attn(self.norm1(x), *args, **kwargs), self.ls1, self.drop_path1)
        return add_branch(x, self.mlp(self.norm2(x)), self.ls2, self.drop_path2)


def may_overwrite(t: torch.Tensor, *modules: nn.Module) -> bool:
    """Whether ``t`` may be overwritten in place: autograd records nothing for it, no forward hook of ``modules``
    (those that produce or consume it) nor a global one may hold a reference to it, and no tracer, exporter or
    compiler is watching (they record in-place ops as such)."""
    if torch.is_grad_enabled() and t.requires_grad:
        return False
    if (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()):
        return False
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


#: hidden activations from this size on are activated in place by :class:`CompactMlp`; below it (batch 1) the
#: fresh buffer comes from memory the allocator keeps, and the in-place form measured up to 6 % slower
INPLACE_MIN_BYTES = 4 << 20


class CompactMlp(Mlp):
    """timm's ``Mlp`` of a compact ViT: the same modules and outputs; when the hidden activations need no gradient
    (inference), no hook can see them and they hold at least :data:`INPLACE_MIN_BYTES`, an ``nn.GELU`` runs in
    place on ``fc1``'s output.

    Why: at batch 32 a wide hidden layer is tens of MB, and a fresh buffer of that size is page-faulted anew on
    every forward pass (glibc returns it to the kernel), which made the GELU of wide compact blocks take several
    times as long per element as that of narrow ones (``benchmarks/bench_compact_latency.py``).

    Example:
        >>> mlp = Mlp(8, 4096, 8)
        >>> fast = CompactMlp(8, 4096, 8); fast.load_state_dict(mlp.state_dict())
        <All keys matched successfully>
        >>> x = torch.randn(512, 8)  # 8 MiB of hidden activations
        >>> with torch.no_grad():
        ...     torch.equal(fast(x), mlp(x))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        act = self.act
        # the size last: under an exporter with a dynamic batch it would add a guard on the batch dimension
        if (type(act) is nn.GELU and may_overwrite(h, act, self.fc1)
                and h.numel() * h.element_size() >= INPLACE_MIN_BYTES):
            h = torch.ops.aten.gelu_(h, approximate=act.approximate)
        else:
            h = act(h)
        return self.drop2(self.fc2(self.norm(self.drop1(h))))
