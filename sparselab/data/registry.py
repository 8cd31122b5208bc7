"""The dataset registry behind :func:`sparselab.data.load`.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=16)
    >>> data.num_classes, data.image_size
    (10, 16)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, unknown_name
from .datasets import DataBundle

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Callable[..., DataBundle]
    description: str


_REGISTRY: dict[str, DatasetEntry] = {}


def register(name: str, description: str = "") -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    """Decorator registering a loader ``fn(**options) -> DataBundle`` under ``name``."""

    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _REGISTRY[name] = DatasetEntry(name, fn, description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def available() -> dict[str, str]:
    """Names of the registered datasets with one-line descriptions."""
    return {k: v.description for k, v in sorted(_REGISTRY.items())}


def load(name: str, split: str | None = None, image_size: int | None = None, **options: Any):
    """Load a dataset by name; the whole :class:`DataBundle`, or one split's dataset when ``split`` is given.

    Args:
        name: a registered name (see :func:`available`), or a path to an ImageFolder tree.
        split: ``None`` for all splits, else ``"train"``, ``"val"`` or ``"test"``.
        image_size: side length images are resized to (default: the dataset's native size; 224 for
            photo datasets).
        **options: per-dataset options, e.g. ``root`` (where the files are), ``download`` (allow torchvision
            to download; off when ``SPARSELAB_OFFLINE=1``), ``limit`` (cap on training images, stratified),
            ``classes`` (keep these labels only, renumbered from 0), ``val_fraction`` (in [0, 1)),
            ``augment`` (``none``, ``flip``, ``crop``, ``crop_flip``).

    Example:
        >>> import sparselab as sl
        >>> sl.data.load("digits", split="test", image_size=8)[0][0].shape
        torch.Size([1, 8, 8])
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4):
        raise ConfigError(f"image_size must be an integer >= 4, got {image_size!r}")
    if name not in _REGISTRY:
        if "/" in name or Path(name).expanduser().is_dir():
            bundle = _REGISTRY["imagefolder"].loader(root=name, image_size=image_size, **options)
            return bundle if split is None else bundle.split(split)
        raise unknown_name("dataset", name, _REGISTRY, "Or pass the path of an ImageFolder tree.")
    bundle = _REGISTRY[name].loader(image_size=image_size, **options)
    return bundle if split is None else bundle.split(split)
