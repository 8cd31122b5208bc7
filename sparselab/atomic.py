"""One way to write a file so that a crash never leaves it half-written: write a temporary file beside it, then
rename it over the target. Checkpoints, compact models, Histories, source-model records and result records all
use it, so an interrupted run finds either the old file or the new one.

Temporary files are named ``.{name}.*.tmp`` next to the target; :func:`orphans` finds those a killed process
left behind.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> _ = atomic_write(target, lambda tmp: pathlib.Path(tmp).write_text("a,b\\n1,2\\n"))
    >>> target.read_text().splitlines()[1]
    '1,2'
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` with the name of a fresh temporary file beside ``path``, then rename it to ``path``
    (creating the folder). ``fsync=True`` flushes the file to disk before the rename (checkpoints). The temporary
    file is removed if ``write`` raises. Returns the path.

    A ``path`` that is a folder, or lies under a file, is refused with a :class:`~sparselab.errors.ConfigError`
    before ``write`` runs (its work would be lost at the rename)."""
    from .errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give the path of a file (inside it, or elsewhere)")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"cannot write {path}: {blocking} is a file, not a folder; write it elsewhere or move "
                          f"that file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file for its owner alone (0600); the file takes the mode a plain open would give it,
        # or keeps the mode of the file it replaces
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    """This process's umask, read without changing it where the system tells it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def orphans(path: str | os.PathLike) -> list[Path]:
    """Temporary files of :func:`atomic_write` for ``path`` that a killed process left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


#: the first bytes of a file framed by :func:`checksummed`: this, the SHA-256 of the payload, a newline
CHECKSUM_MAGIC = b"sparselab-checkpoint sha256 "


def checksummed(payload: bytes) -> bytes:
    """``payload`` behind a header line holding its SHA-256, so that damage after writing can be told.

    Example:
        >>> unframe(checksummed(b"abc"), "x") == b"abc"
        True
    """
    return CHECKSUM_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def unframe(raw: bytes, path: str | Path) -> bytes:
    """The payload of a file framed by :func:`checksummed` (checked against its checksum), or ``raw`` itself when
    it carries no frame."""
    if not raw.startswith(CHECKSUM_MAGIC):
        return raw
    header, _, payload = raw.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(CHECKSUM_MAGIC):]:
        from .errors import CheckpointError

        raise CheckpointError(f"checkpoint {path} is corrupted: its contents do not match the checksum written "
                              f"with it (delete it to start over)")
    return payload
