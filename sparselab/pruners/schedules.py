"""Schedules: tiny objects that answer "is this an update step?" and "what target now?".

Example:
    >>> s = P3BSchedule(warmup=2, sparsify=6, finalize=12, updates_per_epoch=3)
    >>> steps = s.steps(steps_per_epoch=30)
    >>> steps.start, steps.sparse, steps.final, steps.interval
    (60, 180, 360, 10)
    >>> round(steps.ramp(60), 4), steps.ramp(179), steps.tau(180), steps.tau(360)
    (0.0083, 1.0, 0.1, 0.0)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_finite, check_positive_int


@dataclass(frozen=True)
class P3BSchedule:
    """P3B's four phases, in epochs (reference defaults: 5 / 25 / 50, ~3 mask updates per epoch).

    - dense warm-up until epoch ``warmup`` (probes train; no scores accumulated);
    - sparsify until epoch ``sparsify``: mask updates every U steps, the applied keep ratio ramps to the goal;
    - sharpen until epoch ``finalize``: the soft-mask temperature τ decays linearly from ``tau`` to ``tau_min``
      (default 0);
    - finalize at the end of epoch ``finalize``: one last update with a hard threshold.
    """

    warmup: int = 5
    sparsify: int = 25
    finalize: int = 50
    updates_per_epoch: int = 3
    tau: float = 0.1
    tau_min: float = 0.0

    def __post_init__(self) -> None:
        for name in ("warmup", "sparsify", "finalize"):
            check_positive_int(name, getattr(self, name), allow_zero=True)
        check_positive_int("updates_per_epoch", self.updates_per_epoch)
        check_finite("tau", self.tau, low=0)  # τ = inf would hold every soft mask at 0.5
        check_finite("tau_min", self.tau_min, low=0)
        if not (0 <= self.warmup < self.sparsify <= self.finalize):
            raise ConfigError(f"need 0 <= warmup < sparsify <= finalize (epochs), got warmup={self.warmup}, "
                              f"sparsify={self.sparsify}, finalize={self.finalize}")
        if self.updates_per_epoch < 1:
            raise ConfigError(f"updates_per_epoch must be >= 1, got {self.updates_per_epoch}")
        if not (0 <= self.tau_min <= self.tau):  # also rejects NaN
            raise ConfigError(f"need 0 <= tau_min <= tau, got tau={self.tau}, tau_min={self.tau_min}")

    def steps(self, steps_per_epoch: int) -> "P3BSteps":
        return P3BSteps(self.warmup * steps_per_epoch, self.sparsify * steps_per_epoch,
                        self.finalize * steps_per_epoch, max(1, steps_per_epoch // self.updates_per_epoch),
                        self.tau, self.tau_min)


@dataclass(frozen=True)
class P3BSteps:
    """The schedule in optimizer steps: ``start`` (t_start), ``sparse`` (t_sparse), ``final`` (t_final)."""

    start: int
    sparse: int
    final: int
    interval: int
    tau0: float
    tau_min: float = 0.0

    def in_window(self, step: int) -> bool:
        """Scores accumulate after optimizer steps ``start < step <= final``."""
        return self.start < step <= self.final

    def is_update(self, step: int) -> bool:
        """Masks are updated every ``interval`` steps inside the window (the finalisation is separate)."""
        return self.start < step < self.final and (step - self.start) % self.interval == 0

    def ramp(self, step: int) -> float:
        """r(t) = clip((t + 1 − t_start) / (t_sparse − t_start), 0, 1)."""
        return min(1.0, max(0.0, (step + 1 - self.start) / max(self.sparse - self.start, 1)))

    def tau(self, step: int) -> float:
        """τ(t): ``tau0`` until t_sparse, then linearly to ``tau_min`` at t_final."""
        if step < self.sparse:
            return self.tau0
        if step >= self.final:
            return self.tau_min
        frac = (step - self.sparse) / max(self.final - self.sparse, 1)
        return self.tau_min + (self.tau0 - self.tau_min) * (1 - frac)


@dataclass(frozen=True)
class CubicSparsity:
    """Zhu & Gupta's cubic sparsity ramp s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(t_1 − t_0))³ from epoch ``start``
    to epoch ``end`` (0 before ``start``), with a mask update every ``every`` steps and at the end.

    Example:
        >>> s = CubicSparsity(final=0.9, start=0, end=10, every=5)
        >>> s.value(0, 10), round(s.value(50, 10), 4), s.value(100, 10), s.is_update(50, 10), s.is_update(51, 10)
        (0.0, 0.7875, 0.9, True, False)
    """

    final: float
    start: int = 0
    end: int = 10
    every: int = 100
    initial: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ConfigError(f"need 0 <= start_epoch < end_epoch, got {self.start}, {self.end}")

    def value(self, step: int, steps_per_epoch: int) -> float:
        t0, t1 = self.start * steps_per_epoch, self.end * steps_per_epoch
        if step < t0:
            return 0.0
        frac = min(1.0, (step - t0) / max(t1 - t0, 1))
        return self.final + (self.initial - self.final) * (1 - frac) ** 3

    def is_update(self, step: int, steps_per_epoch: int) -> bool:
        t1 = self.end * steps_per_epoch
        due = step % self.every == 0 or step == t1
        return due and self.start * steps_per_epoch <= step <= t1


@dataclass(frozen=True)
class ExponentialLambda:
    """ART's regularization strength λ_e = λ_init · η^e for ART epoch e (METHODS §2.2).

    Example:
        >>> ExponentialLambda(1e-3, 2.0).value(3)
        0.008
    """

    lam_init: float
    eta: float

    def value(self, art_epoch: int) -> float:
        return self.lam_init * self.eta ** art_epoch
