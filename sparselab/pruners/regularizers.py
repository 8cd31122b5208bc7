"""Sparsity regularizers over all prunable weights (every Conv2d/Linear weight): HyperSparse, L1 and L2.

HyperSparse (Glandorf, Kaiser & Rosenhahn 2023) with target prune rate κ over weights w, a = |w|:

    τ_κ = the ⌊κn⌋-th smallest a (0-based, no gradient),    s = atanh(1/√3) / τ_κ ≈ 0.6585 / τ_κ
    ∂L/∂w_i = sign(w_i) · s · sech²(s·a_i) · ‖w‖₁ / Σ_j tanh(s·a_j)      (s and the denominator constant)

so small weights are pushed hard and the largest almost not at all; the inflection of the gradient sits exactly at
the threshold. The loss returned here is C·Σ tanh(s·a) with C = stop-gradient(‖w‖₁ / Σ tanh(s·a)): autograd yields
exactly the gradient above and the value equals ‖w‖₁ (the reference's loss is a constant 0). The threshold is an
order statistic (``np.partition``), not a full sort; sums are taken per tensor, never over one concatenated copy.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(100, 10)
    >>> reg = HyperSparse(0.9)
    >>> loss = reg(net)
    >>> loss.backward()
    >>> sorted(reg.stats(net))[:3]
    ['grad_kept', 'grad_pruned', 'grad_ratio']
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import check_ratio, unknown_name
from ..structure.unstructured import num_pruned, prunable_weights

INFLECTION = math.atanh(1 / math.sqrt(3))  # 0.6585...: sech² has its inflection at s·τ = this


def magnitude_threshold(weights: list[torch.Tensor], sparsity: float) -> float:
    """τ_κ: the ⌊κn⌋-th smallest |w| (0-based) over all tensors, by partial selection."""
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights]).numpy()
    k = min(num_pruned(flat.size, sparsity), flat.size - 1)
    return float(np.partition(flat, k)[k])


class Regularizer:
    """A penalty on all prunable weights of a model. Subclasses implement :meth:`penalty`."""

    name = "regularizer"

    def __init__(self, sparsity: float, threshold_every: int = 1):
        self.sparsity = check_ratio("sparsity", sparsity)
        self.threshold_every = max(1, int(threshold_every))
        self._calls = 0
        self.threshold = float("nan")

    def weights(self, model: nn.Module) -> list[torch.Tensor]:
        return list(prunable_weights(model).values())

    def __call__(self, model: nn.Module) -> torch.Tensor:
        weights = self.weights(model)
        if self._calls % self.threshold_every == 0 or math.isnan(self.threshold):
            self.threshold = magnitude_threshold(weights, self.sparsity)
        self._calls += 1
        return self.penalty(weights)

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def gradient(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The penalty's gradient for each tensor (computed with autograd on detached copies)."""
        leaves = [w.detach().clone().requires_grad_(True) for w in weights]
        with torch.enable_grad():
            grads = torch.autograd.grad(self.penalty(leaves), leaves)
        return list(grads)

    @torch.no_grad()
    def stats(self, model: nn.Module) -> dict[str, float]:
        """Scalars that mean something: the threshold, the share of the L1 mass below it, and the mean gradient
        magnitude on the to-be-pruned versus the kept weights (and their ratio)."""
        weights = self.weights(model)
        tau = magnitude_threshold(weights, self.sparsity)
        if math.isnan(self.threshold):
            self.threshold = tau
        grads = self.gradient(weights)
        below = sum(float(w.abs()[w.abs() <= tau].sum()) for w in weights)
        total = sum(float(w.abs().sum()) for w in weights)
        g_pruned = [g.abs()[w.abs() <= tau] for w, g in zip(weights, grads)]
        g_kept = [g.abs()[w.abs() > tau] for w, g in zip(weights, grads)]
        n_p = sum(x.numel() for x in g_pruned)
        n_k = sum(x.numel() for x in g_kept)
        mean_p = sum(float(x.sum()) for x in g_pruned) / max(n_p, 1)
        mean_k = sum(float(x.sum()) for x in g_kept) / max(n_k, 1)
        return {"threshold": tau, "l1_below_share": below / max(total, 1e-30), "l1": total,
                "grad_pruned": mean_p, "grad_kept": mean_k, "grad_ratio": mean_p / max(mean_k, 1e-30)}


class HyperSparse(Regularizer):
    """The HyperSparse regularizer (see the module docstring)."""

    name = "hypersparse"

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        tau = max(self.threshold, 1e-12)
        s = INFLECTION / tau
        tanh_sums = [torch.tanh(s * w.abs()).sum() for w in weights]
        l1 = sum(w.detach().abs().sum() for w in weights)
        total = sum(tanh_sums)
        return (l1 / total.detach()) * total


class L1(Regularizer):
    """Σ|w| over all prunable weights."""

    name = "l1"

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return sum(w.abs().sum() for w in weights)


class L2(Regularizer):
    """Σw² over all prunable weights."""

    name = "l2"

    def penalty(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return sum(w.pow(2).sum() for w in weights)


REGULARIZERS = {"hypersparse": HyperSparse, "l1": L1, "l2": L2}


def make_regularizer(name: str | Regularizer, sparsity: float, **options) -> Regularizer:
    """A regularizer by name (``hypersparse``, ``l1``, ``l2``) or the instance given."""
    if isinstance(name, Regularizer):
        return name
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", name, REGULARIZERS)
    return REGULARIZERS[name](sparsity, **options)
