"""Reading model weights from a local file (safetensors or a torch checkpoint) with clear errors.

Example:
    >>> import torch, tempfile, os
    >>> from safetensors.torch import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"weight": torch.ones(2)}, path)
    >>> read_state_dict(path)["weight"].tolist()
    [1.0, 1.0]
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..atomic import CHECKSUM_MAGIC, unframe
from ..errors import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file (unwrapping ``model``/``state_dict`` keys)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the .safetensors or torch file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); delete it and rebuild or re-download it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_file(path)
    except CheckpointError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, pickle.UnpicklingError):  # torch's text here advises running the file's code
            first = "it is not a file of tensors"
        raise CheckpointError(f"checkpoint {path} could not be read as model weights (a .safetensors file or a torch "
                              f"state dict): {type(exc).__name__}: {first}") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no tensors (empty or not a state dict)")
    return state


def _torch_file(path: Path) -> Any:
    """A torch file loaded without running code from it (``weights_only``); sparselab's own training checkpoint
    (``checkpoint/last.pt``: a checksum line, then the payload, whose RNG states hold numpy arrays) included."""
    with open(path, "rb") as f:
        own = f.read(len(CHECKSUM_MAGIC)) == CHECKSUM_MAGIC
    if not own:
        return torch.load(path, map_location="cpu", weights_only=True)
    import io

    import numpy as np

    payload = unframe(path.read_bytes(), path)
    multiarray = getattr(np, "_core", None) or np.core
    allowed = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def head_keys(model: nn.Module) -> set[str]:
    """Parameter names of the classifier head (timm's ``pretrained_cfg['classifier']`` or the last Linear)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    if names:
        names = [names] if isinstance(names, str) else list(names)
        return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {f"{last[-1]}.weight", f"{last[-1]}.bias"} if last else set()


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def state_dict_mismatch(own: Mapping[str, Any], other: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """What keeps ``other`` from loading into a module whose state dict is ``own``: missing and unexpected keys and
    shape mismatches, each listed (at most five shown); an empty string when they fit."""
    ignore = set(ignore)
    missing = sorted(set(own) - set(other) - ignore)
    unexpected = sorted(set(other) - set(own))
    wrong = sorted(k for k in set(own) & set(other) if tuple(own[k].shape) != tuple(other[k].shape))
    parts = []
    if missing:
        parts.append(f"missing keys: {_show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_show(unexpected)}")
    if wrong:
        parts.append("shape mismatch: " + _show([f"{k} {tuple(other[k].shape)} vs {tuple(own[k].shape)}"
                                                  for k in wrong]))
    return "; ".join(parts)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Load ``state`` into ``model``; a head of another class count is skipped (transfer), anything else that
    does not fit (other keys or shapes, integer tensors for float weights, NaN or infinite values) raises
    :class:`CheckpointError`. Returns the skipped keys."""
    own = model.state_dict()
    heads = head_keys(model)
    skipped = [k for k in heads if k in state and k in own and state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    problems = state_dict_mismatch(own, state, ignore=skipped)
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: {problems}")
    problems = state_dict_values(own, state)
    if problems:
        raise CheckpointError(f"{source} cannot be loaded into {type(model).__name__}: {problems}")
    model.load_state_dict(state, strict=False)
    return skipped


def nonfinite_entries(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of ``state`` whose floating-point tensors hold NaN or ±inf, in ``state``'s order.

    Example:
        >>> nonfinite_entries({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)})
        ['b']
    """
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def state_dict_values(own: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> str:
    """What makes the values of ``other`` unfit for a module whose state dict is ``own`` (keys and shapes already
    agreeing): integer or boolean tensors for floating-point ones, and NaN or infinite values, each listed; an empty
    string when they fit."""
    parts = []
    kinds = sorted(k for k in set(own) & set(other)
                   if own[k].is_floating_point() and not other[k].is_floating_point())
    if kinds:
        parts.append("not floating point: " + _show([f"{k} {str(other[k].dtype).replace('torch.', '')}"
                                                      for k in kinds]))
    bad = sorted(nonfinite_entries(other))
    if bad:
        parts.append(f"NaN or infinite values in {_show(bad)}")
    return "; ".join(parts)
