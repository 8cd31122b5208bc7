"""Within-block criteria of P3B: which elements of a block stay (METHODS §1.5). A criterion scores every gate
element, accumulated over the window between two mask updates; P3B ranks the elements of each block by it.

A criterion is a :class:`GateCriterion` registered by name, so that ``sl.P3B(model, 0.5, criterion="l1")`` and
the command line find it; :func:`register_criterion` adds new ones::

    @register_criterion("magnitude_sq")
    class SquaredMagnitude(GateCriterion):
        def scores(self, final):
            return weight_scores(self.structure, lambda name, w: w.detach().double().pow(2).cpu())

Example:
    >>> sorted(CRITERIA)
    ['l1', 'taylor', 'wanda']
    >>> create_criterion("taylor").needs_gate_grads
    True
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..callbacks import TrainState
from ..registry import Registry
from ..structure.gates import Gates
from ..structure.vit import ViTStructure

#: name → criterion class; filled by :func:`register_criterion`.
CRITERIA: Registry = Registry("criterion")
#: Class decorator: make a :class:`GateCriterion` available to P3B under a name.
register_criterion = CRITERIA.register


def create_criterion(criterion: "str | GateCriterion") -> "GateCriterion":
    """A fresh criterion from its registered name (an instance is passed through)."""
    if isinstance(criterion, GateCriterion):
        return criterion
    return CRITERIA.lookup(criterion)()


def weight_scores(structure: ViTStructure, values: Callable[[str, torch.Tensor], torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """Per gate element of every layer: ``values`` summed over the weights it switches off
    (:meth:`ViTStructure.gate_reduce`), keyed like the gates."""
    out = {}
    for i in range(structure.depth):
        for gate, v in structure.gate_reduce(i, values).items():
            out[Gates.key(i, gate)] = v
    return out


class GateCriterion:
    """Scores of the gate elements over a window of optimizer steps.

    P3B calls :meth:`attach` once, :meth:`collect` on every optimizer step inside a window (after the backward
    pass, while the gates still hold their gradients), :meth:`scores` at every mask update (``final``: the last
    two windows merged) and then :meth:`next_window`. ``count`` is the number of steps the current window holds;
    ``needs_gate_grads`` says whether the gates must compute gradients.
    """

    name = ""
    needs_gate_grads = False

    def __init__(self) -> None:
        self.count = 0
        self.count_prev = 0
        self.skipped_steps = 0

    def attach(self, structure: ViTStructure, gates: Gates) -> None:
        self.structure, self.gates = structure, gates

    def collect(self, state: TrainState) -> bool:
        """Add this step to the window; False when the step must not count (e.g. an overflowed fp16 step)."""
        return True

    def scores(self, final: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def end_step(self) -> None:
        """Called after every optimizer step, in a window or not (after :meth:`collect` when in one)."""

    def next_window(self) -> None:
        self.count_prev, self.count = self.count, 0

    def remove(self) -> None:
        """Detach whatever the criterion attached to the model (P3B calls it when it finalizes or is removed)."""

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "count_prev": self.count_prev, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.count_prev = state["count"], state["count_prev"]
        self.skipped_steps = state.get("skipped_steps", 0)


@register_criterion("taylor")
class TaylorCriterion(GateCriterion):
    """Σ over the window of (m·∂L/∂m)² per gate element m, divided by the window's step count (METHODS §1.5). A
    step the grad scaler skipped, or one with a non-finite term, adds nothing, not even to the count."""

    needs_gate_grads = True

    def attach(self, structure: ViTStructure, gates: Gates) -> None:
        super().attach(structure, gates)
        self.sums_prev = self._zeros()[0]
        self._new_window()

    def _zeros(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Zero sums keyed and ordered like the gates, as views into one flat vector (also returned)."""
        sizes = {key: p.numel() for key, p in self.gates.values.items()}
        flat = torch.zeros(sum(sizes.values()), dtype=torch.float64)
        return dict(zip(sizes, flat.split(list(sizes.values())))), flat

    def _new_window(self) -> None:
        self.sums, flat = self._zeros()
        self._flat = (self.sums, flat)  # a step where every gate has a gradient adds to all sums at once

    def collect(self, state: TrainState) -> bool:
        present = [(key, p) for key, p in self.gates.values.items() if p.grad is not None]
        flat = torch.zeros(0, dtype=torch.float64)
        if present:  # one pass over all gates at once (per-gate ops would cost more than the arithmetic)
            values = torch.cat([p.detach().reshape(-1) for _, p in present])
            flat = (values * torch.cat([p.grad.reshape(-1) for _, p in present])).double().pow(2).cpu()
        if state.step_skipped or not bool(torch.isfinite(flat).all()):
            self.skipped_steps += 1
            return False
        owner, common = self._flat
        if owner is self.sums and len(present) == len(self.sums):  # every gate, in the sums' order
            common.add_(flat)
            return True
        for (key, _), t in zip(present, flat.split([p.numel() for _, p in present])):
            self.sums[key] += t.view_as(self.sums[key])
        return True

    def scores(self, final: bool) -> dict[str, torch.Tensor]:
        if final:
            n = max(self.count + self.count_prev, 1)
            return {k: (self.sums[k] + self.sums_prev[k]) / n for k in self.sums}
        n = max(self.count, 1)
        return {k: v / n for k, v in self.sums.items()}

    def next_window(self) -> None:
        self.sums_prev, self.count_prev = self.sums, self.count
        self._new_window()
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "taylor": self.sums, "taylor_prev": self.sums_prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for mine, saved in ((self.sums, state["taylor"]), (self.sums_prev, state["taylor_prev"])):
            if set(saved) != set(mine):
                raise ValueError(f"the saved Taylor sums cover other gates ({sorted(set(saved) ^ set(mine))[:4]} "
                                 "differ): a checkpoint of another model or structure")
            for k, v in saved.items():
                mine[k].copy_(v)


@register_criterion("l1")
class L1Criterion(GateCriterion):
    """Structured L1 magnitude: the summed |w| of the weights each gate element switches off, read at the update
    (nothing accumulates)."""

    @torch.no_grad()
    def scores(self, final: bool) -> dict[str, torch.Tensor]:
        return weight_scores(self.structure, lambda name, w: w.abs().double().cpu())


__all__ = ["CRITERIA", "GateCriterion", "TaylorCriterion", "L1Criterion", "register_criterion", "create_criterion",
           "weight_scores"]
