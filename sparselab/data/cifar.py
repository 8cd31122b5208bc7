"""CIFAR-10/100 from torchvision's on-disk layout (the python pickles), downloaded by torchvision if allowed.

At small sizes (< 128 px) the images are held in memory as tensors; at photo scale they are served through
timm's transforms.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("cifar10", root="data")   # doctest: +SKIP
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError, DataNotFoundError, check_ratio
from ..paths import data_dir, offline
from .datasets import AUGMENTS, DataBundle
from .registry import (
    check_download,
    check_image_size,
    check_limit,
    check_limit_per_class,
    check_pad_value,
    check_root,
    check_seed,
    register,
)
from .tensors import build_bundle, class_list, select_classes, stratified_limit, stratified_split
from .transforms import PAPER_SCALE, check_pad, image_transforms

DEFAULT_PAD = 4  # the CIFAR recipes' random-crop padding below 128 px

_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names",
                    tv="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", tv="CIFAR100"),
}


def _unpickle(path: Path, keys: Sequence[str]) -> dict:
    """The pickled dict in ``path`` (keys as str), which must hold ``keys``; a clear error for a damaged file."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as exc:  # a cut-off or damaged pickle fails in many ways
        raise DataNotFoundError(f"{path} cannot be read as a CIFAR batch ({type(exc).__name__}: {exc}): the file is "
                                f"damaged or truncated; copy or download it again") from None
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"{path} is not a CIFAR batch: it holds a {type(obj).__name__}, not a dict")
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataNotFoundError(f"{path} is not a CIFAR batch: it lacks {', '.join(missing)} "
                                f"(it holds {', '.join(sorted(map(str, obj))) or 'nothing'})")
    return obj


