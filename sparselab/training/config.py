"""Training hyper-parameters as one self-documenting dataclass.

Example:
    >>> cfg = TrainConfig(epochs=3, lr=5e-4)
    >>> cfg.replace(batch_size=64).batch_size
    64
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..configs import from_options
from ..errors import ConfigError, check_bool, check_finite, check_positive_int, check_ratio, check_seed, unknown_name

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
WEIGHT_DECAY_ON = ("weights", "all")
AMP_DTYPES = ("bfloat16", "float16", "bf16", "fp16")
NONFINITE = ("raise", "skip")


def checked_replace(obj: Any, kind: str, **changes: Any) -> Any:
    """``dataclasses.replace`` that names an unknown field (with close matches) instead of a TypeError."""
    return from_options(type(obj), changes, kind, base=obj)


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`sparselab.fit` trains.

    Attributes:
        epochs: passes over the training split.
        batch_size: global batch size of one forward/backward pass (split evenly over processes under torchrun).
        accumulate_steps: gradient accumulation: one optimizer step per this many batches, so the effective batch
            is ``batch_size * accumulate_steps``. Every schedule (learning rate, warm-up, ``max_steps_per_epoch``,
            checkpoints, pruner hooks after the step) counts optimizer steps.
        repeated_aug: timm's ``RepeatAugSampler`` with this many repeats (1: off; the DeiT recipe uses 3): every
            image appears ``repeated_aug`` times per epoch with independent augmentations, and an epoch keeps the
            dataset's length (rounded down to a multiple of 256, as timm does).
        optimizer: ``adamw``, ``adam`` or ``sgd``.
        lr, weight_decay, momentum: optimizer settings (``momentum`` for SGD only).
        weight_decay_on: ``weights`` (biases, norms, 1-d tensors and timm's ``no_weight_decay()`` get none) or
            ``all`` (every parameter, as the HyperSparse reference's SGD).
        lr_schedule: ``constant``, ``cosine`` (to ``min_lr`` at the end) or ``step`` (× ``lr_gamma`` at each
            epoch in ``lr_milestones``); all after ``warmup_steps`` of linear warm-up.
        min_lr: the learning rate the cosine schedule ends at.
        label_smoothing: cross-entropy label smoothing, in [0, 1).
        mixup, cutmix: alpha of timm's Mixup / CutMix (0: off); with either on, the loss is soft-target
            cross-entropy and label smoothing goes into the mixed targets.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        seed: seeds model-independent randomness (data order, augmentation, dropout).
        drop_last: drop the last incomplete batch of an epoch.
        eval_split: ``val`` or ``test``: evaluated after every epoch (``val`` falls back to ``test``).
        eval_batch_size: batch size of evaluation passes.
        final_test: evaluate on the test split after the last epoch. Where the epochs evaluate the test split,
            the last epoch's test row is that result, unless an ``on_epoch_end`` hook changed the model after it.
        log_every: record the mean training loss every this many steps.
        checkpoint_every: also checkpoint every this many steps (epochs always end with one).
        max_steps_per_epoch: cap steps per epoch (quick runs); None: the whole training split.
        num_workers: DataLoader workers for datasets that are not in memory.
        amp: mixed precision; None = on for CUDA, off on the CPU (always float32 there).
        amp_dtype: ``bfloat16`` or ``float16`` (with a loss scaler) under AMP; None: bfloat16 where the GPU
            supports it, else float16.
        nonfinite: what a non-finite (NaN/inf) loss does: ``raise`` (stop with an error; the last checkpoint,
            written before, stays good) or ``skip`` (drop that optimizer step and go on; the History counts the
            skipped steps as ``skipped_steps``, together with the steps a float16 grad scaler skips after an
            overflow; neither counts in the train loss and accuracy).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; None picks CUDA when available.
    """

    epochs: int = 10
    batch_size: int = 128
    accumulate_steps: int = 1
    repeated_aug: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    weight_decay_on: str = "weights"
    momentum: float = 0.9
    lr_schedule: str = "constant"
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    drop_last: bool = True
    eval_split: str = "val"
    eval_batch_size: int = 512
    final_test: bool = True
    log_every: int = 10
    checkpoint_every: int | None = field(default=None, compare=False)
    max_steps_per_epoch: int | None = None
    num_workers: int = field(default=0, compare=False)
    amp: bool | None = None
    amp_dtype: str | None = None
    nonfinite: str = field(default="raise", compare=False)
    device: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accumulate_steps", "repeated_aug", "eval_batch_size", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("checkpoint_every", "max_steps_per_epoch"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr_schedule not in LR_SCHEDULES:
            raise unknown_name("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.amp_dtype is not None and self.amp_dtype not in AMP_DTYPES:
            raise unknown_name("amp_dtype", self.amp_dtype, AMP_DTYPES)
        if self.amp is False and self.amp_dtype is not None:
            raise ConfigError(f"amp_dtype={self.amp_dtype!r} applies under mixed precision only, but amp=False")
        if self.weight_decay_on not in WEIGHT_DECAY_ON:
            raise unknown_name("weight_decay_on", self.weight_decay_on, WEIGHT_DECAY_ON)
        if self.eval_split not in ("val", "test"):
            raise ConfigError(f"eval_split must be 'val' or 'test', got {self.eval_split!r}")
        check_finite("lr", self.lr, low=0, low_inclusive=False)
        check_finite("weight_decay", self.weight_decay, low=0)
        check_finite("momentum", self.momentum, low=0, high=1)
        check_finite("lr_gamma", self.lr_gamma, low=0, low_inclusive=False)
        check_finite("min_lr", self.min_lr, low=0)
        if not self.min_lr < self.lr:
            raise ConfigError(f"min_lr must lie in [0, lr={self.lr}), got {self.min_lr}")
        if self.grad_clip is not None:
            check_finite("grad_clip", self.grad_clip, low=0, low_inclusive=False)
        check_positive_int("warmup_steps", self.warmup_steps, allow_zero=True)
        if self.nonfinite not in NONFINITE:
            raise unknown_name("nonfinite (what a NaN/inf loss does)", self.nonfinite, NONFINITE)
        check_ratio("label_smoothing", self.label_smoothing)
        check_finite("mixup", self.mixup, low=0)
        check_finite("cutmix", self.cutmix, low=0)
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(f"mixup/cutmix need an even batch_size, got {self.batch_size}")
        for name in ("drop_last", "final_test"):
            check_bool(name, getattr(self, name))
        check_bool("amp", self.amp, optional=True)
        check_seed("seed", self.seed)
        if self.device is not None and not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0', or None, got {self.device!r}")
        object.__setattr__(self, "lr_milestones", _milestones(self.lr_milestones))
        self._check_schedule_options()

    def _check_schedule_options(self) -> None:
        """Refuse learning-rate options that the chosen ``lr_schedule`` (or momentum that the optimizer) would
        ignore."""
        if self.lr_schedule == "step" and not self.lr_milestones:
            raise ConfigError("lr_schedule='step' needs lr_milestones (the epochs at which the lr is multiplied "
                              "by lr_gamma)")
        if self.lr_schedule != "step" and (self.lr_milestones or self.lr_gamma != 0.1):
            raise ConfigError(f"lr_milestones and lr_gamma apply to lr_schedule='step' only, but lr_schedule="
                              f"{self.lr_schedule!r} (got lr_milestones={list(self.lr_milestones)}, "
                              f"lr_gamma={self.lr_gamma})")
        if self.optimizer != "sgd" and self.momentum != 0.9:
            raise ConfigError(f"momentum applies to optimizer='sgd' only, but optimizer={self.optimizer!r} (got "
                              f"momentum={self.momentum}); {self.optimizer} keeps its own moment estimates")
        if self.lr_schedule != "cosine" and self.min_lr != 0:
            raise ConfigError(f"min_lr applies to lr_schedule='cosine' only, but lr_schedule={self.lr_schedule!r} "
                              f"(got min_lr={self.min_lr})")

    @property
    def effective_batch_size(self) -> int:
        """Images per optimizer step: ``batch_size * accumulate_steps``."""
        return self.batch_size * self.accumulate_steps

    def check_schedule_length(self) -> None:
        """Refuse ``lr_milestones`` at or after the last epoch: the learning rate would never drop there.
        :func:`sparselab.fit` checks this before the first step, presets where they are made.

        Example:
            >>> TrainConfig(epochs=3, lr_schedule="step", lr_milestones=(1, 3)).check_schedule_length()
            Traceback (most recent call last):
            ...
            sparselab.errors.ConfigError: lr_milestones [3] lie at or after the end of training (epochs=3, \
counted from 0): the learning rate would never drop there; give milestones below 3, or more epochs
        """
        late = [m for m in self.lr_milestones if m >= self.epochs]
        if self.lr_schedule == "step" and late:
            raise ConfigError(f"lr_milestones {late} lie at or after the end of training (epochs={self.epochs}, "
                              f"counted from 0): the learning rate would never drop there; give milestones below "
                              f"{self.epochs}, or more epochs")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise with close matches."""
        return checked_replace(self, "training option", **changes)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that must agree between a checkpoint and a resumed run."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}


def _milestones(value: Any) -> tuple[int, ...]:
    """``lr_milestones`` as a tuple of epochs (integers >= 0); a fraction or a single number is refused rather
    than truncated or misread."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"lr_milestones must be a list of epochs (integers >= 0), got {value!r}")
    out = []
    for m in value:
        if type(m).__module__ == "numpy" and hasattr(m, "item"):
            m = m.item()
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ConfigError(f"lr_milestones must be epochs (integers >= 0), got {m!r} in {value!r}")
        out.append(m)
    return tuple(out)
