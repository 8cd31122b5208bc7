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

from ..errors import ConfigError, check_finite, unknown_name
from ..structure.gates import on_side_of_half

GATE_FACTORS = {"attn_in": 1.0, "attn_qkv": 1.0, "attn_out": 1.5, "mlp_in": 1.0, "mlp_hid": 0.75, "mlp_out": 1.5}
LN9 = math.log(9.0)


def merged_gate_factors(factors: Mapping[str, float] | None) -> dict[str, float]:
    """The per-gate factors a run uses: the method's (:data:`GATE_FACTORS`) with ``factors`` overriding the gates
    it names. Unknown gate names and factors that are not finite and positive are refused.

    Example:
        >>> merged_gate_factors({"mlp_hid": 1.0})["mlp_hid"], merged_gate_factors({"mlp_hid": 1.0})["mlp_out"]
        (1.0, 1.5)
        >>> merged_gate_factors({"mlp_hidden": 1.0})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sparselab.errors.UnknownNameError: unknown gate in gate_factors 'mlp_hidden'. Did you mean 'mlp_hid' ...
    """
    merged = dict(GATE_FACTORS)
    if factors is None:
        return merged
    if not isinstance(factors, Mapping):
        raise ConfigError(f"gate_factors must map gate names to numbers, got {factors!r}")
    for gate, factor in factors.items():
        if gate not in GATE_FACTORS:
            raise unknown_name("gate in gate_factors", gate, GATE_FACTORS)
        merged[gate] = check_finite(f"gate_factors[{gate!r}]", factor, low=0, low_inclusive=False)
    return merged


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
        # ranked in float64 (exact for every float score): float32 would tie scores it cannot tell apart
        q = rank_normalise(scores[g].detach().double().cpu()) * factors.get(g, 1.0)
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
                   kept_params: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], target: float) -> int:
    """The number t of removed elements whose kept-parameter count is closest to ``target`` (on a tie, the larger
    t, whose count does not exceed the target).

    ``kept_params`` maps the kept count of each gate to the block's kept Linear parameters (monotone in each
    count); it is called once, with one count per candidate t = 0 .. n as a 1-D tensor per gate, and returns the
    parameter count of every candidate (plain arithmetic on the counts does that).

    Example:
        >>> gates, order = order_block_elements({"a": torch.tensor([3., 1., 2.])}, {})
        >>> find_threshold(gates, {"a": 3}, order, lambda kept: 10 * kept["a"], target=12)  # keep 1 of 3
        2
    """
    n = len(order)
    removed = torch.zeros(n + 1, len(gates), dtype=torch.long)  # removed[t, g]: removed from gate g among first t
    if n:
        removed[1:] = torch.nn.functional.one_hot(order[:, 0], len(gates)).cumsum(0)
    counts = torch.as_tensor(kept_params({g: sizes[g] - removed[:, i] for i, g in enumerate(gates)}))
    counts = counts.to(torch.float64).expand(n + 1)
    fits = torch.nonzero(counts <= target)
    if not len(fits):
        return n
    t = int(fits[0])  # the smallest t with count(t) <= target (counts fall with t)
    if t > 0 and abs(float(counts[t - 1]) - target) < abs(float(counts[t]) - target):
        return t - 1
    return t


def soft_masks(gates: list[str], sizes: Mapping[str, int], order: torch.Tensor, t: int,
               tau: float) -> dict[str, torch.Tensor]:
    """Gate values for threshold ``t`` and temperature ``tau`` (τ = 0: a hard 0/1 step).

    Example:
        >>> gates, order = order_block_elements({"a": torch.tensor([3., 1., 2.])}, {})
        >>> soft_masks(gates, {"a": 3}, order, t=1, tau=0.0)["a"].tolist()
        [1.0, 0.0, 1.0]
    """
    n = len(order)
    j = torch.arange(1, n + 1, dtype=torch.float64)
    if tau > 0 and n > 0:
        m = torch.sigmoid(LN9 * (j - t - 0.5) / (tau * n))
    else:
        m = (j > t).double()
    counts = [int(sizes[g]) for g in gates]
    starts = torch.tensor(counts).cumsum(0) - torch.tensor(counts)
    flat = torch.ones(sum(counts), dtype=torch.float32)
    if n:
        flat[starts[order[:, 0]] + order[:, 1]] = on_side_of_half(m.float(), j > t)
    return dict(zip(gates, flat.split(counts)))
