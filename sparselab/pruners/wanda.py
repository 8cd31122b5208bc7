"""A Wanda-style structured criterion for P3B's within-block selection: a gate element scores the sum, over the
weights it switches off (:meth:`~sparselab.structure.vit.ViTStructure.gate_reduce`), of |W| times the norm of the
input channel each weight reads (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"), with the
input norms accumulated over the window between two mask updates
(:class:`~sparselab.probes.activations.ActivationNorms`).

The norms are those of the inputs the gated network computes: an input channel or hidden unit that is switched
off reads zero and scores zero, so it returns only when its block's budget grows past its living elements.

Example:
    >>> import sparselab as sl
    >>> model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    >>> pruner = sl.P3B(model, 0.5, criterion="wanda", allocation="uniform")
    >>> type(pruner.criterion).__name__, pruner.criterion.needs_gate_grads
    ('WandaCriterion', False)
"""
from __future__ import annotations

from typing import Any

import torch

from ..callbacks import TrainState
from ..probes.activations import ActivationNorms
from ..structure.gates import Gates
from ..structure.vit import ViTStructure
from .criteria import GateCriterion, register_criterion


@register_criterion("wanda")
class WandaCriterion(GateCriterion):
    """|W|·‖X‖ summed over what each gate element switches off, with ‖X‖ over the window's training steps."""

    def attach(self, structure: ViTStructure, gates: Gates) -> None:
        super().attach(structure, gates)
        modules = {}
        for i, blk in enumerate(structure.layers):
            modules.update({f"{i}.qkv": blk.attn.qkv, f"{i}.proj": blk.attn.proj, f"{i}.fc1": blk.mlp.fc1,
                            f"{i}.fc2": blk.mlp.fc2})
        # gates that scale a Linear's columns instead of its input: the norm is that of the gated input all the same
        inputs = {f"{i}.{name}": gate for (i, name), gate in gates.column_gates.items()}
        self.norms = ActivationNorms(modules, input_gates=inputs)

    def collect(self, state: TrainState) -> bool:
        if state.step_skipped:
            self.norms.discard()
            self.skipped_steps += 1
            return False
        self.norms.commit()
        return True

    def end_step(self) -> None:
        self.norms.discard()  # forward passes outside a window count for nothing

    @torch.no_grad()
    def scores(self, final: bool) -> dict[str, torch.Tensor]:
        norms = self.norms.norms(merge_previous=final)
        out = {}
        for i in range(self.structure.depth):
            def values(name: str, w: torch.Tensor, i: int = i) -> torch.Tensor:
                return w.detach().abs().double().cpu() * norms[f"{i}.{name}"].unsqueeze(0)

            for gate, v in self.structure.gate_reduce(i, values).items():
                out[Gates.key(i, gate)] = v
        return out

    def next_window(self) -> None:
        super().next_window()
        self.norms.next_window()

    def remove(self) -> None:
        self.norms.remove()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "activation_norms": self.norms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.norms.load_state_dict(state["activation_norms"])


__all__ = ["WandaCriterion"]
