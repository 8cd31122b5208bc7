"""Gate vectors attached to a ViT.

Each gate is an ``nn.Parameter`` that multiplies an activation (see :mod:`sparselab.structure.vit`). Gates
receive gradients (the Taylor criterion reads ``m * dL/dm``) but are never moved by an optimizer: keep them out of
it and clear their ``.grad`` after reading it. "Kept" means value >= 0.5.

Where they act (``on``): ``"weights"`` (the default) scales the rows and columns of the four Linear layers of each
block — ``qkv`` by ``attn_qkv`` (rows, in q, k and v of every head) and ``attn_in`` (columns), ``proj`` by
``attn_out`` (rows), ``fc1`` by ``mlp_in`` (columns), ``fc2`` by ``mlp_out`` (rows) and ``mlp_hid`` (columns) —
which computes the same outputs and the same gate gradients as ``"activations"`` (forward hooks that multiply the
activations, the reference) at the cost of a few weight-sized products per step instead of activation-sized ones.
The Linear layers then run a gated ``forward`` set on the instance; :meth:`Gates.remove` restores them.

``enabled = False`` takes the gates out of the computation without detaching them: the Linear layers and hooks
compute as if every gate were 1 and the gates receive no gradients. That is exact only while every gate is 1
(:meth:`Gates.all_one`); :class:`~sparselab.P3B` switches them off for the steps whose gate gradients nobody reads
(before its scoring window opens), which spares those steps the gating's few weight-sized products.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10)
    >>> gates = Gates(ViTStructure(model))
    >>> x = torch.randn(2, 1, 28, 28)
    >>> dense = model(x)
    >>> torch.allclose(model(x), dense)          # all gates are 1 at the start
    True
    >>> gates.set_hard({0: {"mlp_hid": torch.arange(256) < 128}})
    >>> bool((model(x) - dense).abs().max() > 0)
    True
    >>> gates.remove()                          # detaches every hook
    >>> torch.allclose(model(x), dense)
    True
"""
from __future__ import annotations

import types
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .vit import GATES, Masks, ViTStructure, binary_mask, check_gate_layout, is_identity, qkv_grid

#: where gates can act: on the Linear weights (default) or on the activations (forward hooks, the reference)
GATE_SITES = ("weights", "activations")


