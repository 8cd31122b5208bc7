"""Input-activation norms of Linear layers per input channel, accumulated over a window of training steps — the
statistic activation-aware criteria (Wanda: |W|·‖X‖) need.

Forward pre-hooks add, for every training forward pass (model in train mode, gradients enabled), the squared
inputs summed over samples and tokens into a *pending* buffer; :meth:`ActivationNorms.commit` moves the pending
step into the window, :meth:`~ActivationNorms.discard` drops it (an overflowed fp16 step), and
:meth:`~ActivationNorms.next_window` starts a new window keeping the last one for a merged final read. Reading the
norms sums the windows over processes under torchrun. Evaluation and calibration passes (eval mode or no grad)
are not counted.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> norms = ActivationNorms({"lin": lin})
    >>> _ = lin(torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    >>> norms.commit()
    >>> norms.norms()["lin"].tolist()          # sqrt(Σx² / steps) per input channel
    [1.4142135623730951, 2.0, 0.0]
    >>> norms.remove()
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .. import runtime


class ActivationNorms:
    """Per-input-channel activation norms of ``modules`` (name → Linear) over a window of committed steps."""

    def __init__(self, modules: Mapping[str, nn.Linear], input_gates: Mapping[str, torch.Tensor] | None = None):
        self.modules = dict(modules)
        # a gate that scales a module's weight columns (gates on the weights): the input the gated network
        # effectively reads is x·gate, so that is what is measured
        self.input_gates = dict(input_gates or {})
        self.sums = self._zeros()
        self.sums_prev = self._zeros()
        self.pending = self._zeros()
        self.steps, self.steps_prev = 0, 0
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.modules.items()]

    def _zeros(self) -> dict[str, torch.Tensor]:
        return {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in self.modules.items()}

    def _hook(self, name: str):
        def fn(module: nn.Module, args) -> None:
            if module.training and torch.is_grad_enabled():
                x = args[0].detach()
                if name in self.input_gates:
                    x = x * self.input_gates[name].detach().to(x.dtype)
                self.pending[name] += x.reshape(-1, x.shape[-1]).double().pow(2).sum(0).cpu()
        return fn

    def commit(self) -> None:
        """Add the pending step (every forward pass since the last commit or discard) to the window."""
        for name, v in self.pending.items():
            self.sums[name] += v
        self.steps += 1
        self.discard()

    def discard(self) -> None:
        """Drop the pending step."""
        self.pending = self._zeros()

    def next_window(self) -> None:
        self.sums_prev, self.steps_prev = self.sums, self.steps
        self.sums, self.steps = self._zeros(), 0

    def norms(self, merge_previous: bool = False) -> dict[str, torch.Tensor]:
        """sqrt(Σ x² / steps) per input channel over the window (and the previous one with ``merge_previous``),
        summed over processes."""
        sums = {k: v + self.sums_prev[k] if merge_previous else v.clone() for k, v in self.sums.items()}
        steps = torch.tensor([float(self.steps + (self.steps_prev if merge_previous else 0))], dtype=torch.float64)
        if runtime.world()[1] > 1:
            flat = torch.cat([*sums.values(), steps])
            runtime.all_reduce_sum(flat)
            offset = 0
            for k, v in sums.items():
                sums[k] = flat[offset:offset + v.numel()]
                offset += v.numel()
            steps = flat[-1:]
        n = max(float(steps), 1.0)
        return {k: (v / n).sqrt() for k, v in sums.items()}

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "sums_prev": self.sums_prev, "steps": self.steps, "steps_prev": self.steps_prev}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {k: v.clone() for k, v in state["sums"].items()}
        self.sums_prev = {k: v.clone() for k, v in state["sums_prev"].items()}
        self.steps, self.steps_prev = state["steps"], state["steps_prev"]