def read_cifar(root: Path, name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """Read the pickled batches under ``root/<folder>``: (train, test) as uint8 (N, 32, 32, 3) + labels, names."""
    lay = _LAYOUT[name]
    folder = root / lay["folder"]

    def part(files):
        xs, ys = [], []
        for fname in files:
            d = _unpickle(folder / fname, ("data", lay["label_key"]))
            data, labels = np.asarray(d["data"]), np.asarray(d[lay["label_key"]])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataNotFoundError(f"{folder / fname} is not a CIFAR batch: its data must be uint8 rows of "
                                        f"{3 * 32 * 32} values, got {data.dtype} of shape {data.shape}")
            if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
                raise DataNotFoundError(f"{folder / fname} holds {len(data)} images but {lay['label_key']} "
                                        f"{labels.dtype} of shape {labels.shape}: one integer label per image")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
                raise DataNotFoundError(f"{folder / fname} holds labels from {labels.min()} to {labels.max()}; "
                                        f"{name} has {len(names)} classes (0 to {len(names) - 1})")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels.astype(np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    meta = _unpickle(folder / lay["meta"], (lay["names_key"],))
    names = [n.decode() if isinstance(n, bytes) else n for n in meta[lay["names_key"]]]
    return part(lay["train"]), part(lay["test"]), names


def _locate(name: str, root: Path | None, download: bool | None) -> Path:
    lay = _LAYOUT[name]
    base = Path(root).expanduser() if root is not None else data_dir()
    needed = lay["train"] + lay["test"] + [lay["meta"]]
    if all((base / lay["folder"] / f).is_file() for f in needed):
        return base
    allow = (not offline()) if download is None else download
    reason = "downloads disabled (SPARSELAB_OFFLINE=1 or download=False)"
    if allow:
        try:
            import torchvision.datasets as tvd

            getattr(tvd, lay["tv"])(str(base), train=True, download=True)
            return base
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
    raise DataNotFoundError(
        f"{name} not found: expected {', '.join(needed)} under {base / lay['folder']}; download failed: {reason}. "
        f"Fix: run once where the network is available (torchvision downloads it into {base}), or copy the "
        f"extracted '{lay['folder']}' folder there."
    )


class ArrayImages(Dataset):
    """uint8 HWC images served through PIL transforms (used for photo-scale training on small datasets)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _load(name: str, image_size, root, download, limit, classes, val_fraction, augment, seed, pad) -> DataBundle:
    limit = check_limit(limit)
    check_ratio("val_fraction", val_fraction)
    seed = check_seed(seed)
    check_root(root)
    pad = check_pad_value(pad)
    num_classes = 10 if name == "cifar10" else 100
    if classes is not None:
        num_classes = len(set(class_list(classes)))
    check_limit_per_class(name, limit, num_classes)  # before the files are read (or downloaded)
    download = check_download(download)
    size = check_image_size(image_size) or 32
    allowed = AUGMENTS if size < PAPER_SCALE else ("crop_flip", "randaugment", "none")
    if augment not in allowed:
        raise ConfigError(f"augment must be one of {allowed} for {name} at {size} px"
                          + (" ('crop_flip' and 'randaugment' both mean timm's RandAugment pipeline there)"
                             if size >= PAPER_SCALE else "") + f", got {augment!r}")
    check_pad(pad, size, crops="crop" in augment, where=f" for {name} with augment={augment!r}")
    base = _locate(name, root, download)
    train, test, names = read_cifar(base, name)
    if size < PAPER_SCALE:
        return build_bundle(name, train, test, class_names=names, image_size=size, max_value=255.0,
                            classes=classes, limit=limit, val_fraction=val_fraction, augment=augment, seed=seed,
                            pad=DEFAULT_PAD if pad is None else pad)
    tr_x, tr_y = select_classes(*train, classes)
    te_x, te_y = select_classes(*test, classes)
    tr_idx, va_idx = stratified_split(tr_y, val_fraction, seed)
    if not len(tr_idx):
        raise ConfigError(f"{name}: no training images are left (val_fraction={val_fraction} of {len(tr_y)} images "
                          f"goes to validation); lower val_fraction")
    if limit is not None:
        check_limit_per_class(name, limit, len(np.unique(tr_y[tr_idx])))
        tr_idx = tr_idx[stratified_limit(tr_y[tr_idx], limit, seed)]
    train_tf, eval_tf = image_transforms(size, augment=augment != "none")
    kept = [names[c] for c in classes] if classes is not None else names
    return DataBundle(
        name, ArrayImages(tr_x[tr_idx], tr_y[tr_idx], train_tf),
        ArrayImages(tr_x[va_idx], tr_y[va_idx], eval_tf) if len(va_idx) else None,
        ArrayImages(te_x, te_y, eval_tf), num_classes=len(kept), in_chans=3, image_size=size, classes=kept,
    )


@register("cifar10", "CIFAR-10: 60k 32x32 colour images, 10 classes (torchvision layout)")
def load_cifar10(image_size=None, root=None, download=None, limit=None, classes: Sequence[int] | None = None,
                 val_fraction=0.1, augment="crop_flip", seed=0, pad=None):
    """CIFAR-10; in memory below 128 px (random crop after ``pad`` pixels of padding, 4 by default), timm
    transforms above (``pad`` is refused there: they pad nothing). Every class keeps at least one training image
    when ``val_fraction`` splits off the validation images."""
    return _load("cifar10", image_size, root, download, limit, classes, val_fraction, augment, seed, pad)


@register("cifar100", "CIFAR-100: 60k 32x32 colour images, 100 classes (torchvision layout)")
def load_cifar100(image_size=None, root=None, download=None, limit=None, classes: Sequence[int] | None = None,
                  val_fraction=0.1, augment="crop_flip", seed=0, pad=None):
    """CIFAR-100 (fine labels); in memory below 128 px (random crop after ``pad`` pixels of padding, 4 by
    default), timm transforms above (``pad`` is refused there: they pad nothing). Every class keeps at least one
    training image when ``val_fraction`` splits off the validation images."""
    return _load("cifar100", image_size, root, download, limit, classes, val_fraction, augment, seed, pad)

