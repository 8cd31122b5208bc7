"""Between-block allocations of P3B: how the global parameter budget is split into per-block keep ratios at each
mask update. Each is an :class:`Allocation` registered by name (``sl.P3B(model, 0.5, allocation="uniform")``);
:func:`register_allocation` adds new ones. The pure mathematics (soft clip, benefit scores, water-filling) lives
in :mod:`sparselab.pruners.allocation`.

- ``benefit`` (P3B): the measured block benefit of class-token and patch probes, soft-clipped per parameter, with
  momentum across updates, water-filled to the budget; owns the probes and their options;
- ``uniform``: the same keep ratio for every block;
- ``fixed``: a given keep-ratio profile, rescaled to the budget;
- ``global``: no per-block budget — one ranking across all blocks (``selection = "global"``).

Example:
    >>> sorted(ALLOCATIONS)
    ['benefit', 'fixed', 'global', 'uniform']
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from ..callbacks import TrainState
from ..configs import BenefitConfig, from_options
from ..errors import ConfigError
from ..probes.block_benefit import BlockBenefit
from ..registry import Registry
from ..structure.vit import ViTStructure
from .allocation import benefit_scores

#: name → allocation class; filled by :func:`register_allocation`.
ALLOCATIONS: Registry = Registry("allocation")
#: Class decorator: make an :class:`Allocation` available to P3B under a name.
register_allocation = ALLOCATIONS.register


class AllocationContext:
    """What an allocation sees at an update: the structure, the current hard masks (lazily), the blocks' dense
    Linear and block parameter counts, and whether this is the final update."""

    def __init__(self, structure: ViTStructure, masks: Callable[[], Any], dense_linear: torch.Tensor,
                 dense_block: torch.Tensor, final: bool, state: TrainState | None = None):
        self.structure, self._masks, self.final, self.state = structure, masks, final, state
        self.dense_linear, self.dense_block = dense_linear, dense_block

    def masks(self):
        return self._masks()


class Allocation:
    """Turns an update's context into per-block importances (water-filled to the budget by P3B) and the values
    to log per block. ``selection`` is ``per_block`` (P3B selects inside each block to its keep ratio) or
    ``global`` (one ranking across blocks; :meth:`importance` is not called)."""

    name = ""
    selection = "per_block"

    def attach(self, model, structure: ViTStructure, num_classes: int | None) -> None:
        self.structure = structure

    def importance(self, ctx: AllocationContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    # hooks P3B forwards (only the benefit allocation trains anything)
    def on_fit_start(self, state: TrainState) -> None: ...
    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return groups
    def extra_loss(self, state: TrainState, active: bool) -> torch.Tensor | None:
        return None
    def grad_params(self) -> list[torch.nn.Parameter]:
        return []
    def remove(self) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def create_allocation(allocation: "str | Allocation", **options: Any) -> "Allocation":
    """An allocation from its registered name and options (an instance is passed through unchanged)."""
    if isinstance(allocation, Allocation):
        return allocation
    return ALLOCATIONS.lookup(allocation)(**options)


@register_allocation("benefit")
class BenefitAllocation(Allocation):
    """P3B's allocation (METHODS §1.3–1.4): class-token and patch probes measure each block's benefit ΔΨ over the
    window; the benefit is scaled by ``benefit_scale`` (T), soft-clipped, divided by the ``remaining`` (or
    ``dense``) parameters, smoothed by ``momentum`` across updates and mixed with ``class_weight`` for the class
    probe. The probe options (``patch_probe``, ``probe_every``, ``probe_fraction``, ``probe_lr``,
    ``probe_weight_decay``) go to :class:`~sparselab.probes.BlockBenefit`. All of them are a
    :class:`~sparselab.configs.BenefitConfig` (``config``), changed by keyword ``options``.

    Example:
        >>> BenefitAllocation(momentum=0.5).config()["momentum"]
        0.5
    """

    def __init__(self, config: BenefitConfig | None = None, **options: Any):
        self.options = from_options(BenefitConfig, options, "benefit option", base=config or BenefitConfig())
        o = self.options
        self.patch_probe, self.benefit_scale, self.per_parameter = o.patch_probe, o.benefit_scale, o.per_parameter
        self.momentum, self.class_weight = o.momentum, o.class_weight
        self.probe_options = {"probe_every": o.probe_every, "probe_fraction": o.probe_fraction, "lr": o.probe_lr,
                              "weight_decay": o.probe_weight_decay}
        self._importance: dict[str, torch.Tensor] = {}
        self.probes: BlockBenefit | None = None

    def attach(self, model, structure: ViTStructure, num_classes: int | None) -> None:
        super().attach(model, structure, num_classes)
        if num_classes is None:
            raise ConfigError("P3B needs num_classes (the model has no num_classes attribute): pass num_classes=")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"P3B's num_classes must be an integer >= 2, got {num_classes!r}")
        self.probes = BlockBenefit(model, num_classes, patch_probe=self.patch_probe, structure=structure,
                                   **self.probe_options)
        self.probes.accumulate = False

    def importance(self, ctx: AllocationContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = ctx.structure
        logged: dict[str, torch.Tensor] = {}
        if self.per_parameter == "remaining":
            masks = ctx.masks()
            params = torch.tensor([s.block_params(b, masks) for b in s.blocks], dtype=torch.float64)
        else:
            params = ctx.dense_block
        means = self.probes.window_mean(merge_previous=ctx.final)
        self.probes.reset()
        scores: dict[str, torch.Tensor] = {}
        for variant in self.probes.variants:
            if variant not in means:
                # no batch of this probe in the window (probe_every): its last score is not mixed in, since an old
                # score lags the benefit it stands for (benchmarks/bench_p3b_probes.py), but it stays the momentum
                # term of the next measurement
                continue
            logged[f"benefit_{variant}"] = means[variant]
            u = benefit_scores(means[variant], params, self.benefit_scale)
            prev = self._importance.get(variant)
            scores[variant] = u if prev is None else self.momentum * u + (1 - self.momentum) * prev
            self._importance[variant] = scores[variant]
        logged.update({f"score_{v}": score for v, score in scores.items()})
        if not scores:
            raise RuntimeError("P3B update without any block-benefit measurement: no probe saw a batch in its window")
        if len(scores) == 2:
            mixed = self.class_weight * scores["cls"] + (1 - self.class_weight) * scores["patch"]
        else:  # class-token probes only, or no patch batch in this window: the class-token score decides alone
            mixed = next(iter(scores.values())).clone()
        logged["importance"] = mixed
        return mixed, logged

    def config(self) -> dict[str, Any]:
        return self.options.record()

    def on_fit_start(self, state: TrainState) -> None:
        self.probes.on_fit_start(state)

    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.probes.param_groups(groups)

    def extra_loss(self, state: TrainState, active: bool) -> torch.Tensor | None:
        self.probes.accumulate = active
        return self.probes.extra_loss(state)

    def grad_params(self) -> list[torch.nn.Parameter]:
        return list(self.probes.probes.parameters())

    def remove(self) -> None:
        self.probes.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"probes": self.probes.state_dict(), "importance": self._importance}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("probes") is not None:
            self.probes.load_state_dict(state["probes"])
        self._importance = {k: v.clone() for k, v in state.get("importance", {}).items()}


@register_allocation("uniform")
class UniformAllocation(Allocation):
    """The same keep ratio for every block."""

    def importance(self, ctx: AllocationContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.ones(len(ctx.structure.blocks), dtype=torch.float64), {}


@register_allocation("global")
class GlobalAllocation(Allocation):
    """No per-block budget: one ranking of every gate element across all blocks."""

    selection = "global"


@register_allocation("fixed")
class FixedAllocation(Allocation):
    """A given keep-ratio profile (one non-negative number per block, attention and MLP interleaved), rescaled to
    the budget by the water-filling."""

    def __init__(self, keep_ratios: Sequence[float] | None = None):
        if keep_ratios is not None:
            keep_ratios = _check_profile(keep_ratios)
        self.keep_ratios = keep_ratios

    def attach(self, model, structure: ViTStructure, num_classes: int | None) -> None:
        super().attach(model, structure, num_classes)
        keep = self.keep_ratios
        if keep is None or len(keep) != len(structure.blocks) or min(keep) < 0:
            raise ConfigError(f"allocation='fixed' needs keep_ratios: {len(structure.blocks)} non-negative numbers "
                              f"(one per block), got {keep!r}")
        if not all(math.isfinite(float(k)) for k in keep):
            raise ConfigError(f"keep_ratios must be finite numbers >= 0, got {list(keep)!r}")
        self.profile = torch.tensor(list(keep), dtype=torch.float64)

    def importance(self, ctx: AllocationContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.profile.clone(), {}

    def config(self) -> dict[str, Any]:
        return {"keep_ratios": list(map(float, self.keep_ratios))}


def _check_profile(keep_ratios: Any) -> tuple[float, ...]:
    """The keep-ratio profile of ``allocation='fixed'`` as floats: a sequence of finite numbers >= 0, at least one
    of them positive (an all-zero profile has no shape to rescale to the budget; the water-filling would fall back
    to a uniform allocation without a word)."""
    try:
        items = None if isinstance(keep_ratios, (str, bytes)) else list(keep_ratios)
    except TypeError:
        items = None
    if items is None:
        raise ConfigError(f"keep_ratios must be a sequence of numbers >= 0 (one per block), got {keep_ratios!r}")
    values = []
    for k in items:
        if isinstance(k, (bool, str, bytes)) or k is None:
            raise ConfigError(f"keep_ratios must be finite numbers >= 0 (one per block), got {items!r}")
        try:
            v = float(k)
        except (TypeError, ValueError):
            raise ConfigError(f"keep_ratios must be finite numbers >= 0 (one per block), got "
                              f"{items!r}") from None
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"keep_ratios must be finite numbers >= 0 (one per block), got {items!r}")
        values.append(v)
    if values and max(values) <= 0:
        raise ConfigError(f"keep_ratios are all 0: a profile needs at least one positive ratio to be rescaled to the "
                          f"parameter budget, got {items!r}")
    return tuple(values)


__all__ = ["ALLOCATIONS", "Allocation", "AllocationContext", "BenefitAllocation", "FixedAllocation",
           "GlobalAllocation", "UniformAllocation", "create_allocation", "register_allocation"]
