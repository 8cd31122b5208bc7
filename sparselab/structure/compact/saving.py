"""Saving and loading compact ViTs: :func:`save_compact` writes ``spec.json`` (from
:func:`~sparselab.structure.compact.compact_spec`) and ``model.safetensors`` to a directory, each atomically, and
:func:`load_compact` rebuilds the described model and loads its weights, with clear errors for missing, malformed
or mismatched files.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ...atomic import atomic_write
from ...errors import CheckpointError, ConfigError
from ...models.checkpoints import state_dict_mismatch, state_dict_values
from .modules import ConstantBranch, ScatterChannels, SelectChannels, ZeroPaddedLayerNorm
from .slicing import _kept
from .spec import SPEC_FILE, SPEC_FORMAT, WEIGHTS_FILE, _build, _masks_from_spec

#: the key of ``spec.json`` that holds the SHA-256 of ``model.safetensors`` (absent in files written before it existed)
CHECKSUM_KEY = "weights_sha256"


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _dtype_mismatch(own: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> str:
    """The tensors of ``other`` whose dtype differs from the one the spec describes (at most five shown)."""
    wrong = sorted(k for k in set(own) & set(other) if own[k].dtype != other[k].dtype)
    shown = [f"{k} {str(other[k].dtype).replace('torch.', '')} vs {str(own[k].dtype).replace('torch.', '')}"
             for k in wrong[:5]]
    return ("dtype mismatch: " + ", ".join(shown) + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else "")
            if wrong else "")


#: the gate whose kept channels a compact block's channel module holds, by the block part it sits in
_INDEX_GATES = {"norm1": "attn_in", "ls1": "attn_out", "attn": "attn_out", "norm2": "mlp_in", "ls2": "mlp_out",
                "mlp": "mlp_out"}


def _layout_mismatch(spec: Mapping[str, Any], expected: nn.Module, model: nn.Module) -> str:
    """What ``model`` computes otherwise than the model ``spec`` describes (``expected``, built from it) although
    their weights have the same shapes: a module of another type, attention with another split into heads, norms
    with another eps, or other kept channels (the channel indices are not weights, so the weights file cannot
    carry them); an empty string when they agree."""
    from timm.layers import Attention

    own = dict(model.named_modules())
    for name, want in expected.named_modules():
        got = own.get(name)
        where = name or "the model"
        if type(got) is not type(want):
            return f"{where} is {type(got).__name__ if got is not None else 'missing'} where the spec has " \
                   f"{type(want).__name__}"
        if isinstance(want, Attention) and (got.num_heads, got.head_dim) != (want.num_heads, want.head_dim):
            return (f"{where} has {got.num_heads} heads of {got.head_dim} dimensions where the spec has "
                    f"{want.num_heads} of {want.head_dim} (another qkv_unit or other kept heads)")
        if isinstance(want, nn.LayerNorm) and got.eps != want.eps:
            return f"{where} has eps {got.eps:g} where the spec has {want.eps:g}"
        if isinstance(want, ZeroPaddedLayerNorm) and (got.full, got.eps, got.output_scale) != (
                want.full, want.eps, want.output_scale):
            return f"{where} ({got.extra_repr()}) differs from the spec's ({want.extra_repr()})"
    masks = _masks_from_spec(spec, ConfigError)
    for name, m in model.named_modules():
        if isinstance(m, (SelectChannels, ScatterChannels, ConstantBranch)):
            parts = name.split(".")
            layer, gate = int(parts[1]), _INDEX_GATES[parts[2]]
            if not torch.equal(m.index.detach().cpu(), _kept(masks[layer][gate])):
                return f"{name} holds other {gate} channels of layer {layer} than the spec's indices"
    return ""


def save_compact(model: nn.Module, spec: Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Write a compact model to ``directory`` as ``spec.json`` (from :func:`compact_spec`) and
    ``model.safetensors`` (its state dict); each file is written to a temporary file and then renamed.

    The spec is checked against the model first (the model it describes must have the same state-dict keys,
    shapes and dtypes, the same modules, heads and kept channels, and the weights must be finite); a mismatch
    raises :class:`~sparselab.errors.ConfigError`.
    The written ``spec.json`` also records the SHA-256 of ``model.safetensors`` (``weights_sha256``). Returns the
    directory.

    Example:
        >>> import tempfile, timm, torch
        >>> from sparselab.structure.compact import compact_spec, compact_vit
        >>> base = timm.create_model("vit_nano_patch4_28", num_classes=10)
        >>> masks = {0: {"mlp_hid": torch.arange(256) < 64}}
        >>> folder = save_compact(compact_vit(base, masks), compact_spec(base, masks), tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['model.safetensors', 'spec.json']
    """
    from safetensors.torch import save

    try:
        text = json.dumps(spec, indent=1, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"compact spec is not JSON-serialisable ({exc})") from None
    described = json.loads(text)
    expected_model = _build(described, ConfigError, device="meta")
    expected = expected_model.state_dict()
    state = _state(model)
    problem = (state_dict_mismatch(expected, state) or _dtype_mismatch(expected, state)
               or _layout_mismatch(described, expected_model, model))
    if problem:
        raise ConfigError(f"the model does not match the compact spec: {problem}")
    problem = state_dict_values(expected, state)
    if problem:
        raise ConfigError(f"the compact model cannot be saved: {problem}")
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; save_compact writes {SPEC_FILE} and {WEIGHTS_FILE} into a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {folder} ({type(exc).__name__}: {exc.strerror or exc})") from None
    blob = save(state, metadata={"format": SPEC_FORMAT})
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: Path(tmp).write_bytes(blob))
    # the spec records its weights file's checksum, so a changed or swapped weights file is refused on loading
    described[CHECKSUM_KEY] = hashlib.sha256(blob).hexdigest()
    text = json.dumps(described, indent=1, sort_keys=True)

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    atomic_write(folder / SPEC_FILE, write_json)
    return folder


