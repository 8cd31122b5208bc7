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

import torch

from ..callbacks import Callback, TrainState
from ..errors import ConfigError


class OptimizerHandoff(Callback):
    """Captures the optimizer's state at the end of a fit; :meth:`resume` gives a callback that loads it into the
    next fit's optimizer before its first step (a resumed run keeps its checkpointed optimizer instead).

    What is handed on is the per-parameter state (momentum buffers, moment estimates); the hyper-parameters
    (learning rate, weight decay, momentum, ...) stay those the next fit is given. Both fits must use the same
    optimizer (``kind``, its class name, is recorded with the state) over the same parameters in the same order:
    ``names`` records them (per parameter group, the model's parameter names), and a next fit whose parameters
    differ in name, order or shape is refused, as is any state tensor whose shape is not its parameter's."""

    def __init__(self, saved: dict[str, Any] | None = None, kind: str | None = None,
                 names: list[list[str]] | None = None):
        self.saved = saved
        self.kind = kind
        self.names = names
        self._load = saved is not None

    def resume(self) -> "OptimizerHandoff":
        """A callback for the next fit that starts from the captured state."""
        if self.saved is None:
            raise ConfigError("OptimizerHandoff has captured nothing yet: pass it to the first fit as a callback")
        return OptimizerHandoff(self.saved, self.kind, self.names)

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
        _check_parameters(self.saved, self.names, _names(state), optimizer)
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
        self.names = _names(state)


#: the name of a parameter the optimizer holds but the model does not (a probe head or gate added by a callback)
OUTSIDE = "(outside the model)"


def _names(state: TrainState) -> list[list[str]]:
    """The model's name of each of the optimizer's parameters, per parameter group."""
    by_id = {id(p): name for name, p in state.model.named_parameters()}
    return [[by_id.get(id(p), OUTSIDE) for p in g["params"]] for g in state.optimizer.param_groups]


def _check_parameters(saved: dict[str, Any], names: list[list[str]] | None, now: list[list[str]],
                      optimizer: Any) -> None:
    """Refuse a hand-over into other parameters: torch loads optimizer state by position and checks only the
    number of parameters per group, so another order or shape would be taken without error."""
    if names is not None and names != now:
        def first_difference() -> str:
            for i, (a, b) in enumerate(zip(names, now)):
                for j, (x, y) in enumerate(zip(a, b)):
                    if x != y:
                        return f"group {i}, parameter {j}: {x} in the handed-over state, {y} now"
                if len(a) != len(b):
                    return f"group {i} holds {len(a)} parameters in the handed-over state, {len(b)} now"
            return f"{len(names)} parameter groups in the handed-over state, {len(now)} now"
        raise ConfigError(f"the handed-over optimizer state belongs to other parameters than this fit's "
                          f"({first_difference()}): hand it on to a fit of the same model, with the same "
                          f"trainable parameters and parameter groups")
    groups = saved.get("param_groups", []) if isinstance(saved, dict) else []
    held = saved.get("state", {}) if isinstance(saved, dict) else {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in groups for i in g.get("params", [])]
    flat = [n for group in now for n in group]
    wrong = []
    for k, (i, p) in enumerate(zip(ids, params)):
        for key, value in held.get(i, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                wrong.append(f"{flat[k]} {tuple(p.shape)} holds {key} {tuple(value.shape)}")
                break
    if wrong:
        shown = ", ".join(wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else "")
        raise ConfigError(f"the handed-over optimizer state does not fit the shapes of this fit's parameters "
                          f"({shown}): hand it on to a fit of the same model, built with the same options")
