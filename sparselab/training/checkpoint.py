"""Atomic checkpoint files with a checksum: written to a temporary file in the same folder, flushed, then renamed.

A checkpoint is a short header (a magic line and the SHA-256 of the payload) followed by ``torch.save``'s bytes,
so a file damaged after it was written is refused instead of loaded. A temporary file left behind by a killed
write is removed by :func:`remove_orphans` (``sparselab.fit`` calls it when it starts).

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "last.pt")
    >>> atomic_save({"step": 3}, p)
    >>> load_checkpoint(p)["step"]
    3
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..atomic import CHECKSUM_MAGIC, atomic_write, checksummed, orphans, unframe
from ..errors import CheckpointError

FORMAT = "sparselab.checkpoint/1"
MAGIC = CHECKSUM_MAGIC


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``, with a checksum of its contents."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(checksummed(payload))

    atomic_write(path, write, fsync=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`, with a clear error for empty or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    raw = unframe(path.read_bytes(), path)
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    return obj


def remove_orphans(path: str | Path) -> list[Path]:
    """Delete temporary files that a killed :func:`atomic_save` of ``path`` left behind; returns them."""
    found = orphans(path)
    for p in found:
        p.unlink(missing_ok=True)
    return found
