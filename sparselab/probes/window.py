"""A training plug-in that sums a measurement over a window of steps and writes it out periodically.

Subclasses keep ``count`` (batches in the current window) and implement :meth:`log`, which writes the window into
the History and starts a new one.

Example:
    >>> class Steps(WindowedRecorder):
    ...     def __init__(self):
    ...         super().__init__(log_every=None)
    ...         self.count = 0
    ...     def log(self, state):
    ...         self.count = 0
"""
from __future__ import annotations

from numbers import Integral

from ..callbacks import Callback, TrainState
from ..errors import ConfigError


class WindowedRecorder(Callback):
    """Writes its window every ``log_every`` optimizer steps (when given) and at every epoch end."""

    count: int = 0

    def __init__(self, log_every: int | None = None):
        if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, Integral)
                                      or log_every < 1):
            raise ConfigError(f"log_every must be an integer >= 1 (write the window every this many optimizer "
                              f"steps) or None (at epoch ends only), got {log_every!r}")
        self.log_every = None if log_every is None else int(log_every)

    def after_step(self, state: TrainState) -> None:
        if self.log_every and state.step % self.log_every == 0:
            self.log(state)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.count:
            self.log(state)

    def log(self, state: TrainState) -> None:
        raise NotImplementedError