class Gates(nn.Module):
    """One gate vector per (layer, gate), attached to the structure's model where ``on`` says (module docstring)."""

    def __init__(self, structure: ViTStructure, on: str = "weights"):
        super().__init__()
        if on not in GATE_SITES:
            raise ConfigError(f"gates act on one of {', '.join(GATE_SITES)}, got on={on!r}")
        self.on = on
        self.structure = [structure]  # a list, so the model is not registered as a submodule
        ref = next(structure.model.parameters())
        self.values = nn.ParameterDict({
            self.key(i, g): nn.Parameter(torch.ones(n, device=ref.device, dtype=ref.dtype))
            for i in range(structure.depth) for g, n in structure.gate_sizes(i).items()
        })
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._gated: list[nn.Linear] = []
        #: (layer, Linear name) → the gate that scales that Linear's columns, i.e. what its input is effectively
        #: multiplied by (gates on the weights only; on the activations the input itself is gated)
        self.column_gates: dict[tuple[int, str], nn.Parameter] = {}
        #: False: the model computes as if every gate were 1 and the gates get no gradients (module docstring)
        self.enabled = True
        self._attach()

    @staticmethod
    def key(layer: int, gate: str) -> str:
        return f"L{layer}_{gate}"

    def gate(self, layer: int, gate: str) -> nn.Parameter:
        return self.values[self.key(layer, gate)]

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        s = self.structure[0]
        if self.on == "weights" and any("forward" in vars(m) for blk in s.layers for m in blk.modules()):
            raise ConfigError("the model's Linear layers already run a gated forward (gates attached twice?); "
                              "remove() the other Gates first")
        for i, blk in enumerate(s.layers):
            heads, hd = s.num_heads[i], s.head_dim[i]
            g = {name: self.gate(i, name) for name in GATES}
            qkv = _QKVGate(g["attn_qkv"], s.qkv_unit, heads, hd)
            for norm in (blk.attn.q_norm, blk.attn.k_norm):  # this layer's qk-norm, if it has one
                if not is_identity(norm):  # zero the pruned head dims (or heads) again after the norm, so q.k
                    self._hook(norm, qkv.scale_heads)  # ignores them exactly
            if self.on == "activations":
                self._hook(blk.norm1, _scale_last(g["attn_in"]))
                self._hook(blk.attn.qkv, qkv.scale_qkv)
                self._hook(blk.attn.proj, _scale_last(g["attn_out"]))
                self._hook(blk.norm2, _scale_last(g["mlp_in"]))
                self._hook(blk.mlp.act, _scale_last(g["mlp_hid"]))
                self._hook(blk.mlp.fc2, _scale_last(g["mlp_out"]))
                continue
            # a norm between the activation and fc2 would not commute with scaling fc2's columns
            hid_on_fc2 = is_identity(getattr(blk.mlp, "norm", None))
            if not hid_on_fc2:
                self._hook(blk.mlp.act, _scale_last(g["mlp_hid"]))
            self._gate_linear(i, "qkv", blk.attn.qkv, qkv.rows(3), g["attn_in"])
            self._gate_linear(i, "proj", blk.attn.proj, g["attn_out"], None)
            self._gate_linear(i, "fc1", blk.mlp.fc1, None, g["mlp_in"])
            self._gate_linear(i, "fc2", blk.mlp.fc2, g["mlp_out"], g["mlp_hid"] if hid_on_fc2 else None)

    def _gate_linear(self, layer: int, name: str, linear: nn.Linear, rows, cols) -> None:
        linear.forward = types.MethodType(_gated_forward(self, rows, cols), linear)
        self._gated.append(linear)
        if cols is not None:
            self.column_gates[(layer, name)] = cols

    def _hook(self, module: nn.Module, fn) -> None:
        self._handles.append(module.register_forward_hook(lambda mod, args, out: fn(out) if self.enabled else None))

    def remove(self) -> None:
        """Detach all hooks and gated forwards (the model then computes as if every gate were 1)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for linear in self._gated:
            vars(linear).pop("forward", None)
        self._gated.clear()
        self.column_gates.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles or self._gated)

    # ------------------------------------------------------------------ values
    def set_values(self, values: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Set gate values (soft masks in [0, 1]) for the given layers and gates. Layer keys follow
        :func:`~sparselab.structure.vit.layer_key`: ints, or strings of decimal digits as in JSON.

        Raises:
            ConfigError: a layer key that is no whole layer number (a bool, a float, another string), a layer or
                gate the model does not have, or a vector without one value per gate element.

        Example:
            >>> import timm
            >>> gates = Gates(ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10)))
            >>> gates.set_values({"1": {"mlp_hid": torch.full((256,), 0.25)}})
            >>> gates.gate(1, "mlp_hid")[0].item()
            0.25
        """
        self._assign(check_gate_layout(self.structure[0], values, "gate values"))

    def set_hard(self, masks: Masks) -> None:
        """Set gates to exactly 0/1 from boolean masks (or 0/1 values), with the layer keys :meth:`set_values` takes.

        Raises:
            ConfigError: as :meth:`set_values`, and a mask with values other than 0 and 1.

        Example:
            >>> import timm
            >>> gates = Gates(ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10)))
            >>> gates.set_hard({0: {"mlp_hid": torch.arange(256) < 64}})
            >>> int(gates.gate(0, "mlp_hid").sum())
            64
        """
        checked = [(layer, gate, binary_mask(m, layer, gate, "masks"))
                   for layer, gate, m in check_gate_layout(self.structure[0], masks, "masks", "boolean vector")]
        self._assign([(layer, gate, m.float()) for layer, gate, m in checked])

    @torch.no_grad()
    def _assign(self, values: list[tuple[int, str, torch.Tensor]]) -> None:
        for layer, gate, v in values:
            p = self.gate(layer, gate)
            cast = v.to(dtype=p.dtype, device=p.device)
            if v.is_floating_point() and cast.dtype != v.dtype:  # rounding must not move a value across 0.5
                cast = on_side_of_half(cast, (v >= 0.5).to(p.device))
            p.copy_(cast)
        if not self.enabled and not self.all_one():  # switched off is exact only while every gate is 1
            self.enabled = True

    @torch.no_grad()
    def all_one(self) -> bool:
        """Whether every gate is exactly 1 (the gated model then computes what the ungated one does).

        Example:
            >>> import timm
            >>> gates = Gates(ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10)))
            >>> gates.all_one()
            True
            >>> gates.set_values({0: {"mlp_hid": torch.full((256,), 0.5)}}); gates.all_one()
            False
        """
        return bool(torch.cat([p.reshape(-1) for p in self.values.values()]).eq(1).all())

    @torch.no_grad()
    def hard_masks(self) -> dict[int, dict[str, torch.Tensor]]:
        """Boolean masks: gate value >= 0.5 means kept (on the CPU; one comparison over all gates)."""
        s = self.structure[0]
        gates = list(self.values.values())
        kept = (torch.cat([p.reshape(-1) for p in gates]) >= 0.5).cpu()
        parts = dict(zip(self.values.keys(), kept.split([p.numel() for p in gates])))
        return {i: {g: parts[self.key(i, g)] for g in GATES} for i in range(s.depth)}


