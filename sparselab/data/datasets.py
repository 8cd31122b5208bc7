"""Dataset containers: an in-memory image tensor dataset with vectorised augmentation, and the split bundle.

Small datasets (Fashion-MNIST, digits, CIFAR at 32 px) live in memory as normalised float tensors and are
batched by indexing, which is several times faster on a 2-core CPU than a DataLoader with PIL transforms.
Large ones (224-px ImageFolder trees) stay ordinary ``torch.utils.data.Dataset`` objects with timm transforms.

Example:
    >>> import torch
    >>> ds = TensorImages(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), augment="flip")
    >>> x, y = ds.get_batch(torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0), train=True)
    >>> tuple(x.shape), y.tolist()
    ((2, 1, 8, 8), [0, 0])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError

Augment = Literal["none", "flip", "crop", "crop_flip"]
AUGMENTS = ("none", "flip", "crop", "crop_flip")


class TensorImages(Dataset):
    """Images held in memory as a float tensor ``(N, C, H, W)`` (already normalised) with integer labels.

    ``augment`` applies on training batches only: ``flip`` (random horizontal flip), ``crop`` (random crop
    after padding by ``pad`` pixels), or ``crop_flip``. The padding holds ``fill`` per channel (default 0; a
    normalised dataset passes the value a black pixel normalises to, as torchvision's RandomCrop pads before
    normalising).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: Augment = "none", pad: int = 2,
                 fill: Sequence[float] | None = None):
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        if images.ndim != 4:
            raise ConfigError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.ndim != 1:
            raise ConfigError(f"labels must be a 1-d tensor (one class index per image), got shape "
                              f"{tuple(labels.shape)}")
        if len(images) != len(labels):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            raise ConfigError("labels must be whole numbers (class indices), got fractional values")
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.images = images.float().contiguous()
        self.labels = labels.long()
        if isinstance(pad, np.integer):
            pad = int(pad)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ConfigError(f"pad must be an integer >= 0 (pixels of padding before a random crop), got {pad!r}")
        self.augment = augment
        self.pad = pad
        self.fill = tuple(float(v) for v in fill) if fill is not None else None
        if self.fill is not None and len(self.fill) != images.shape[1]:
            raise ConfigError(f"fill needs one value per channel ({images.shape[1]}), got {len(self.fill)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    def get_batch(self, idx: torch.Tensor, generator: torch.Generator | None = None, train: bool = False):
        """Return ``(images, labels)`` for the indices, augmented with ``generator`` when ``train``."""
        x = self.images[idx]
        y = self.labels[idx]
        if train and self.augment != "none":
            x = self._augment(x, generator)
        return x, y

    def _augment(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        if "crop" in self.augment and self.pad > 0:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            if self.fill is not None:
                border = torch.ones(1, 1, h + 2 * p, w + 2 * p, dtype=torch.bool)
                border[..., p:p + h, p:p + w] = False
                fill = torch.tensor(self.fill, dtype=x.dtype)[None, :, None, None]
                padded = torch.where(border, fill, padded)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
            rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
            cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
            b = torch.arange(n)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if "flip" in self.augment:
            flip = torch.rand(n, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous()

    def subset(self, idx: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[idx], self.labels[idx], self.augment, self.pad, self.fill)


@dataclass
class DataBundle:
    """The splits of one dataset plus what a model needs to know about it.

    ``val`` may be ``None`` (then evaluation uses ``test``). Every split yields ``(image, label)`` pairs.
    """

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    num_classes: int
    in_chans: int
    image_size: int
    classes: Sequence[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    options: dict = field(default_factory=dict)  # what it was loaded with (sparselab.data.load records them)

    def split(self, name: str) -> Dataset:
        """Return the split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split must be 'train', 'val' or 'test', got {name!r}")
        ds = getattr(self, name)
        if ds is None:
            raise ConfigError(f"dataset {self.name!r} has no {name!r} split")
        return ds

    @property
    def eval_split(self) -> Dataset | None:
        """The split evaluated during training: ``val`` when present, else ``test``."""
        return self.val if self.val is not None else self.test

    def fingerprint(self) -> dict:
        """What identifies this data for a resumed run: name, loading options, split sizes, classes, image shape
        and a hash of the training labels in order (another dataset, subset, class order or split changes it).

        Example:
            >>> import torch
            >>> b = DataBundle("toy", TensorImages(torch.zeros(4, 1, 4, 4), torch.tensor([0, 1, 1, 0])), None, None,
            ...                num_classes=2, in_chans=1, image_size=4)
            >>> b.fingerprint()["sizes"]
            [4, 0, 0]
        """
        import hashlib

        labels = _labels_of(self.train)
        digest = (hashlib.sha256(labels.numpy().astype("int64").tobytes()).hexdigest()[:16]
                  if labels is not None else None)
        return {"name": self.name, "options": {k: _plain(v) for k, v in sorted(self.options.items())},
                "sizes": [len(d) if d is not None else 0 for d in (self.train, self.val, self.test)],
                "num_classes": _plain(self.num_classes), "classes": _plain(list(self.classes)),
                "in_chans": _plain(self.in_chans), "image_size": _plain(self.image_size), "train_labels_sha256": digest}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(d)}" for s in ("train", "val", "test") if (d := getattr(self, s)) is not None)
        return (f"DataBundle({self.name!r}, {sizes}, classes={self.num_classes}, "
                f"shape=({self.in_chans}, {self.image_size}, {self.image_size}))")


def _plain(v):
    """``v`` as JSON-like plain data for the fingerprint; numpy scalars, arrays and tensors as the equal Python
    values, so that ``np.int64(100)`` records as ``100``."""
    if isinstance(v, (np.generic, np.ndarray, torch.Tensor)):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def _labels_of(ds) -> torch.Tensor | None:
    """The labels of a dataset in item order, where they can be read without loading images."""
    from torch.utils.data import Subset

    if isinstance(ds, TensorImages):
        return ds.labels
    if isinstance(ds, Subset):
        inner = _labels_of(ds.dataset)
        return inner[torch.as_tensor(list(ds.indices), dtype=torch.long)] if inner is not None else None
    for attr in ("labels", "targets", "_labels"):
        values = getattr(ds, attr, None)
        if values is not None:
            return torch.as_tensor(list(values) if not hasattr(values, "__array__") else values).long()
    base, indices = getattr(ds, "base", None), getattr(ds, "indices", None)
    if base is not None and indices is not None:
        inner = _labels_of(base)
        return inner[torch.as_tensor(list(indices), dtype=torch.long)] if inner is not None else None
    return None
