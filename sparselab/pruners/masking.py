"""Fixed and gradually growing unstructured masks as training plug-ins.

:class:`FixedMask` keeps a mask fixed while training continues (fine-tuning after pruning): gradients and weights
are multiplied by the mask around every optimizer step, so masked weights stay exactly zero.
:class:`GradualMagnitude` is Zhu & Gupta's gradual magnitude pruning with the cubic schedule
s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(t_1 − t_0))³.

Example:
    >>> import torch
    >>> from sparselab.structure import magnitude_masks
    >>> net = torch.nn.Linear(20, 5)
    >>> pruner = FixedMask(magnitude_masks(net, 0.8))
    >>> round(pruner.sparsity(), 2)
    0.8
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..callbacks import Pruner, TrainState
from ..errors import ConfigError, check_ratio
from ..structure.unstructured import apply_masks, magnitude_masks, sparsity


class FixedMask(Pruner):
    """Train with a fixed unstructured mask (True = kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self.masks = {k: v.bool() for k, v in masks.items()}

    def sparsity(self) -> float:
        return sparsity(self.masks)

    def _check(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, m in self.masks.items():
            if name not in params or params[name].shape != m.shape:
                raise ConfigError(f"mask {name!r} {tuple(m.shape)} does not fit the model")

    def on_fit_start(self, state: TrainState) -> None:
        self._check(state.model)
        self.masks = {k: v.to(state.device) for k, v in self.masks.items()}
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


class GradualMagnitude(FixedMask):
    """Global magnitude pruning on Zhu & Gupta's cubic schedule from ``start_epoch`` to ``end_epoch``, a mask
    update every ``every`` steps; the masked weights stay zero in between and after."""

    def __init__(self, model: nn.Module, sparsity: float, start_epoch: int = 0, end_epoch: int = 10,
                 every: int = 100, initial_sparsity: float = 0.0):
        self.target = check_ratio("sparsity", sparsity)
        self.initial = check_ratio("initial_sparsity", initial_sparsity)
        if not 0 <= start_epoch < end_epoch:
            raise ConfigError(f"need 0 <= start_epoch < end_epoch, got {start_epoch}, {end_epoch}")
        self.start_epoch, self.end_epoch, self.every = start_epoch, end_epoch, max(1, int(every))
        super().__init__(magnitude_masks(model, 0.0))

    def config(self) -> dict[str, Any]:  # the masks change as it prunes: the schedule defines the run
        return {"sparsity": self.target, "initial_sparsity": self.initial, "start_epoch": self.start_epoch,
                "end_epoch": self.end_epoch, "every": self.every}

    def target_at(self, step: int, steps_per_epoch: int) -> float:
        t0, t1 = self.start_epoch * steps_per_epoch, self.end_epoch * steps_per_epoch
        if step < t0:
            return 0.0
        frac = min(1.0, (step - t0) / max(t1 - t0, 1))
        return self.target + (self.initial - self.target) * (1 - frac) ** 3

    def on_fit_start(self, state: TrainState) -> None:
        self._check(state.model)
        self.masks = {k: v.to(state.device) for k, v in self.masks.items()}

    def after_step(self, state: TrainState) -> None:
        t1 = self.end_epoch * state.steps_per_epoch
        due = state.step % self.every == 0 or state.step == t1
        if due and state.step >= self.start_epoch * state.steps_per_epoch and state.step <= t1:
            s = self.target_at(state.step, state.steps_per_epoch)
            self.masks = magnitude_masks(state.model, s)
            state.history.log_metric("sparsity", self.sparsity(), step=state.step, epoch=state.epoch)
        apply_masks(state.model, self.masks)
