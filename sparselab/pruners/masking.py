"""Fixed and gradually growing unstructured masks as training plug-ins, in one vocabulary: a score per weight, a
sparsity schedule, and :func:`~sparselab.structure.unstructured.masks_from_scores`.

:class:`FixedMask` keeps a mask fixed while training continues (fine-tuning after pruning): gradients and weights
are multiplied by the mask around every optimizer step, so masked weights stay exactly zero.
:class:`ScheduledMasks` re-computes the mask from its :meth:`~ScheduledMasks.scores` on a
:class:`~sparselab.pruners.schedules.CubicSparsity` schedule (Zhu & Gupta's s_t = s_f + (s_i − s_f)(1 − (t −
t_0)/(t_1 − t_0))³): :class:`GradualMagnitude` scores |w|, :class:`MovementPruning` scores −Σ_t w·∂L/∂w (Sanh et al.,
2020: weights moving away from zero are kept).

Example:
    >>> import torch
    >>> from sparselab.structure import magnitude_masks
    >>> net = torch.nn.Linear(20, 5)
    >>> pruner = FixedMask(magnitude_masks(net, 0.8))
    >>> round(pruner.sparsity(), 2)
    0.8
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from ..callbacks import Pruner, TrainState
from ..errors import ConfigError, check_positive_int, check_ratio
from ..structure.unstructured import (
    apply_masks,
    check_masks,
    magnitude_masks,
    masks_from_scores,
    prunable_weights,
    sparsity,
)
from .schedules import CubicSparsity


class FixedMask(Pruner):
    """Train with a fixed unstructured mask (True = kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        if not isinstance(masks, Mapping):
            raise ConfigError(f"FixedMask needs a dict of weight name -> boolean mask (True = kept), got "
                              f"{type(masks).__name__}")
        self.masks = {}
        for k, v in masks.items():
            v = torch.as_tensor(v)
            if v.dtype != torch.bool and not bool(((v == 0) | (v == 1)).all()):
                # .bool() would keep every nonzero entry: scores or weights passed as a mask would prune nothing
                raise ConfigError(f"FixedMask: the mask of {k} must be boolean (True = kept) or 0/1, got values "
                                  f"other than 0 and 1 (pass masks, e.g. from sparselab.structure.magnitude_masks, "
                                  f"not scores or weights)")
            self.masks[k] = v.bool()

    def sparsity(self) -> float:
        return sparsity(self.masks)

    def on_fit_start(self, state: TrainState) -> None:
        masks = check_masks(state.model, self.masks, f"{type(self).__name__}'s masks")
        self.masks = {k: v.to(state.device) for k, v in masks.items()}
        apply_masks(state.model, self.masks)

    @torch.no_grad()
    def after_backward(self, state: TrainState) -> None:
        params = dict(state.model.named_parameters())
        for name, m in self.masks.items():
            g = params[name].grad
            if g is not None:
                g.mul_(m.to(g.dtype))

    def after_step(self, state: TrainState) -> None:
        apply_masks(state.model, self.masks)

    def config(self) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256()
        for k in sorted(self.masks):
            digest.update(k.encode())
            digest.update(self.masks[k].cpu().numpy().tobytes())
        return {"masks_sha256": digest.hexdigest()[:16], "sparsity": self.sparsity()}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.cpu() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {k: v.bool() for k, v in state["masks"].items()}


class ScheduledMasks(FixedMask):
    """A mask re-computed from :meth:`scores` (highest kept, ranked across all layers) on a
    :class:`~sparselab.pruners.schedules.CubicSparsity` schedule from ``start_epoch`` to ``end_epoch``, an update every
    ``every`` steps; the masked weights stay zero in between and after. Subclasses define :meth:`scores`."""

    def __init__(self, model: nn.Module, sparsity: float, start_epoch: int = 0, end_epoch: int = 10,
                 every: int = 100, initial_sparsity: float = 0.0):
        self.target = check_ratio("sparsity", sparsity)
        self.initial = check_ratio("initial_sparsity", initial_sparsity)
        if self.initial > self.target:
            raise ConfigError(f"initial_sparsity {self.initial} exceeds the final sparsity {self.target}: the "
                              f"schedule would bring pruned weights back; need initial_sparsity <= sparsity")
        start_epoch, end_epoch, every = (int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
                                         for v in (start_epoch, end_epoch, every))
        check_positive_int("start_epoch", start_epoch, allow_zero=True)
        check_positive_int("end_epoch", end_epoch)
        check_positive_int("every", every)
        self.schedule = CubicSparsity(final=self.target, start=start_epoch, end=end_epoch, every=every,
                                      initial=self.initial)
        self.start_epoch, self.end_epoch, self.every = start_epoch, end_epoch, self.schedule.every
        super().__init__(magnitude_masks(model, 0.0))

    def scores(self, state: TrainState) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:  # the masks change as it prunes: the schedule defines the run
        return {"sparsity": self.target, "initial_sparsity": self.initial, "start_epoch": self.start_epoch,
                "end_epoch": self.end_epoch, "every": self.every}

    def target_at(self, step: int, steps_per_epoch: int) -> float:
        return self.schedule.value(step, steps_per_epoch)

    def on_fit_start(self, state: TrainState) -> None:
        masks = check_masks(state.model, self.masks, f"{type(self).__name__}'s masks")
        self.masks = {k: v.to(state.device) for k, v in masks.items()}
        if state.epochs < self.end_epoch:
            warnings.warn(f"training for {state.epochs} epochs ends before {type(self).__name__} reaches its "
                          f"sparsity {self.target} (end_epoch {self.end_epoch}); its masks end below that "
                          f"sparsity", stacklevel=3)

    def after_step(self, state: TrainState) -> None:
        if self.schedule.is_update(state.step, state.steps_per_epoch):
            s = self.target_at(state.step, state.steps_per_epoch)
            params = dict(state.model.named_parameters())
            # scores kept on the CPU (movement) give CPU masks: each mask goes where its weight is
            self.masks = {k: v.to(params[k].device)
                          for k, v in masks_from_scores(self.scores(state), s, "global").items()}
            state.history.log_metric("sparsity", self.sparsity(), step=state.step, epoch=state.epoch)
        apply_masks(state.model, self.masks)


class GradualMagnitude(ScheduledMasks):
    """Global magnitude pruning on Zhu & Gupta's cubic schedule (score |w|)."""

    def scores(self, state: TrainState) -> dict[str, torch.Tensor]:
        # masked weights score 0: the step just taken may have moved them (momentum), and the schedule only grows,
        # so a pruned weight must not outrank a kept one and come back with a value it was never trained to
        return {n: w.detach().abs() * self.masks[n].to(w.device) if n in self.masks else w.detach().abs()
                for n, w in prunable_weights(state.model).items()}


class MovementPruning(ScheduledMasks):
    """Movement pruning (Sanh, Wolf & Rush, 2020) with hard masks: the score of a weight is −Σ_t w·∂L/∂w over
    every optimizer step so far (positive when the weight moves away from zero), ranked across all layers on the
    cubic schedule. A step with non-finite gradients adds nothing.

    Example:
        >>> import torch, sparselab as sl
        >>> data = sl.data.load("digits", image_size=8, limit=256)
        >>> model = sl.models.create("lenet_300_100", image_size=8)
        >>> pruner = MovementPruning(model, 0.9, start_epoch=0, end_epoch=2, every=2)
        >>> _ = sl.fit(model, data, epochs=3, batch_size=64, pruner=pruner, progress=False)
        >>> round(pruner.sparsity(), 3)
        0.9
    """

    def __init__(self, model: nn.Module, sparsity: float, start_epoch: int = 0, end_epoch: int = 10,
                 every: int = 100, initial_sparsity: float = 0.0):
        super().__init__(model, sparsity, start_epoch, end_epoch, every, initial_sparsity)
        self.movement = {n: torch.zeros_like(w, dtype=torch.float32, device="cpu")
                         for n, w in prunable_weights(model).items()}

    @torch.no_grad()
    def after_backward(self, state: TrainState) -> None:
        params = dict(state.model.named_parameters())
        terms = {n: -(params[n].detach() * params[n].grad).float().cpu()
                 for n in self.movement if params[n].grad is not None}
        if all(bool(torch.isfinite(t).all()) for t in terms.values()):
            for n, t in terms.items():
                self.movement[n] += t
        super().after_backward(state)

    def scores(self, state: TrainState) -> dict[str, torch.Tensor]:
        return dict(self.movement)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "movement": {k: v.clone() for k, v in self.movement.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.movement = {k: v.clone() for k, v in state["movement"].items()}
