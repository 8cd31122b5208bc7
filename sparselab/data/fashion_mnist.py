"""Fashion-MNIST from ``data/``, else Debian's ``dataset-fashion-mnist`` package, else a torchvision download.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("fashion_mnist", limit=1000)   # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataNotFoundError
from ..paths import data_dir, offline
from .idx import read_idx
from .registry import register
from .tensors import build_bundle

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FIX_COMMAND = "sudo apt-get install -y dataset-fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (plain or ``.gz``), or None if any is missing."""
    found = {}
    for key, stem in _FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def candidate_dirs(root: Path | None = None) -> list[Path]:
    """Folders searched, in order: ``root`` (if given) or ``data/fashion_mnist`` and torchvision's layout
    ``data/FashionMNIST/raw``; then the Debian package's folder."""
    base = data_dir()
    local = [Path(root)] if root is not None else [base / "fashion_mnist", base / "FashionMNIST" / "raw"]
    return local + [DEBIAN_DIR]


def locate(root: str | Path | None = None, download: bool | None = None) -> dict[str, Path]:
    """Find the IDX files, downloading through torchvision as a last resort; one clear error if all fail."""
    dirs = candidate_dirs(Path(root) if root is not None else None)
    for d in dirs:
        files = _find_files(d)
        if files:
            return files
    allow = (not offline()) if download is None else download
    reason = "downloads disabled (SPARSELAB_OFFLINE=1 or download=False)"
    if allow:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(data_dir()), train=True, download=True)
            FashionMNIST(str(data_dir()), train=False, download=True)
            files = _find_files(data_dir() / "FashionMNIST" / "raw")
            if files:
                return files
            reason = "torchvision reported success but the files are missing"
        except Exception as exc:  # network errors come in many types
            reason = f"{type(exc).__name__}: {exc}"
    raise DataNotFoundError(
        "Fashion-MNIST not found. Looked in:\n"
        f"  1. {dirs[0]}" + (f" and {dirs[1]}" if len(dirs) > 2 else "") + " (the project's data/ folder)\n"
        f"  2. {DEBIAN_DIR} (Debian package dataset-fashion-mnist)\n"
        f"  3. a torchvision download into {data_dir()}: {reason}\n"
        f"Fix: {FIX_COMMAND}  (or copy the four *-ubyte[.gz] files into {dirs[0]})"
    )


@register("fashion_mnist", "Fashion-MNIST: 70k 28x28 greyscale clothing images, 10 classes")
def load_fashion_mnist(
    image_size: int | None = None,
    root: str | Path | None = None,
    download: bool | None = None,
    limit: int | None = None,
    classes: Sequence[int] | None = None,
    val_fraction: float = 0.1,
    augment: str = "flip",
    seed: int = 0,
):
    """Fashion-MNIST as normalised in-memory tensors (train/val carved from the 60k, test = the 10k)."""
    files = locate(root, download)
    arrays = {k: read_idx(p) for k, p in files.items()}
    if len(arrays["train_images"]) != len(arrays["train_labels"]):
        raise DataNotFoundError(f"{files['train_images']} and {files['train_labels']} disagree in length")
    return build_bundle(
        "fashion_mnist",
        (arrays["train_images"], arrays["train_labels"].astype(np.int64)),
        (arrays["test_images"], arrays["test_labels"].astype(np.int64)),
        class_names=CLASS_NAMES, image_size=image_size or 28, max_value=255.0, classes=classes, limit=limit,
        val_fraction=val_fraction, augment=augment, seed=seed,
    )
