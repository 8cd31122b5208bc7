"""Residual-stream taps: forward hooks that record x_0 .. x_K of a timm ViT during its forward pass.

x_0 enters the first layer; x_k = x_{k-1} + b_k(x_{k-1}) after block k (attention and MLP blocks alternate),
before the final norm. Recorded tensors are detached (probes never train the backbone).

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
    >>> taps = ResidualTaps(ViTStructure(model))
    >>> _ = model(torch.randn(2, 1, 28, 28))
    >>> len(taps.stream), tuple(taps.stream[0].shape)
    (9, (2, 50, 64))
    >>> taps.remove()
"""
from __future__ import annotations

import torch

from .vit import ViTStructure


class ResidualTaps:
    """Hooks on every layer: a pre-hook records the layer input, a pre-hook on ``norm2`` the stream after the
    attention branch (timm's pre-norm ``Block`` normalises exactly that stream for its MLP, so the tap costs no
    extra add), a hook on the layer the stream after the MLP branch."""

    def __init__(self, structure: ViTStructure, enabled: bool = True):
        self.structure = structure
        self.enabled = enabled
        self.stream: list[torch.Tensor] = []
        self._handles = []
        for i, blk in enumerate(structure.layers):
            self._handles.append(blk.register_forward_pre_hook(self._layer_input(i)))
            self._handles.append(blk.norm2.register_forward_pre_hook(self._after_attn))
            self._handles.append(blk.register_forward_hook(self._layer_output))

    def _layer_input(self, i: int):
        def hook(module, args):
            if not self.enabled:
                return
            if i == 0:
                self.stream = [args[0].detach()]

        return hook

    def _after_attn(self, module, args):
        if self.enabled:
            self.stream.append(args[0].detach())

    def _layer_output(self, module, args, out):
        if self.enabled:
            self.stream.append(out.detach())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.stream = []
