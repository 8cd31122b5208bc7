"""Where sparselab keeps datasets, checkpoints and run outputs.

The data directory is, in order: ``$SPARSELAB_DATA``; the repository's ``data/`` folder when sparselab runs
from a checkout; ``~/.cache/sparselab``.

Example:
    >>> from sparselab.paths import data_dir
    >>> data_dir().name in {"data", "sparselab"} or True
    True
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The directory where datasets and cached checkpoints live (created on demand)."""
    env = os.environ.get("SPARSELAB_DATA")
    if env:
        path = Path(env).expanduser()
        where = f"SPARSELAB_DATA={env}"
    elif (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "data").is_dir():
        path = REPO_ROOT / "data"
        where = str(path)
    else:
        path = Path.home() / ".cache" / "sparselab"
        where = str(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where} is a file, not a folder: the data directory must be a folder (created if "
                          f"missing)" + ("; point SPARSELAB_DATA at one or unset it" if env else ""))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"the data directory {where} cannot be created ({type(exc).__name__}: {exc})"
                          + ("; point SPARSELAB_DATA at a writable folder or unset it" if env else "")) from None
    return path


def offline() -> bool:
    """True when downloads are disabled (``SPARSELAB_OFFLINE=1``); tests always run offline."""
    return os.environ.get("SPARSELAB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
