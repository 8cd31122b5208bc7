"""From block benefit to per-block keep ratios (P3B §1.4): soft clip, per-parameter normalisation, momentum,
class/patch mix, and water-filling to a global parameter budget.

Example:
    >>> import torch
    >>> kappa = water_fill(torch.tensor([1.0, 1.0, 4.0]), torch.tensor([100., 100., 100.]), budget=150.0)
    >>> kappa.tolist()
    [0.25, 0.25, 1.0]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

SOFTPLUS_SLOPE = 1.4


def soft_clip(z: torch.Tensor, top: float = 10.0) -> torch.Tensor:
    """g(z) = softplus(1.4 z) − softplus(1.4 z − T): about 0 below 0, about z in between, about T above T."""
    z = z.double()
    return F.softplus(SOFTPLUS_SLOPE * z) - F.softplus(SOFTPLUS_SLOPE * z - top)


def benefit_scores(benefit: torch.Tensor, params: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """u_k: scaled and soft-clipped benefit per (remaining or dense) parameter, normalised to mean 1.

    z_k = T·ΔΨ_k / max_j ΔΨ_j (when no block has a positive benefit, by max_j |ΔΨ_j|); g = soft_clip(z, T);
    u_k = g_k / params_k; u ← u / mean(u).
    """
    b = benefit.double()
    top = b.max()
    if top <= 0:
        top = b.abs().max()
    z = scale * b / top if top > 0 else torch.zeros_like(b)
    u = soft_clip(z, scale) / params.double().clamp_min(1.0)
    mean = u.mean()
    return u / mean if mean > 0 else torch.ones_like(u)


def water_fill(importance: torch.Tensor, dense: torch.Tensor, budget: float, max_rounds: int = 100,
               upper: torch.Tensor | None = None) -> torch.Tensor:
    """κ_k = s·I_k in [0, 1] with Σ κ_k·W_k = budget: blocks reaching 1 (or 0) are pinned and s re-solved.

    ``upper`` caps κ_k per block below 1 (e.g. what a block can still keep when pruned elements may not return);
    blocks reaching their cap are pinned there. Raises if the budget cannot be met (negative, or more than all
    blocks hold).
    """
    imp = importance.double().clamp_min(0)
    w = dense.double()
    cap = torch.ones_like(imp) if upper is None else upper.double().clamp(0, 1)
    total = float((w * cap).sum())
    if upper is not None and budget > total:  # the caps hold less than the budget: keep all that may be kept
        return cap.clone()
    if budget < -1e-9 or budget > total + 1e-6:
        raise ConfigError(f"the parameter budget {budget:.0f} lies outside [0, {total:.0f}] (all block parameters)")
    kappa = torch.zeros_like(imp)
    free = torch.ones_like(imp, dtype=torch.bool)
    if float(imp.max()) <= 0:  # nothing to go by: uniform
        imp = torch.ones_like(imp)
    imp = imp / imp.max()  # scale-free; keeps s finite for tiny (even subnormal) importances
    for _ in range(max_rounds):
        fixed = float((kappa * w)[~free].sum())
        denom = float((imp * w)[free].sum())
        rest = budget - fixed
        if denom <= 0:
            break
        s = rest / denom
        if not math.isfinite(s):  # the free blocks' importances are so small (subnormal) that s overflows
            imp = torch.where(free, imp / float(imp[free].max()), imp)
            continue
        trial = torch.where(free, s * imp, kappa)
        over = free & (trial >= cap)
        under = free & (trial < 0)
        if not over.any() and not under.any():
            kappa = trial
            break
        kappa = torch.where(over, cap, torch.where(under, torch.zeros_like(kappa), kappa))
        free = free & ~over & ~under
    if free.any() and float((kappa * w).sum()) < budget - 1e-6 * max(total, 1):
        # zero-importance blocks left free: share the remainder uniformly among them
        fixed = float((kappa * w)[~free].sum())
        share = (budget - fixed) / float((w * cap)[free].sum())
        kappa = torch.where(free, cap * min(1.0, share), kappa)
    return torch.minimum(kappa.clamp(0, 1), cap)


def ramp_keep(kappa: torch.Tensor, ramp: float) -> torch.Tensor:
    """κ̃ = 1 − (1 − κ)·r."""
    return 1 - (1 - kappa) * ramp
