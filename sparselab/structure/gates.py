"""Gate vectors attached to a ViT with forward hooks (no replaced forward methods).

Each gate is an ``nn.Parameter`` that multiplies an activation (see :mod:`sparselab.structure.vit`). Gates
receive gradients (the Taylor criterion reads ``m * dL/dm``) but are never moved by an optimizer: keep them out of
it and clear their ``.grad`` after reading it. "Kept" means value >= 0.5.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
    >>> gates = Gates(ViTStructure(model))
    >>> x = torch.randn(2, 1, 28, 28)
    >>> dense = model(x)
    >>> torch.allclose(model(x), dense)          # all gates are 1 at the start
    True
    >>> gates.set_hard({0: {"mlp_hid": torch.arange(256) < 128}})
    >>> bool((model(x) - dense).abs().max() > 0)
    True
    >>> gates.remove()                          # detaches every hook
    >>> torch.allclose(model(x), dense)
    True
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .vit import GATES, Masks, ViTStructure


class Gates(nn.Module):
    """One gate vector per (layer, gate), registered as hooks on the structure's model."""

    def __init__(self, structure: ViTStructure):
        super().__init__()
        self.structure = [structure]  # a list, so the model is not registered as a submodule
        ref = next(structure.model.parameters())
        self.values = nn.ParameterDict({
            self.key(i, g): nn.Parameter(torch.ones(n, device=ref.device, dtype=ref.dtype))
            for i in range(structure.depth) for g, n in structure.gate_sizes(i).items()
        })
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attach()

    @staticmethod
    def key(layer: int, gate: str) -> str:
        return f"L{layer}_{gate}"

    def gate(self, layer: int, gate: str) -> nn.Parameter:
        return self.values[self.key(layer, gate)]

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        s = self.structure[0]
        for i, blk in enumerate(s.layers):
            heads, hd = s.num_heads[i], s.head_dim[i]
            g = {name: self.gate(i, name) for name in GATES}
            self._hook(blk.norm1, _scale_last(g["attn_in"]))
            self._hook(blk.attn.qkv, _scale_qkv(g["attn_qkv"], heads, hd))
            if s.qk_norm:  # zero the pruned head dims again after the norm, so q.k ignores them exactly
                self._hook(blk.attn.q_norm, _scale_last(g["attn_qkv"]))
                self._hook(blk.attn.k_norm, _scale_last(g["attn_qkv"]))
            self._hook(blk.attn.proj, _scale_last(g["attn_out"]))
            self._hook(blk.norm2, _scale_last(g["mlp_in"]))
            self._hook(blk.mlp.act, _scale_last(g["mlp_hid"]))
            self._hook(blk.mlp.fc2, _scale_last(g["mlp_out"]))

    def _hook(self, module: nn.Module, fn) -> None:
        self._handles.append(module.register_forward_hook(lambda mod, args, out: fn(out)))

    def remove(self) -> None:
        """Detach all hooks (the model then computes as if every gate were 1)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # ------------------------------------------------------------------ values
    @torch.no_grad()
    def set_values(self, values: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Set gate values (soft masks in [0, 1]) for the given layers and gates."""
        for i, per_gate in values.items():
            for name, v in per_gate.items():
                p = self.gate(i, name)
                p.copy_(torch.as_tensor(v, dtype=p.dtype, device=p.device))

    def set_hard(self, masks: Masks) -> None:
        """Set gates to exactly 0/1 from boolean masks."""
        self.set_values({i: {g: m.float() for g, m in per.items()} for i, per in masks.items()})

    @torch.no_grad()
    def hard_masks(self) -> dict[int, dict[str, torch.Tensor]]:
        """Boolean masks: gate value >= 0.5 means kept."""
        s = self.structure[0]
        return {i: {g: (self.gate(i, g) >= 0.5).cpu() for g in GATES} for i in range(s.depth)}


def _scale_last(gate: torch.Tensor):
    def fn(out: torch.Tensor) -> torch.Tensor:
        return out * gate.to(out.dtype)

    return fn


def _scale_qkv(gate: torch.Tensor, heads: int, head_dim: int):
    def fn(out: torch.Tensor) -> torch.Tensor:
        shape = out.shape
        return (out.view(*shape[:-1], 3, heads, head_dim) * gate.to(out.dtype)).view(shape)

    return fn