def load_compact(directory: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a compact model written by :func:`save_compact` and load its weights; returned in eval mode.

    Raises:
        CheckpointError: the directory is missing or empty, a file is missing, unreadable or malformed, the
            weights do not fit the described model (keys, shapes, dtypes), differ from the checksum the spec
            records, or hold NaN or infinite values.
        ConfigError: ``device`` names no torch device, or a GPU this machine does not have.

    Example:
        >>> import tempfile, timm, torch
        >>> from sparselab.structure.compact import compact_spec, compact_vit
        >>> base = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
        >>> small = compact_vit(base, {2: {"attn_out": torch.arange(64) < 32}})
        >>> folder = save_compact(small, compact_spec(base, {2: {"attn_out": torch.arange(64) < 32}}),
        ...                       tempfile.mkdtemp())
        >>> x = torch.randn(1, 1, 28, 28)
        >>> torch.equal(load_compact(folder)(x), small(x))
        True
    """
    from ...models.checkpoints import read_state_dict

    target = _target_device(device)
    folder = Path(directory)
    if folder.is_file():
        raise CheckpointError(f"{folder} is a file; give the compact model directory that holds {SPEC_FILE} and "
                              f"{WEIGHTS_FILE}")
    if not folder.is_dir():
        raise CheckpointError(f"compact model directory {folder} does not exist")
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    if not spec_path.is_file():
        what = "is empty" if not any(folder.iterdir()) else f"has no {SPEC_FILE}"
        raise CheckpointError(f"compact model directory {folder} {what}; save_compact writes {SPEC_FILE} and "
                              f"{WEIGHTS_FILE}")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{spec_path} could not be read ({type(exc).__name__}: {exc})") from None
    if not weights_path.is_file():
        raise CheckpointError(f"compact model directory {folder} has {SPEC_FILE} but no {WEIGHTS_FILE}")
    model = _build(spec, CheckpointError)
    state = read_state_dict(weights_path)
    own = model.state_dict()
    problem = state_dict_mismatch(own, state) or _dtype_mismatch(own, state)
    if problem:
        raise CheckpointError(f"{weights_path} does not match {spec_path}: {problem}")
    if CHECKSUM_KEY in spec and spec[CHECKSUM_KEY] != hashlib.sha256(weights_path.read_bytes()).hexdigest():
        raise CheckpointError(f"{weights_path} does not match the checksum recorded in {spec_path}: it was changed "
                              f"or damaged after saving, or comes from another save; save the model again")
    problem = state_dict_values(own, state)
    if problem:
        raise CheckpointError(f"{weights_path} cannot be loaded: {problem}")
    model.load_state_dict(state, strict=True)
    return model.to(target).eval()


def _target_device(device: Any) -> torch.device:
    """``device`` as a torch device that this machine has, checked before any file is read."""
    try:
        if isinstance(device, bool):
            raise TypeError
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if target.type == "cuda" and (not torch.cuda.is_available()
                                  or (target.index or 0) >= torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(f"device {str(target)!r} is not on this machine ({have} CUDA device(s)); give 'cpu' or "
                          f"an existing GPU")
    return target
