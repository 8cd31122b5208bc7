"""What a timm Vision Transformer is made of: its residual blocks, their gates, and their parameter counts.

A depth-L ViT has K = 2L blocks, ordered ``blocks.0.attn, blocks.0.mlp, blocks.1.attn, ...``: each is one
residual branch of a timm ``Block``. Six gate vectors per layer multiply activations (never weights):

============  =============  =====================================================================
gate          size           where it multiplies
============  =============  =====================================================================
attn_in       D              the ``norm1`` output feeding ``qkv``
attn_qkv      head_dim       index j of the head dimension in every head, in q, k and v together
                             (on the ``qkv`` output; with qk-norm also after ``q_norm``/``k_norm``);
              (or heads)     with ``qkv_unit="head"`` one element is a whole head instead
attn_out      D              the ``proj`` output added back to the stream
mlp_in        D              the ``norm2`` output feeding ``fc1``
mlp_hid       hidden         the hidden neurons after the activation
mlp_out       D              the ``fc2`` output added back to the stream
============  =============  =====================================================================

Example:
    >>> import timm
    >>> s = ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10))
    >>> [b.name for b in s.blocks][:3], s.gate_sizes(0)["attn_qkv"]
    (['blocks.0.attn', 'blocks.0.mlp', 'blocks.1.attn'], 16)
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..configs import QKV_UNITS
from ..errors import ConfigError

GATES = ("attn_in", "attn_qkv", "attn_out", "mlp_in", "mlp_hid", "mlp_out")
BLOCK_GATES = {"attn": GATES[:3], "mlp": GATES[3:]}
Masks = Mapping[int, Mapping[str, torch.Tensor]]  # layer -> gate -> mask vector
LINEARS = ("qkv", "proj", "fc1", "fc2")

#: gate → the weights one of its elements spans, as (Linear, axis): axis 0 is a row (an output), axis 1 a column
#: (an input). The one statement of which weights a gate element switches off; :func:`weight_index` turns element
#: indices into weight indices, :func:`reduce_gates` sums per element, and criteria, compaction and weight maps
#: use those two.
GATE_WEIGHTS: dict[str, tuple[tuple[str, int], ...]] = {
    "attn_in": (("qkv", 1),),                   # a residual channel read by q, k and v
    "attn_qkv": (("qkv", 0), ("proj", 1)),      # dimension j of every head in q, k and v, and where proj reads it
    "attn_out": (("proj", 0),),                 # a residual channel written by the attention
    "mlp_in": (("fc1", 1),),
    "mlp_hid": (("fc1", 0), ("fc2", 1)),        # a hidden unit: its fc1 row and fc2 column
    "mlp_out": (("fc2", 0),),
}


def weight_index(gate: str, linear: str, elements: torch.Tensor, heads: int, head_dim: int,
                 qkv_unit: str = "dim") -> torch.Tensor:
    """Indices, along the axis :data:`GATE_WEIGHTS` names, of ``linear``'s weights that the gate elements
    ``elements`` (an index vector) span. For ``attn_qkv`` an element is one head dimension, repeated in every
    head (and in q, k and v of the fused ``qkv``), or with ``qkv_unit="head"`` one whole head; the indices come in
    timm's (q/k/v, head, dimension) order. For every other gate element index = weight index.

    Example:
        >>> weight_index("attn_qkv", "proj", torch.tensor([1]), heads=2, head_dim=4).tolist()
        [1, 5]
        >>> weight_index("attn_qkv", "qkv", torch.tensor([1]), heads=2, head_dim=4).tolist()
        [1, 5, 9, 13, 17, 21]
        >>> weight_index("attn_qkv", "proj", torch.tensor([1]), heads=2, head_dim=4, qkv_unit="head").tolist()
        [4, 5, 6, 7]
    """
    if gate != "attn_qkv":
        return elements
    grid = torch.arange((3 if linear == "qkv" else 1) * heads * head_dim, device=elements.device)
    grid = grid.view(-1, heads, head_dim)
    picked = grid[:, :, elements] if qkv_unit == "dim" else grid[:, elements, :]
    return picked.reshape(-1)


def qkv_grid(vector: torch.Tensor, qkv_unit: str, heads: int, head_dim: int) -> torch.Tensor:
    """An ``attn_qkv`` gate vector (values or a mask) as a view that broadcasts over one layer's
    ``(heads, head_dim)``: ``(1, head_dim)`` for ``qkv_unit="dim"``, ``(heads, 1)`` for ``"head"``.

    Example:
        >>> qkv_grid(torch.tensor([1., 0.]), "head", heads=2, head_dim=3).expand(2, 3).tolist()
        [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    return vector.view(1, head_dim) if qkv_unit == "dim" else vector.view(heads, 1)


def reduce_gates(weights: Mapping[str, torch.Tensor], head_dim: int, qkv_unit: str = "dim"
                 ) -> dict[str, torch.Tensor]:
    """Per gate: for each element, the sum of ``weights[linear]`` (tensors shaped like the four Linear weights of
    one layer, keyed by :data:`LINEARS`) over the weights that element spans (:data:`GATE_WEIGHTS`).

    Example:
        >>> w = {"qkv": torch.ones(24, 8), "proj": torch.ones(8, 8), "fc1": torch.ones(16, 8), "fc2": torch.ones(8, 16)}
        >>> {g: v[0].item() for g, v in reduce_gates(w, head_dim=4).items()}
        {'attn_in': 24.0, 'attn_qkv': 64.0, 'attn_out': 8.0, 'mlp_in': 16.0, 'mlp_hid': 16.0, 'mlp_out': 16.0}
        >>> reduce_gates(w, head_dim=4, qkv_unit="head")["attn_qkv"].tolist()
        [128.0, 128.0]
    """
    per_head = qkv_unit == "head"
    out = {}
    for gate, spans in GATE_WEIGHTS.items():
        total = None
        for linear, axis in spans:
            w = weights[linear]
            if gate != "attn_qkv":
                per = w.sum(1 - axis)
            elif axis == 0:  # weight index = (q/k/v · heads + head) · head_dim + dimension, for the rows of qkv ...
                w = w.reshape(3, -1, head_dim, w.shape[1])
                per = w.sum(dim=(0, 2, 3)) if per_head else w.sum(dim=(0, 1, 3))
            else:  # ... and head · head_dim + dimension for the columns of proj
                w = w.reshape(w.shape[0], -1, head_dim)
                per = w.sum(dim=(0, 2)) if per_head else w.sum(dim=(0, 1))
            total = per if total is None else total + per
        out[gate] = total
    return out


def layer_key(key: object, depth: int, what: str) -> int:
    """The layer number a key of a layer -> gate -> vector dict names: a Python or numpy integer, or a string of
    decimal digits (the keys of masks saved as JSON), in ``0..depth-1``. ``what`` names the dict in errors.

    Raises:
        ConfigError: a bool, a float (even a whole one such as 1.0), another string or another type, naming the
            key; or a layer the model does not have.

    Example:
        >>> layer_key("3", depth=4, what="masks"), layer_key(2, depth=4, what="masks")
        (3, 2)
        >>> layer_key(1.0, depth=4, what="masks")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sparselab.errors.ConfigError: masks: layer keys must be whole layer numbers ... got 1.0 (float)
    """
    # bool is an Integral but True is no layer number; float keys are refused outright, whole or not, so that one
    # rule holds wherever these dicts are read (a JSON key is always a string)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        layer = int(key)
    elif isinstance(key, str) and key.isascii() and key.isdigit():
        layer = int(key)
    else:
        raise ConfigError(f"{what}: layer keys must be whole layer numbers (an int, or a string of decimal digits "
                          f"such as '0' as JSON keys are), got {key!r} ({type(key).__name__})")
    if not 0 <= layer < depth:
        raise ConfigError(f"{what} name layer {layer}, but the model has {depth} layers (0..{depth - 1})")
    return layer


def check_gate_layout(structure: ViTStructure, values: object, what: str, vector: str = "vector"
                      ) -> list[tuple[int, str, torch.Tensor]]:
    """(layer, gate, tensor) for each entry of a layer -> gate -> vector dict (:data:`Masks`, or gate values),
    checked against ``structure``: each layer key passes :func:`layer_key` and names each layer once, each gate is
    one of :data:`GATES`, and each vector holds exactly one entry per gate element (a shorter one would be
    broadcast over the whole gate). Values are not checked (soft gate values, 0/1 masks: the caller's rule).
    ``what`` names the dict in errors, ``vector`` what its vectors are.

    Raises:
        ConfigError: not a dict of dicts, a layer key or gate the model does not have, or a vector of another
            shape; the message names the layer, the gate and what is allowed.

    Example:
        >>> import timm
        >>> s = ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10))
        >>> [(i, g, tuple(v.shape)) for i, g, v in check_gate_layout(s, {"1": {"mlp_hid": [1.0] * 256}}, "masks")]
        [(1, 'mlp_hid', (256,))]
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what} must be a dict layer -> gate -> {vector}, got {type(values).__name__}")
    out, seen = [], {}
    for key, per_gate in values.items():
        layer = layer_key(key, structure.depth, what)
        if layer in seen:  # e.g. 1 and "1": which one would win is an accident of the dict's order
            raise ConfigError(f"{what} name layer {layer} twice, as {seen[layer]!r} and {key!r}; give each layer "
                              f"once")
        seen[layer] = key
        if not isinstance(per_gate, Mapping):
            raise ConfigError(f"{what} for layer {layer} must be a dict gate -> {vector}, got "
                              f"{type(per_gate).__name__}")
        sizes = structure.gate_sizes(layer)
        for gate, v in per_gate.items():
            if gate not in sizes:
                raise ConfigError(f"{what} for layer {layer} name unknown gate {gate!r}; gates: {', '.join(GATES)}")
            t = torch.as_tensor(v)
            if t.shape != (sizes[gate],):
                raise ConfigError(f"{what} for layer {layer}, gate {gate!r} has shape {tuple(t.shape)}; the gate "
                                  f"has {sizes[gate]} entries")
            out.append((layer, gate, t))
    return out


def binary_mask(mask: torch.Tensor, layer: int, gate: str, what: str) -> torch.Tensor:
    """``mask`` (booleans, or 0/1 numbers) as a boolean tensor (True = kept).

    Raises:
        ConfigError: values other than 0 and 1 (a soft mask), naming the layer and gate.

    Example:
        >>> binary_mask(torch.tensor([1., 0.]), 0, "mlp_hid", "masks").tolist()
        [True, False]
    """
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ConfigError(f"{what}: the mask for layer {layer}, gate {gate!r} must be boolean (True = kept) or 0/1 "
                          f"values")
    return mask != 0


@dataclass(frozen=True)
class BlockInfo:
    """One residual branch: ``index`` k in 0..2L-1, its ``layer``, ``kind`` ("attn"/"mlp") and ``name``."""

    index: int
    layer: int
    kind: str
    name: str

    @property
    def gates(self) -> tuple[str, ...]:
        return BLOCK_GATES[self.kind]


def is_identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity)


class ViTStructure:
    """Blocks, gate sizes and parameter counts of a timm ``VisionTransformer``-family model.

    Supports class token or none, extra prefix tokens (distillation, registers), LayerScale, qk-norm, any depth
    and width. Models whose blocks are not timm ``Block``-shaped (fused qkv Linear, ``Mlp`` with fc1/act/fc2)
    are rejected with an error that names the offending module.

    ``qkv_unit`` (:data:`QKV_UNITS`): what one ``attn_qkv`` element is — one dimension of every head (``"dim"``,
    the reference) or one whole head (``"head"``, head pruning).
    """

    def __init__(self, model: nn.Module, qkv_unit: str = "dim"):
        if qkv_unit not in QKV_UNITS:
            raise ConfigError(f"qkv_unit must be one of {', '.join(QKV_UNITS)} (an attn_qkv element is one "
                              f"dimension of every head, or one whole head), got {qkv_unit!r}")
        self.qkv_unit = qkv_unit
        blocks = getattr(model, "blocks", None)
        if blocks is None or not hasattr(model, "patch_embed"):
            raise ConfigError(f"{type(model).__name__} is not a timm VisionTransformer (no .blocks/.patch_embed)")
        self.model = model
        self.layers: list[nn.Module] = list(blocks)
        if not self.layers:
            raise ConfigError(f"{type(model).__name__} has no transformer blocks (depth 0): block pruning needs at "
                              f"least one")
        for i, blk in enumerate(self.layers):
            self._validate(i, blk)
        self._check_unshared(model, self.layers)
        self.embed_dim: int = self.layers[0].norm1.normalized_shape[0]
        self.num_prefix_tokens: int = int(getattr(model, "num_prefix_tokens", 1))
        grid = getattr(model.patch_embed, "grid_size", None)
        # None: a patch embedding built with img_size=None has no grid of its own, only the input's
        self.grid_size: tuple[int, int] | None = None if grid is None else tuple(int(v) for v in grid)
        self.num_heads: list[int] = [b.attn.num_heads for b in self.layers]
        self.head_dim: list[int] = [b.attn.head_dim for b in self.layers]
        self.hidden: list[int] = [b.mlp.fc1.out_features for b in self.layers]
        self.blocks: list[BlockInfo] = [
            BlockInfo(2 * i + j, i, kind, f"blocks.{i}.{kind}")
            for i in range(len(self.layers)) for j, kind in enumerate(("attn", "mlp"))
        ]
        #: whether any layer normalises q and k (each layer's gates follow its own ``q_norm``/``k_norm``)
        self.qk_norm = any(not is_identity(b.attn.q_norm) for b in self.layers)
        # the architecture is fixed for the structure's lifetime: per-block constants and W_0 are counted once
        self._fixed = [self._fixed_counts(b) for b in self.blocks]
        self._outside = sum(p.numel() for p in model.parameters()) - sum(self.block_params(b) for b in self.blocks)

    @staticmethod
    def _check_unshared(model: nn.Module, layers: list[nn.Module]) -> None:
        """Refuse blocks that share a parameter with another block or place (the same block twice, tied
        Linear layers or weights): a gate would act on every use of it and each use would be counted as its own
        parameters, so the masks and the achieved prune ratio would be wrong."""
        in_blocks = {id(p) for blk in layers for p in blk.parameters()}
        seen: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) not in in_blocks:
                continue
            if id(p) in seen:
                raise ConfigError(f"{name} is the same parameter as {seen[id(p)]}: block pruning needs every "
                                  f"transformer block to own its parameters (no shared blocks, tied Linear layers "
                                  f"or tied weights)")
            seen[id(p)] = name
        missing = len(in_blocks) - len(seen)
        if missing:  # a block's parameter that the model does not hold under its blocks
            raise ConfigError(f"{missing} parameter(s) of the transformer blocks are not parameters of the model")

    @staticmethod
    def _validate(i: int, blk: nn.Module) -> None:
        where = f"blocks.{i}"
        for path in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.act", "mlp.fc2"):
            obj = blk
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if obj is None:
                raise ConfigError(f"{where}.{path} is missing: only timm Block/Attention/Mlp layouts are supported")
        from timm.layers import Attention, Mlp
        from timm.models.vision_transformer import Block

        if not isinstance(blk, Block):
            raise ConfigError(f"{where} is a {type(blk).__name__}; only timm's pre-norm Block is supported")
        attn, mlp = blk.attn, blk.mlp
        if not isinstance(attn, Attention):
            raise ConfigError(f"{where}.attn is {type(attn).__name__}; block pruning supports timm's Attention "
                              f"(softmax attention over a fused qkv) only")
        if not isinstance(mlp, Mlp) or mlp.fc1.out_features != mlp.fc2.in_features:
            raise ConfigError(f"{where}.mlp is {type(mlp).__name__}; block pruning supports timm's Mlp (fc1 → act → "
                              f"fc2) only, not gated or packed variants such as GluMlp/SwiGLU")
        if not isinstance(attn.qkv, nn.Linear) or not isinstance(mlp.fc1, nn.Linear):
            raise ConfigError(f"{where}: qkv and fc1 must be nn.Linear")
        if getattr(attn, "gate", None) is not None:
            raise ConfigError(f"{where}.attn uses gated attention, which block pruning does not support")
        if not is_identity(getattr(attn, "norm", None)):
            raise ConfigError(f"{where}.attn.norm (scale_norm) is not supported")
        if not is_identity(getattr(mlp, "norm", None)):
            raise ConfigError(f"{where}.mlp.norm is not supported")
        if not isinstance(blk.norm1, nn.LayerNorm) or not isinstance(blk.norm2, nn.LayerNorm):
            raise ConfigError(f"{where}: norm1/norm2 must be LayerNorm")

    # ------------------------------------------------------------------ sizes
    @property
    def depth(self) -> int:
        return len(self.layers)

    def gate_sizes(self, layer: int) -> dict[str, int]:
        d = self.embed_dim
        qkv = self.head_dim[layer] if self.qkv_unit == "dim" else self.num_heads[layer]
        return {"attn_in": d, "attn_qkv": qkv, "attn_out": d, "mlp_in": d,
                "mlp_hid": self.hidden[layer], "mlp_out": d}

    def full_masks(self) -> dict[int, dict[str, torch.Tensor]]:
        """All-kept boolean masks for every layer and gate."""
        return {i: {g: torch.ones(n, dtype=torch.bool) for g, n in self.gate_sizes(i).items()}
                for i in range(self.depth)}

    # ------------------------------------------------------------------ counting
    def _counts(self, block: BlockInfo, masks: Masks | None) -> tuple[int, int]:
        """(Linear parameters incl. biases, other block parameters: norms, LayerScale, qk-norm) kept."""
        sizes = self.gate_sizes(block.layer)
        given = masks.get(block.layer, {}) if masks is not None else {}
        return self.kept_counts_params(block, {g: (int(given[g].sum()) if g in given else sizes[g])
                                               for g in block.gates})

    def kept_counts_params(self, block: BlockInfo, n: Mapping[str, int]) -> tuple[int, int]:
        """Like :meth:`linear_params`/:meth:`block_params` together, from the kept count of each of the block's
        gates: (Linear parameters, other parameters)."""
        if min(n.values()) == 0:
            # the branch no longer depends on its input: it is a constant over its kept output channels
            return 0, n[block.gates[-1]]
        other, qk_norm = self._fixed[block.index][2:]
        if block.kind == "attn":
            h, i = n["attn_qkv"], block.layer
            # qk-norm normalises one head dimension: its parameters shrink with kept dimensions, not heads
            norm = qk_norm * h // max(self.head_dim[i], 1) if self.qkv_unit == "dim" else qk_norm
            return self._linear_count(block, n), other + norm
        return self._linear_count(block, n), other

    def kept_linear_params(self, block: BlockInfo, n: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The kept Linear parameters of ``block`` for many candidate kept counts at once: ``n`` holds, per gate, a
        1-D tensor of counts (one entry per candidate); element-wise what :meth:`kept_counts_params` gives first.

        Example:
            >>> import timm
            >>> s = ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10))
            >>> mlp = s.blocks[1]
            >>> counts = {"mlp_in": torch.tensor([64, 64]), "mlp_hid": torch.tensor([256, 0]),
            ...           "mlp_out": torch.tensor([64, 64])}
            >>> s.kept_linear_params(mlp, counts).tolist() == [s.linear_params(mlp), 0]
            True
        """
        empty = torch.stack([torch.as_tensor(v) for v in n.values()]).eq(0).any(0)
        return torch.where(empty, 0, self._linear_count(block, n))

    def _linear_count(self, block: BlockInfo, n):
        """Linear weights and biases of ``block`` with ``n`` kept elements per gate, none of them 0 (ints, or
        tensors of candidates: plain arithmetic)."""
        first_bias, second_bias = self._fixed[block.index][:2]
        if block.kind == "attn":
            a, h, o = n["attn_in"], n["attn_qkv"], n["attn_out"]
            i = block.layer
            width = self.num_heads[i] * h if self.qkv_unit == "dim" else h * self.head_dim[i]  # of q, k and v
            qkv = 3 * width * a + (3 * width if first_bias else 0)
            proj = o * width + (o if second_bias else 0)
            return qkv + proj
        a, hid, o = n["mlp_in"], n["mlp_hid"], n["mlp_out"]
        fc1 = hid * a + (hid if first_bias else 0)
        fc2 = o * hid + (o if second_bias else 0)
        return fc1 + fc2

    def _fixed_counts(self, block: BlockInfo) -> tuple[bool, bool, int, int]:
        """(first Linear has a bias, second Linear has a bias, norm + LayerScale parameters, qk-norm parameters)
        of a block."""
        blk = self.layers[block.layer]
        if block.kind == "attn":
            qk_norm = _n(blk.attn.q_norm) + _n(blk.attn.k_norm) if self.qk_norm else 0
            return (blk.attn.qkv.bias is not None, blk.attn.proj.bias is not None,
                    _n(blk.norm1) + _n(getattr(blk, "ls1", None)), qk_norm)
        return (blk.mlp.fc1.bias is not None, blk.mlp.fc2.bias is not None,
                _n(blk.norm2) + _n(getattr(blk, "ls2", None)), 0)

    def linear_params(self, block: BlockInfo, masks: Masks | None = None) -> int:
        """Linear weights and biases of ``block`` kept under ``masks`` (all when None)."""
        return self._counts(block, masks)[0]

    def block_params(self, block: BlockInfo, masks: Masks | None = None) -> int:
        """All parameters of ``block`` kept under ``masks``: Linear layers, its LayerNorm, LayerScale, qk-norm."""
        lin, other = self._counts(block, masks)
        return lin + other

    def outside_params(self) -> int:
        """W_0: parameters outside the blocks (embeddings, prefix tokens, final norm, head)."""
        return self._outside

    def total_params(self, masks: Masks | None = None) -> int:
        """Parameters of the whole model under ``masks``."""
        return self.outside_params() + sum(self.block_params(b, masks) for b in self.blocks)

    def prune_ratio(self, masks: Masks, blocks_only: bool = False) -> float:
        """Fraction of parameters removed by ``masks`` (of the whole model, or of the blocks only)."""
        dense = sum(self.block_params(b) for b in self.blocks)
        kept = sum(self.block_params(b, masks) for b in self.blocks)
        if not blocks_only:
            dense += self.outside_params()
            kept += self.outside_params()
        return 1.0 - kept / dense

    # ------------------------------------------------------------------ tokens
    def gate_reduce(self, layer: int, values: Callable[[str, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per gate of block ``layer``: for each gate element, the sum of ``values(name, weight)`` over the weights
        that element switches off (:data:`GATE_WEIGHTS`, through :func:`reduce_gates`).

        ``name`` is ``qkv``, ``proj``, ``fc1`` or ``fc2``; ``values`` returns a tensor shaped like the Linear
        weight (e.g. ``|w|`` for structured L1, ``|w|·‖x‖`` for an activation-weighted criterion):

        - ``attn_in`` / ``mlp_in``: an input channel of the residual stream → a column of ``qkv`` / ``fc1``;
        - ``attn_qkv``: one dimension of the per-head q, k and v → its three rows of ``qkv`` (in every head) and
          its column of ``proj``; ``attn_out`` / ``mlp_out``: an output channel → a row of ``proj`` / ``fc2``;
        - ``mlp_hid``: a hidden unit → its row of ``fc1`` and its column of ``fc2``.

        Example:
            >>> import sparselab as sl
            >>> s = ViTStructure(sl.models.create("vit_nano_patch4_28"))
            >>> l1 = s.gate_reduce(0, lambda name, w: w.abs())
            >>> {g: tuple(v.shape) for g, v in l1.items()} == {g: (n,) for g, n in s.gate_sizes(0).items()}
            True
        """
        blk = self.layers[layer]
        linear = {"qkv": blk.attn.qkv, "proj": blk.attn.proj, "fc1": blk.mlp.fc1, "fc2": blk.mlp.fc2}
        return reduce_gates({name: values(name, m.weight) for name, m in linear.items()}, self.head_dim[layer],
                            self.qkv_unit)

    @property
    def fixed_grid(self) -> bool:
        """Whether the model only takes images of the size it was created for, so that every input has the patch
        grid :attr:`grid_size` (False for timm's ``dynamic_img_size=True``, whose grid follows the input, and for a
        patch embedding built without an image size, which checks none)."""
        return self.grid_size is not None and bool(getattr(self.model.patch_embed, "strict_img_size", True))

    def patch_tokens(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Residual-stream tokens ``(B, N, D)`` to a patch grid ``(B, D, h, w)``, skipping all prefix tokens.

        ``grid`` is the ``(h, w)`` patch grid of the input the tokens were computed from
        (:attr:`~sparselab.structure.taps.ResidualTaps.grid` records it during the forward pass). None: the grid
        the model was created for (:attr:`grid_size`), which is only known to be the input's when the model takes
        no other image size (:attr:`fixed_grid`).

        Raises:
            ConfigError: ``grid`` is None for a model that takes other image sizes (``dynamic_img_size``), or the
                patch tokens do not fill the grid (another input size, or patch dropout in training).

        Example:
            >>> import timm
            >>> s = ViTStructure(timm.create_model("vit_nano_patch4_28", num_classes=10))
            >>> tuple(s.patch_tokens(torch.randn(2, 1 + 49, 64)).shape)
            (2, 64, 7, 7)
        """
        n = x.shape[1] - self.num_prefix_tokens
        if grid is None:
            if not self.fixed_grid:
                raise ConfigError(f"{type(self.model).__name__} takes images of any size (dynamic_img_size), so the "
                                  f"patch grid of its {n} patch tokens is not known from the model: pass the input's "
                                  f"grid=(h, w) (ResidualTaps.grid records it during the forward pass)")
            grid = self.grid_size
        h, w = (int(v) for v in grid)
        if h * w != n:
            raise ConfigError(f"{n} patch tokens (after {self.num_prefix_tokens} prefix tokens) do not fill a "
                              f"{h}x{w} patch grid; the grid must be the one of the input the tokens came from "
                              f"(patch dropout, which removes tokens, leaves no grid)")
        t = x[:, self.num_prefix_tokens:]
        return t.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """What the model's head pools from stream tokens: timm's own parameter-free pooling (``token``, ``avg``,
        ``max``, ``avgmax``, honouring ``pool_include_prefix``); the mean of the class and the distillation token
        for a distilled DeiT, whose two heads read one each (timm's ``pre_logits``); the mean of the patch tokens for
        attention pooling (``map``), whose parameters must not be trained by probes, or no pooling."""
        from timm.models.deit import VisionTransformerDistilled

        if isinstance(self.model, VisionTransformerDistilled):
            return (x[:, 0] + x[:, 1]) / 2
        pool = getattr(self.model, "global_pool", "token")
        if pool in ("token", "avg", "max", "avgmax") and hasattr(self.model, "pool"):
            if pool != "token" or self.num_prefix_tokens > 0:
                return self.model.pool(x)
        return x[:, self.num_prefix_tokens:].mean(dim=1)


def _n(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
