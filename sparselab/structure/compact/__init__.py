"""Physically smaller Vision Transformers from structured masks, and saving/loading them.

:func:`compact_vit` turns a timm ``VisionTransformer`` plus boolean gate masks (see
:mod:`sparselab.structure.vit`) into a new model whose Linear layers only hold the kept rows and columns and whose
outputs equal those of the hard-masked model (the model with :class:`~sparselab.structure.gates.Gates` attached
and ``gates.set_hard(masks)``). Each block becomes a :class:`CompactBlock` (a timm ``Block`` that adds a branch
writing only some residual channels with one ``index_add`` instead of scattering it into zeros; a subclass of
``Block`` keeps its own class); its parts become:

=========  ===========================================================================================
part       in the compact block
=========  ===========================================================================================
``norm1``  ``Sequential(LayerNorm over all D channels, SelectChannels(kept attn_in))``
``attn``   a timm ``Attention`` with ``kept attn_in`` inputs, the same number of heads, ``kept attn_qkv``
           dims per head and ``kept attn_out`` outputs (q rows rescaled so the attention scale is unchanged;
           with qk-norm, q_norm/k_norm become :class:`ZeroPaddedLayerNorm`); with ``qkv_unit="head"``
           ``kept attn_qkv`` heads of the full head dimension
``ls1``    ``Sequential(ScatterChannels(kept attn_out, D), LayerScale or Identity)``
``norm2``  ``Sequential(LayerNorm over all D channels, SelectChannels(kept mlp_in))``
``mlp``    a :class:`CompactMlp` (timm's ``Mlp``, its GELU in place in inference) with ``kept mlp_in``
           inputs, ``kept mlp_hid`` hidden and ``kept mlp_out`` outputs
``ls2``    ``Sequential(ScatterChannels(kept mlp_out, D), LayerScale or Identity)``
=========  ===========================================================================================

Where a gate keeps every channel, its ``SelectChannels``/``ScatterChannels`` is an ``Identity`` (no copy).
A branch that keeps nothing in one of its gates no longer depends on its input: its norm and LayerScale become
``Identity`` and the branch becomes a :class:`ConstantBranch` that adds the (LayerScale-folded) constant the
masked branch produces, held only for the kept output channels (zero values when ``attn_out``/``mlp_out`` is
empty).

:func:`compact_spec` describes a compact model as a JSON-able dict (the base model's constructor arguments and
the kept indices); :func:`save_compact` / :func:`load_compact` write and read ``spec.json`` plus
``model.safetensors``. :func:`compact_stats` counts parameters and multiply-accumulates.

The package is split by concern: :mod:`~sparselab.structure.compact.modules` (the small modules),
:mod:`~sparselab.structure.compact.slicing` (:func:`compact_vit`, :func:`pad_masks`),
:mod:`~sparselab.structure.compact.spec` (:func:`compact_spec`) and :mod:`~sparselab.structure.compact.saving`
(:func:`save_compact`, :func:`load_compact`), :mod:`~sparselab.structure.compact.onnx` (:func:`export_onnx`,
checked with ONNX Runtime); :func:`compact_stats` lives in :mod:`sparselab.cost`, next to
:func:`~sparselab.cost.latency_ms`. Every name is importable from here as before.

Example:
    >>> import timm, torch
    >>> model = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
    >>> masks = {0: {"mlp_hid": torch.arange(256) < 100}}
    >>> small = compact_vit(model, masks)
    >>> small.blocks[0].mlp.fc1.out_features
    100
"""
from __future__ import annotations

from ...cost import compact_stats
from .modules import CompactBlock, CompactMlp, ConstantBranch, ScatterChannels, SelectChannels, ZeroPaddedLayerNorm
from .onnx import export_onnx
from .saving import load_compact, save_compact
from .slicing import compact_vit, pad_masks
from .spec import SPEC_FILE, SPEC_FORMAT, SPEC_VERSION, WEIGHTS_FILE, compact_spec

__all__ = ["compact_vit", "export_onnx", "compact_spec", "pad_masks", "compact_stats", "save_compact", "load_compact",
           "CompactBlock", "CompactMlp", "SelectChannels", "ScatterChannels", "ZeroPaddedLayerNorm", "ConstantBranch",
           "SPEC_FORMAT", "SPEC_VERSION", "SPEC_FILE", "WEIGHTS_FILE"]