def on_side_of_half(values: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``values`` with each entry on the side of 0.5 that ``kept`` says (kept: ≥ 0.5, else < 0.5), moved to 0.5 or
    to the largest value below it where rounding (to a narrower dtype, or of a soft mask within rounding of 0.5)
    put it on the other side; entries already on their side are unchanged.

    Example:
        >>> on_side_of_half(torch.tensor([0.5, 0.5, 0.25]), torch.tensor([False, True, False])).tolist()
        [0.4999999701976776, 0.5, 0.25]
    """
    below = torch.nextafter(torch.tensor(0.5, dtype=values.dtype, device=values.device),
                            torch.tensor(0.0, dtype=values.dtype, device=values.device))
    return torch.where(kept, values.clamp_min(0.5), torch.minimum(values, below))


def _scale_last(gate: torch.Tensor):
    def fn(out: torch.Tensor) -> torch.Tensor:
        return out * gate.to(out.dtype)

    return fn


class _QKVGate:
    """The ``attn_qkv`` gate of one layer, spread over timm's ``(q/k/v, head, dimension)`` layout: one element per
    head dimension (``unit="dim"``, repeated in every head) or per head (``unit="head"``, repeated over the head's
    dimensions)."""

    def __init__(self, gate: torch.Tensor, unit: str, heads: int, head_dim: int):
        self.gate, self.unit, self.heads, self.head_dim = gate, unit, heads, head_dim

    def _grid(self, dtype: torch.dtype) -> torch.Tensor:
        """The gate as a ``(heads, head_dim)`` broadcastable tensor."""
        return qkv_grid(self.gate.to(dtype), self.unit, self.heads, self.head_dim)

    def scale_qkv(self, out: torch.Tensor) -> torch.Tensor:
        """The ``qkv`` output ``(..., 3·heads·head_dim)`` times the gate."""
        shape = out.shape
        return (out.view(*shape[:-1], 3, self.heads, self.head_dim) * self._grid(out.dtype)).view(shape)

    def scale_heads(self, out: torch.Tensor) -> torch.Tensor:
        """A ``(B, heads, N, head_dim)`` q or k (after qk-norm) times the gate."""
        g = self._grid(out.dtype)
        return out * g.unsqueeze(1)  # (heads, 1, head_dim) or (heads, 1, 1)

    def rows(self, copies: int) -> "_RepeatedGate":
        """The gate per row of ``qkv`` (``copies=3``: q, k and v)."""
        return _RepeatedGate(self, copies)


class _RepeatedGate:
    """A :class:`_QKVGate` as one value per weight index (``copy · heads · head_dim + head · head_dim +
    dimension``, as :func:`~sparselab.structure.vit.weight_index` states), in ``copies`` copies (q, k and v)."""

    def __init__(self, qkv: _QKVGate, copies: int):
        self.qkv, self.copies = qkv, copies

    def scale_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` (a ``(copies·heads·head_dim, ...)`` weight or bias) times the gate of each row, as one
        broadcast product over a view (no per-row copy of the gate)."""
        q = self.qkv
        grid = q._grid(weight.dtype)  # (1, head_dim) or (heads, 1)
        grid = grid.view(1, *grid.shape, *([1] * (weight.dim() - 1)))
        return (weight.view(self.copies, q.heads, q.head_dim, *weight.shape[1:]) * grid).view(weight.shape)


def _gated_forward(gates: Gates, rows, cols):
    """``forward`` of a Linear whose weight rows (outputs, and the bias) are scaled by ``rows`` and columns
    (inputs) by ``cols`` (either may be None), while ``gates.enabled``."""
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if not gates.enabled:
            return F.linear(x, w, b)
        if isinstance(rows, _RepeatedGate):
            w = rows.scale_rows(w)
            b = None if b is None else rows.scale_rows(b)
        elif rows is not None:
            r = rows.to(w.dtype)
            w = w * r.unsqueeze(1)
            b = None if b is None else b * r
        if cols is not None:
            w = w * cols.to(w.dtype)
        return F.linear(x, w, b)

    return forward
