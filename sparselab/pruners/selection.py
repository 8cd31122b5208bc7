"""Inside a block: which gate elements to keep (P3B §1.5).

Scores are rank-normalised inside each gate, q_e = (rank + 1)/|gate| times a per-gate factor, and sorted
ascending over the whole block. The threshold t removes the first t elements; it is found by exact search: the
kept Linear parameters of the block are computed for candidate t (they fall monotonically with t), and the t
whose count is closest to κ̃·W is taken. Soft masks follow m_j = sigmoid(ln 9 · (j − t − ½)/(τ·n)), so the
hard state (m ≥ 0.5) is exactly "not among the first t" and m = 0.9 about τn positions above the threshold.

Example:
    >>> import torch
    >>> [round(q, 3) for q in rank_normalise(torch.tensor([0.3, 0.1, 0.2])).tolist()]
    [1.0, 0.333, 0.667]
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

GATE_FACTORS = {"attn_in": 1.0, "attn_qkv": 1.0, "attn_out": 1.5, "mlp_in": 1.0, "mlp_hid": 0.75, "mlp_out": 1.5}
LN9 = math.log(9.0)


def rank_normalise(scores: torch.Tensor) -> torch.Tensor:
    """(rank + 1) / n of each score inside its gate (ties broken by position)."""
    n = scores.numel()
    ranks = torch.empty(n, dtype=torch.float32)
    ranks[torch.argsort(scores, stable=True)] = torch.arange(1, n + 1, dtype=torch.float32)
    return ranks / n


def order_block_elements(scores: Mapping[str, torch.Tensor], factors: Mapping[str, float],
                forced_off: Mapping[str, torch.Tensor] | None = None) -> tuple[list[str], torch.Tensor]:
    """Sort every element of a block ascending by factor·rank-normalised score.

    Returns the gate names and, for each sorted position, ``(gate index, element index)`` as an (n, 2) tensor.
    Elements marked in ``forced_off`` (boolean per gate) sort before all others, so a threshold removes them
    first (P3B without reactivation).
    """
    gates = list(scores)
    parts = []
    for g in gates:
        q = rank_normalise(scores[g].float().cpu()) * factors.get(g, 1.0)
        if forced_off is not None and g in forced_off:
            q = torch.where(forced_off[g].cpu(), torch.full_like(q, -1.0), q)
        parts.append(q)
    q = torch.cat(parts)
    gate_idx = torch.cat([torch.full((scores[g].numel(),), i) for i, g in enumerate(gates)])
    elem_idx = torch.cat([torch.arange(scores[g].numel()) for g in gates])
    order = torch.argsort(q, stable=True)
    return gates, torch.stack([gate_idx[order], elem_idx[order]], dim=1)


def masks_for_threshold(gates: list[str], sizes: Mapping[str, int], order: torch.Tensor,
                        t: int) -> dict[str, torch.Tensor]:
    """Boolean masks with the first ``t`` sorted elements removed (the hard state of :func:`soft_masks`)."""
    return {g: v >= 0.5 for g, v in soft_masks(gates, sizes, order, t, 0.0).items()}


def find_threshold(gates: list[str], sizes: Mapping[str, int], order: torch.Tensor,
                   kept_params: Callable[[Mapping[str, int]], int], target: float) -> int:
    """The number t of removed elements whose kept-parameter count is closest to ``target``.

    ``kept_params`` maps kept counts per gate to the block's kept Linear parameters (monotone in each count).
    """
    n = len(order)
    removed = torch.zeros(n + 1, len(gates), dtype=torch.long)  # removed[t, g]: removed from gate g among first t
    if n:
        removed[1:] = torch.nn.functional.one_hot(order[:, 0], len(gates)).cumsum(0)

    def count(t: int) -> int:
        return kept_params({g: sizes[g] - int(removed[t, i]) for i, g in enumerate(gates)})

    lo, hi = 0, n  # smallest t with count(t) <= target
    if count(n) > target:
        return n
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and abs(count(lo - 1) - target) < abs(count(lo) - target):
        return lo - 1
    return lo


def soft_masks(gates: list[str], sizes: Mapping[str, int], order: torch.Tensor, t: int,
               tau: float) -> dict[str, torch.Tensor]:
    """Gate values for threshold ``t`` and temperature ``tau`` (τ = 0: a hard 0/1 step)."""
    n = len(order)
    j = torch.arange(1, n + 1, dtype=torch.float64)
    if tau > 0 and n > 0:
        m = torch.sigmoid(LN9 * (j - t - 0.5) / (tau * n))
    else:
        m = (j > t).double()
    values = {g: torch.ones(sizes[g], dtype=torch.float32) for g in gates}
    m = m.float()
    for i, g in enumerate(gates):
        mine = order[:, 0] == i
        values[g][order[mine, 1]] = m[mine]
    return values
