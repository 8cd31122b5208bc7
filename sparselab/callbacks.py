"""The hook protocol of :func:`sparselab.fit`, at the bottom of the package: :class:`Callback` (every hook
optional), :class:`TrainState` (what a hook sees), and :class:`Pruner`, the callbacks that prune. Probes, timers and
optimizer hand-offs are plain callbacks; everything above (probes, pruners, the loop) imports this, nothing here
imports them.

Order of calls inside :func:`sparselab.fit`::

    on_fit_start
    for each epoch:
        for each batch:   forward -> extra_loss -> backward -> after_backward -> optimizer step -> after_step
        evaluation -> on_epoch_end
    on_fit_end

Example:
    >>> class CountSteps(Callback):
    ...     def __init__(self):
    ...         self.steps = 0
    ...     def after_step(self, state):
    ...         self.steps += 1
    ...     def state_dict(self):
    ...         return {"steps": self.steps}
    ...     def load_state_dict(self, state):
    ...         self.steps = state["steps"]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from ..history import History


@dataclass
class TrainState:
    """What a hook can see and change during :func:`sparselab.fit`.

    ``model`` is the plain module (never the DistributedDataParallel wrapper); ``data`` the DataBundle trained on.
    ``step`` counts optimizer steps done so far; ``epoch`` is 0-based. Setting ``should_stop = True`` ends training
    after the current epoch.

    Per (micro-)batch: ``inputs`` (mixed when mixup/cutmix is on), ``targets`` (class indices), ``soft_targets``
    (the mixed, smoothed target distributions the model is trained on, or None), ``outputs``, ``loss``. Anything
    that trains on the task (e.g. probe heads) should use :attr:`loss_targets` with ``label_smoothing`` through
    :func:`sparselab.training.task_loss`, so it sees the model's own targets. Per optimizer step:
    ``grad_scale`` (the loss scale of the gradients in ``.grad`` of parameters *outside* the optimizer; 1.0
    without a grad scaler) and ``step_skipped`` (the scaler skipped this step after an overflow).

    ``amp`` and ``amp_dtype`` are the run's autocast settings (fit sets them; None: :func:`sparselab.evaluate`'s
    defaults, on for CUDA in bfloat16 where supported): a plug-in that evaluates the model itself uses them, so it
    measures the precision the run trains and evaluates in.

    ``backward(term)`` back-propagates a loss term of the current micro-batch right away, weighted and scaled
    exactly as fit weights and scales the micro-batch's total loss: a plug-in whose term depends only on its own
    parameters (probe heads on detached features) can free that graph before the model's backward instead of
    keeping it alive until then. It does not check finiteness: return the term's value (detached) from
    ``extra_loss`` as well, so that a non-finite term still drops the step.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: "History"
    device: torch.device
    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    rank: int = 0
    world_size: int = 1
    data: Any = None
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    soft_targets: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    label_smoothing: float = 0.0
    accumulate_steps: int = 1
    grad_scale: float = 1.0
    step_skipped: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    should_stop: bool = False
    amp: bool | None = None
    amp_dtype: torch.dtype | None = None
    backward: Callable[[torch.Tensor], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_targets(self) -> torch.Tensor | None:
        """What the model's loss compares with: ``soft_targets`` under mixup/cutmix, else ``targets``."""
        return self.soft_targets if self.soft_targets is not None else self.targets


class Callback:
    """Base class of every training plug-in: no-op hooks and an empty state. Subclasses override what they
    need."""

    def on_fit_start(self, state: TrainState) -> None:
        """Called once after the model is on its device and the optimizer exists."""

    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjust the optimizer's parameter groups before it is built (add probe heads, freeze gates, ...). The model
        is on its device by then; parameters added here belong there and in its dtype already, since a resume loads
        their weights and optimizer state before :meth:`on_fit_start`."""
        return groups

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        """A term added to the loss of the current (micro-)batch (``state.outputs`` holds the logits), or None.
        With gradient accumulation it is called once per micro-batch and weighted like the loss."""
        return None

    def after_backward(self, state: TrainState) -> None:
        """Once per optimizer step, when the gradients of all its micro-batches are in ``.grad``: unscaled and
        all-reduced for the optimizer's parameters; parameters outside the optimizer still carry the loss scale
        ``state.grad_scale`` (and are not all-reduced)."""

    def after_step(self, state: TrainState) -> None:
        """The optimizer has stepped; ``state.step`` already counts this step."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After the epoch's evaluation; ``state.metrics`` holds its results."""

    def on_fit_end(self, state: TrainState) -> None:
        """Training is over."""

    def config(self) -> dict[str, Any]:
        """The settings that define what this plug-in does (JSON-able). A checkpoint records them, and resuming
        with other settings is refused, naming what differs."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Pruner(Callback):
    """A callback that prunes (P3B, ART, GMP, fixed masks): the same hooks; ``fit(model, data, pruner=...)`` takes
    one, ``callbacks=[...]`` any number of other callbacks."""
