"""Residual-stream taps: forward hooks that record x_0 .. x_K of a timm ViT during its forward pass.

x_0 enters the first layer; x_k = x_{k-1} + b_k(x_{k-1}) after block k (attention and MLP blocks alternate),
before the final norm. Recorded tensors are detached (probes never train the backbone).

The patch grid ``(h, w)`` of the input is recorded too (:attr:`ResidualTaps.grid`, from the patch embedding's
output or, where that is flat, from the image size): a model created with ``dynamic_img_size=True`` takes other
image sizes than the one it was built for, and :meth:`ViTStructure.patch_tokens` needs the grid of the input.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
    >>> taps = ResidualTaps(ViTStructure(model))
    >>> _ = model(torch.randn(2, 1, 28, 28))
    >>> len(taps.stream), tuple(taps.stream[0].shape), taps.grid
    (9, (2, 50, 64), (7, 7))
    >>> taps.remove()
"""
from __future__ import annotations

import torch
from torch import nn

from .vit import ViTStructure


class ResidualTaps:
    """Hooks on every layer: a pre-hook records the layer input, a pre-hook on ``norm2`` the stream after the
    attention branch (timm's pre-norm ``Block`` normalises exactly that stream for its MLP, so the tap costs no
    extra add), a hook on the layer the stream after the MLP branch; a hook on ``patch_embed`` records the patch
    grid of the input in :attr:`grid`."""

    def __init__(self, structure: ViTStructure, enabled: bool = True):
        self.structure = structure
        self.enabled = enabled
        self.stream: list[torch.Tensor] = []
        #: the ``(h, w)`` patch grid of the last input; None before a forward pass or where it cannot be told
        self.grid: tuple[int, int] | None = None
        self._handles = [structure.model.patch_embed.register_forward_hook(self._embedded)]
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

    def _embedded(self, module: nn.Module, args, out):
        if self.enabled:
            self.grid = embedded_grid(module, args[0] if args else None, out)

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
        self.grid = None


def embedded_grid(patch_embed: nn.Module, image: torch.Tensor | None, out: torch.Tensor) -> tuple[int, int] | None:
    """The ``(h, w)`` patch grid that ``patch_embed`` made of ``image`` (its output ``out``): read off a spatial
    output (timm's ``dynamic_img_size`` keeps it ``NHWC`` until the position embedding), else computed from the
    image size (timm's ``dynamic_feat_size``, which honours ``dynamic_img_pad``); None where neither gives a grid
    that holds exactly the embedded tokens.

    Example:
        >>> from timm.layers import PatchEmbed
        >>> pe = PatchEmbed(img_size=28, patch_size=4, in_chans=1, embed_dim=8, strict_img_size=False)
        >>> x = torch.randn(1, 1, 28, 36)
        >>> embedded_grid(pe, x, pe(x))
        (7, 9)
    """
    if not isinstance(out, torch.Tensor):
        return None
    if out.dim() == 4:
        fmt = getattr(patch_embed, "output_fmt", "NCHW")
        fmt = str(getattr(fmt, "value", fmt))  # timm's Format enum or a plain string
        if fmt in ("NHWC", "NCHW"):
            return (out.shape[1], out.shape[2]) if fmt == "NHWC" else (out.shape[2], out.shape[3])
        return None
    if out.dim() != 3 or not isinstance(image, torch.Tensor) or image.dim() < 3:
        return None
    size = (image.shape[-2], image.shape[-1])
    if hasattr(patch_embed, "dynamic_feat_size"):
        grid = patch_embed.dynamic_feat_size(size)
    else:
        grid = getattr(patch_embed, "grid_size", None)
    if grid is None:
        return None
    h, w = int(grid[0]), int(grid[1])
    return (h, w) if h * w == out.shape[1] else None
