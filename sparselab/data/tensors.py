"""Turning raw image arrays into normalised in-memory splits: class selection, stratified subsets, resizing.

Example:
    >>> import numpy as np
    >>> from sparselab.data.tensors import stratified_split
    >>> a, b = stratified_split(np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1]), 0.2, seed=0)
    >>> len(a), len(b)
    (8, 2)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, check_ratio
from .datasets import DataBundle, TensorImages
from .registry import check_image_size, check_limit, check_limit_per_class, check_seed


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, part) with ``part`` holding about ``fraction`` of every class (rounded per class).

    Every class keeps at least one item in ``rest`` (the side training images come from), so that a class with a
    single image, or a small class under a large fraction, is never split off whole and left unseen in training.
    Only a fraction that would take every item of every class leaves ``rest`` empty; callers refuse that.

    Example:
        >>> labels = np.array([0, 0, 0, 0, 1])
        >>> rest, part = stratified_split(labels, 0.6, seed=0)
        >>> labels[rest].tolist(), labels[part].tolist()   # class 1's single image stays in ``rest``
        ([0, 0, 1], [0, 0])
    """
    fraction = check_ratio("fraction", fraction)
    seed = check_seed(seed)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    groups = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        groups.append((idx, int(round(fraction * len(idx)))))
    everything = all(k >= len(idx) for idx, k in groups)
    rest, part = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for idx, k in groups:
        k = k if everything else min(k, len(idx) - 1)
        part.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(part))


