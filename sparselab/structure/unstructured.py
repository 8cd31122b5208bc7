"""Unstructured sparsity bookkeeping: which weights are prunable, magnitude masks at an exact sparsity.

Prunable weights are the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (first and last layer included; no
biases, no norms). Masks are ``dict[str, BoolTensor]`` keyed by parameter name, True = kept.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
    >>> masks = magnitude_masks(net, 0.9)
    >>> sum(int(m.sum()) for m in masks.values()), sparsity(masks)
    (12, 0.9)
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ..errors import ConfigError, check_ratio

Masks = Mapping[str, torch.Tensor]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name → weight of every Conv2d and Linear layer, in module order."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out[f"{name}.weight" if name else "weight"] = module.weight
    if not out:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear weights to prune")
    return out


def num_pruned(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity removes: ⌊sparsity·n⌋ (the kept count is n minus that)."""
    return int(math.floor(sparsity * n + 1e-9))


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep the largest-magnitude weights: ``global`` ranks all prunable weights together, ``layer`` prunes every
    layer to the same sparsity. Exactly ⌊sparsity·n⌋ weights are removed (per layer for ``layer``); ties are broken
    by position, so the count is exact."""
    check_ratio("sparsity", sparsity)
    weights = prunable_weights(model)
    if scope == "layer":
        return {name: _top_mask(w.detach().abs().flatten(), w.numel() - num_pruned(w.numel(), sparsity)).view_as(w)
                for name, w in weights.items()}
    if scope != "global":
        raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    keep = _top_mask(flat, flat.numel() - num_pruned(flat.numel(), sparsity))
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view(w.shape).to(w.device)
        offset += w.numel()
    return masks


def _top_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        mask[torch.topk(values, k, sorted=False).indices] = True
    return mask


def sparsity(masks: Masks) -> float:
    """Fraction of masked-out weights."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the masked-out weights in place."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        params[name].mul_(m.to(params[name].dtype))
