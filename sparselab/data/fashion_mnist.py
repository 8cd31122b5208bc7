"""Fashion-MNIST from ``data/``, else Debian's ``dataset-fashion-mnist`` package, else a torchvision download.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("fashion_mnist", limit=1000)   # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataNotFoundError, check_ratio
from ..paths import data_dir, offline
from .datasets import AUGMENTS
from .idx import read_idx
from .registry import check_download, check_limit, check_limit_per_class, check_root, check_seed, register
from .tensors import build_bundle, class_list

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


def _pick(plain: Path, packed: Path) -> Path | None:
    """The file to read of ``plain`` and its ``.gz`` form: the plain one (faster) unless the ``.gz`` is newer, as
    when new files were copied over an old extracted copy."""
    if plain.is_file() and packed.is_file():
        return packed if packed.stat().st_mtime > plain.stat().st_mtime else plain
    return plain if plain.is_file() else packed if packed.is_file() else None


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (plain or ``.gz``), or None if any is missing."""
    found = {}
    for key, stem in _FILES.items():
        path = _pick(folder / stem, folder / f"{stem}.gz")
        if path is None:
            return None
        found[key] = path
    return found


def candidate_dirs(root: Path | None = None) -> list[Path]:
    """Folders searched, in order. With an explicit ``root``: ``root`` and torchvision's layout under it
    (``root/FashionMNIST/raw``), nothing else. Without: ``data/fashion_mnist``, ``data/FashionMNIST/raw``, then
    the Debian package's folder."""
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / "FashionMNIST" / "raw"]
    base = data_dir()
    return [base / "fashion_mnist", base / "FashionMNIST" / "raw", DEBIAN_DIR]


def _download(into: Path) -> tuple[dict[str, Path] | None, str]:
    """Download through torchvision into ``into``: (the files, "") or (None, why not)."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(into), train=True, download=True)
        FashionMNIST(str(into), train=False, download=True)
        files = _find_files(into / "FashionMNIST" / "raw")
        if files:
            return files, ""
        return None, "torchvision reported success but the files are missing"
    except Exception as exc:  # network errors come in many types
        return None, f"{type(exc).__name__}: {exc}"


def check_arrays(files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """The IDX arrays are Fashion-MNIST's: uint8 images (N, H, W), one uint8 label in [0, 10) per image."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_file, label_file = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataNotFoundError(f"{image_file} is not a Fashion-MNIST image file: expected uint8 images of shape "
                                    f"(N, H, W), got {images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataNotFoundError(f"{label_file} is not a Fashion-MNIST label file: expected one uint8 label per "
                                    f"image, got {labels.dtype} of shape {labels.shape}")
        if len(images) != len(labels):
            raise DataNotFoundError(f"{image_file} and {label_file} disagree in length "
                                    f"({len(images)} images, {len(labels)} labels)")
        if len(labels) and labels.max() >= len(CLASS_NAMES):
            raise DataNotFoundError(f"{label_file} holds the label {int(labels.max())}; Fashion-MNIST's labels are "
                                    f"0 to {len(CLASS_NAMES) - 1}")
    check_image_shapes(files, arrays)


def check_image_shapes(files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Training and test images share one square size (resizing would stretch or shrink one split silently), and
    there are training images."""
    train, test = arrays["train_images"], arrays["test_images"]
    if not len(train):
        raise DataNotFoundError(f"{files['train_images']} holds no images")
    if train.shape[1] != train.shape[2] or (len(test) and test.shape[1:] != train.shape[1:]):
        raise DataNotFoundError(f"{files['train_images']} and {files['test_images']} must hold square images of "
                                f"one size (Fashion-MNIST's are 28x28), got {train.shape[1]}x{train.shape[2]} and "
                                f"{test.shape[1]}x{test.shape[2]}")


def locate(root: str | Path | None = None, download: bool | None = None) -> dict[str, Path]:
    """Find the IDX files, downloading through torchvision as a last resort; one clear error if all fail.

    An explicit ``root`` is honoured: the files must be there (or be downloaded there); ``data/`` and the Debian
    package are not consulted."""
    dirs = candidate_dirs(Path(root) if root is not None else None)
    for d in dirs:
        files = _find_files(d)
        if files:
            return files
    allow = (not offline()) if download is None else download
    reason = "downloads disabled (SPARSELAB_OFFLINE=1 or download=False)"
    if root is not None:
        if allow and not dirs[0].is_file():
            files, reason = _download(dirs[0])
            if files:
                return files
        expected = ", ".join(f"{stem}[.gz]" for stem in _FILES.values())
        raise DataNotFoundError(
            f"Fashion-MNIST not found under root={str(root)!r}: expected {expected} in {dirs[0]} or {dirs[1]}"
            f"{'' if dirs[0].is_dir() else ' (that folder does not exist)'}; download: {reason}. Fix: copy the "
            f"four files there, or leave out root= to use {data_dir() / 'fashion_mnist'} or the Debian package "
            f"({FIX_COMMAND})")
    if allow:
        files, reason = _download(data_dir())
        if files:
            return files
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
    limit = check_limit(limit)
    check_ratio("val_fraction", val_fraction)
    check_seed(seed)
    check_root(root)
    num_classes = len(CLASS_NAMES) if classes is None else len(set(class_list(classes)))
    check_limit_per_class("fashion_mnist", limit, num_classes)  # before the files are read (or downloaded)
    download = check_download(download)
    if augment not in AUGMENTS:
        raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    files = locate(root, download)
    arrays = {k: read_idx(p) for k, p in files.items()}
    check_arrays(files, arrays)
    return build_bundle(
        "fashion_mnist",
        (arrays["train_images"], arrays["train_labels"].astype(np.int64)),
        (arrays["test_images"], arrays["test_labels"].astype(np.int64)),
        class_names=CLASS_NAMES, image_size=image_size or 28, max_value=255.0, classes=classes, limit=limit,
        val_fraction=val_fraction, augment=augment, seed=seed,
    )
