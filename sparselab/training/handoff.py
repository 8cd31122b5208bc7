"""Carry one optimizer (its momentum buffers included) from one :func:`sparselab.fit` call into the next.

The HyperSparse reference trains warm-up and ART with one SGD optimizer; sparselab runs them as separate fits (one
warm-up is shared by every method), so the warm-up's optimizer state is captured at its end and restored at the
start of each method's fit.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=8)
    >>> model = sl.models.create("lenet_300_100", image_size=8)
    >>> handoff = OptimizerHandoff()
    >>> _ = sl.fit(model, data, epochs=1, optimizer="sgd", callbacks=[handoff], progress=False)
    >>> _ = sl.fit(model, data, epochs=1, optimizer="sgd", callbacks=[handoff.resume()], progress=False)
"""
from __future__ import annotations

import copy
from typing import Any

from ..callbacks import Callback, TrainState
from ..errors import ConfigError


class OptimizerHandoff(Callback):
    """Captures the optimizer's state at the end of a fit; :meth:`resume` gives a callback that loads it into the
    next fit's optimizer before its first step (a resumed run keeps its checkpointed optimizer instead)."""

    def __init__(self, saved: dict[str, Any] | None = None):
        self.saved = saved
        self._load = saved is not None

    def resume(self) -> "OptimizerHandoff":
        """A callback for the next fit that starts from the captured state."""
        if self.saved is None:
            raise ConfigError("OptimizerHandoff has captured nothing yet: pass it to the first fit as a callback")
        return OptimizerHandoff(self.saved)

    def on_fit_start(self, state: TrainState) -> None:
        if not self._load or state.step > 0:
            return
        try:
            state.optimizer.load_state_dict(copy.deepcopy(self.saved))
        except ValueError as exc:
            raise ConfigError(f"the handed-over optimizer state does not fit this optimizer: {exc}") from None
        self._load = False

    def on_fit_end(self, state: TrainState) -> None:
        self.saved = copy.deepcopy(state.optimizer.state_dict())