def stratified_limit(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of exactly ``min(limit, len(labels))`` items, classes kept in proportion (largest remainders; ties
    go to the larger class, then the lower label), sorted; deterministic for a seed.

    A ``limit`` of at least the number of classes keeps at least one item of every class, even of one whose
    share would round to none (that item is taken from the class furthest above its share).

    Example:
        >>> labels = np.array([0] * 98 + [1, 2])
        >>> labels[stratified_limit(labels, 3, seed=0)].tolist()   # in proportion alone: [0, 0, 0]
        [0, 1, 2]
    """
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (limit / len(labels))
    take = np.floor(quota).astype(int)
    order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), -counts[i], i))
    for i in order[: limit - int(take.sum())]:
        take[i] += 1
    if limit >= len(classes) and not take.all():
        take[take == 0] = 1
        for _ in range(int(take.sum()) - limit):  # some class keeps more than one while the sum exceeds limit
            i = max((i for i in range(len(classes)) if take[i] > 1),
                    key=lambda i: (take[i] - quota[i], counts[i], -i))
            take[i] -= 1
    keep = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        keep.append(idx[:k])
    return np.sort(np.concatenate(keep))


def class_list(classes) -> list[int]:
    """``classes`` (a list, tuple, numpy array or tensor of labels) as a list of Python ints; anything else, or
    labels that are not whole numbers, is a :class:`ConfigError`.

    Example:
        >>> class_list(np.array([3, 1])), class_list(torch.tensor([0, 2]))
        ([3, 1], [0, 2])
    """
    if isinstance(classes, (np.ndarray, torch.Tensor)):
        if classes.ndim != 1:
            raise ConfigError(f"classes must be a 1-d list of labels, got an array of shape {tuple(classes.shape)}")
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ConfigError(f"classes must be a list of labels such as [0, 1, 2], got {classes!r}")
    out = []
    for c in classes:
        if isinstance(c, (np.integer, torch.Tensor)) and getattr(c, "ndim", 0) == 0:
            c = c.item()
        if isinstance(c, bool) or not isinstance(c, int):
            raise ConfigError(f"classes must be integer labels, got {c!r} in {list(classes)}")
        out.append(c)
    return out


def select_classes(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None, require: bool = True):
    """Keep only ``classes`` and renumber them 0..k-1 in the given order. With ``require`` (the training split)
    every class must occur in ``labels``; without (a test split, which may be empty) absent ones are skipped."""
    if classes is None:
        return images, labels
    classes = class_list(classes)
    present = set(np.unique(labels).tolist())
    bad = [c for c in classes if c not in present] if require else []
    if bad or len(set(classes)) != len(classes) or not classes:
        raise ConfigError(f"classes must be distinct labels among {sorted(present)}, got {list(classes)}")
    keep = np.isin(labels, classes)
    remap = {c: i for i, c in enumerate(classes)}
    return images[keep], np.array([remap[int(c)] for c in labels[keep]], dtype=np.int64)


def to_float(images: np.ndarray, image_size: int, max_value: float) -> torch.Tensor:
    """uint8/float ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` arrays to float ``(N, C, S, S)`` in [0, 1]."""
    if np.issubdtype(np.asarray(images).dtype, np.floating) and not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).sum())
        raise ConfigError(f"{bad} pixel values are NaN or infinite: the image data is damaged")
    x = torch.as_tensor(np.ascontiguousarray(images)).float() / max_value
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0, 1).contiguous()


def check_labels(name: str, labels: np.ndarray, num_classes: int, split: str = "training") -> None:
    """The ``split`` labels of dataset ``name`` are a 1-d array of integers in ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"{name}: the {split} labels must be a 1-d array, got shape {labels.shape}")
    if len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                        or labels.max() >= num_classes):
        raise ConfigError(f"{name}: the {split} labels must be integers in [0, {num_classes}) (one per class name), "
                          f"got values from {labels.min()!r} to {labels.max()!r} ({labels.dtype})")


def build_bundle(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    *,
    class_names: Sequence[str],
    image_size: int,
    max_value: float,
    classes: Sequence[int] | None = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    augment: str = "none",
    seed: int = 0,
    pad: int = 2,
) -> DataBundle:
    """Assemble a normalised in-memory :class:`DataBundle` from raw (images, labels) arrays.

    The validation split is carved from the training images (stratified, fixed by ``seed``; every class keeps at
    least one training image unless ``val_fraction`` would take them all); ``limit`` caps the training images after
    that, keeping at least one of every class (a limit below the number of classes in the training split is
    refused); mean/std normalisation uses the training split's statistics. Random crops pad by ``pad`` pixels of
    black (in normalised units).
    """
    val_fraction = check_ratio("val_fraction", val_fraction)
    seed = check_seed(seed)
    if classes is not None:
        classes = class_list(classes)
    limit = check_limit(limit)
    image_size = check_image_size(image_size)
    for split, part in (("training", train), ("test", test)):
        if part is not None:
            if len(part[0]) != len(part[1]):
                raise ConfigError(f"{name}: {len(part[0])} {split} images but {len(part[1])} labels")
            check_labels(name, part[1], len(class_names), split)
    if not len(train[1]):
        raise ConfigError(f"{name}: there are no training images")
    tr_x, tr_y = select_classes(*train, classes)
    names = [class_names[c] for c in classes] if classes is not None else list(class_names)
    tr_idx, va_idx = stratified_split(tr_y, val_fraction, seed)
    if not len(tr_idx):
        raise ConfigError(f"{name}: no training images are left (val_fraction={val_fraction} of "
                          f"{len(tr_y)} images goes to validation); lower val_fraction")
    if limit is not None:
        check_limit_per_class(name, limit, len(np.unique(tr_y[tr_idx])))
        tr_idx = tr_idx[stratified_limit(tr_y[tr_idx], limit, seed)]
    x_train = to_float(tr_x[tr_idx], image_size, max_value)
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x - mean[None, :, None, None]) / std[None, :, None, None]

    black = (-mean / std).tolist()

    def make(x: torch.Tensor, y: np.ndarray, aug: str) -> TensorImages:
        return TensorImages(norm(x), torch.as_tensor(y, dtype=torch.long), augment=aug, pad=pad, fill=black)

    train_ds = make(x_train, tr_y[tr_idx], augment)
    val_ds = make(to_float(tr_x[va_idx], image_size, max_value), tr_y[va_idx], "none") if len(va_idx) else None
    test_ds = None
    if test is not None:
        te_x, te_y = select_classes(*test, classes, require=False)
        test_ds = make(to_float(te_x, image_size, max_value), te_y, "none") if len(te_y) else None
    return DataBundle(
        name=name, train=train_ds, val=val_ds, test=test_ds, num_classes=len(names),
        in_chans=x_train.shape[1], image_size=image_size, classes=names,
        mean=tuple(mean.tolist()), std=tuple(std.tolist()),
    )
