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
    next fit's optimizer before its first step (a resumed run keeps its checkpointed optimizer instead).

    What is handed on is the per-parameter state (momentum buffers, moment estimates); the hyper-parameters
    (learning rate, weight decay, momentum, ...) stay those the next fit is given. Both fits must use the same
    optimizer (``kind``, its class name, is recorded with the state)."""

    def __init__(self, saved: dict[str, Any] | None = None, kind: str | None = None):
        self.saved = saved
        self.kind = kind
        self._load = saved is not None

    def resume(self) -> "OptimizerHandoff":
        """A callback for the next fit that starts from the captured state."""
        if self.saved is None:
            raise ConfigError("OptimizerHandoff has captured nothing yet: pass it to the first fit as a callback")
        return OptimizerHandoff(self.saved, self.kind)

    def on_fit_start(self, state: TrainState) -> None:
        if not self._load or state.step > 0:
            return
        optimizer = state.optimizer
        kind = type(optimizer).__name__
        saved_groups = self.saved.get("param_groups", []) if isinstance(self.saved, dict) else []
        if (self.kind is not None and self.kind != kind) or any(
                set(g) != set(now) for g, now in zip(saved_groups, optimizer.param_groups)):
            raise ConfigError(f"the handed-over optimizer state comes from {self.kind or 'another optimizer'}, but "
                              f"this fit builds {kind}: pass the same optimizer to both fits")
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(copy.deepcopy(self.saved))
        except ValueError as exc:
            raise ConfigError(f"the handed-over optimizer state does not fit this optimizer: {exc}") from None
        for group, own in zip(optimizer.param_groups, settings):  # this fit's lr, weight decay, momentum, ...
            group.update(own)
        self._load = False

    def on_fit_end(self, state: TrainState) -> None:
        self.saved = copy.deepcopy(state.optimizer.state_dict())
        self.kind = type(state.optimizer).__name__
