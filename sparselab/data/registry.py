"""The dataset registry behind :func:`sparselab.data.load`.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("digits", image_size=16)
    >>> data.num_classes, data.image_size
    (10, 16)
"""
from __future__ import annotations

import difflib
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ConfigError, check_bool, check_positive_int, unknown_name
from ..errors import check_seed as check_integer_seed
from .datasets import DataBundle

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Callable[..., DataBundle]
    description: str
    options: tuple[str, ...] | None = None  # the options the loader takes (None: any)


_REGISTRY: dict[str, DatasetEntry] = {}


def loader_options(fn: Callable[..., Any], exclude: Iterable[str] = ("image_size",)) -> tuple[str, ...] | None:
    """The keyword options ``fn`` takes (its named parameters less ``exclude``); None when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                 and p.name not in set(exclude))


def register(name: str, description: str = "", options: Iterable[str] | None = None,
             ) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    """Decorator registering a loader ``fn(image_size=None, **options) -> DataBundle`` under ``name``.

    :func:`load` refuses options the loader does not take, naming the allowed ones: ``options`` lists them for a
    loader that forwards ``**kwargs``; otherwise they are read from its signature.
    """

    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        allowed = tuple(options) if options is not None else loader_options(fn)
        doc = (fn.__doc__ or "").strip().splitlines()
        previous = _REGISTRY[name].loader if name in _REGISTRY else None
        if previous is not None and getattr(previous, "__qualname__", None) != getattr(fn, "__qualname__", 0):
            warnings.warn(f"dataset {name!r} was registered before; this loader replaces it", stacklevel=2)
        _REGISTRY[name] = DatasetEntry(name, fn, description or (doc[0] if doc else name), allowed)
        return fn

    return deco


def plain_scalar(value: Any) -> Any:
    """``value`` with a numpy scalar (``np.int64(100)``, ``np.float32(0.1)``, ``np.bool_(True)``) turned into the
    equal Python int, float or bool, so that it passes the same checks and records the same as that; anything else
    as it is."""
    return value.item() if isinstance(value, np.generic) else value


def check_limit(limit: Any) -> int | None:
    """``limit`` (a cap on training images) is None or an integer >= 1 (a numpy integer counts as one); returned as
    a Python int."""
    limit = plain_scalar(limit)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer (a cap on training images) or None, got {limit!r}")
    return limit


def check_limit_per_class(name: str, limit: int | None, num_classes: int) -> None:
    """Refuse a ``limit`` (a cap on training images, already checked by :func:`check_limit`) below the
    ``num_classes`` classes of the training split: some class would then have no training image at all. From
    ``num_classes`` on, the stratified limit keeps at least one image of every class.

    Example:
        >>> check_limit_per_class("digits", 10, 10)   # one training image per class at least
        >>> check_limit_per_class("digits", 3, 10)   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        sparselab.errors.ConfigError: digits: limit=3 is below its 10 classes, ... the smallest limit is 10 ...
    """
    if limit is not None and limit < num_classes:
        raise ConfigError(f"{name}: limit={limit} is below its {num_classes} classes, so some class would have no "
                          f"training image; the smallest limit is {num_classes} (one image per class), or None for "
                          f"every training image")


def check_image_size(image_size: Any) -> int | None:
    """``image_size`` is None (the dataset's own size) or an integer >= 4 (a numpy integer counts as one); returned
    as a Python int."""
    image_size = plain_scalar(image_size)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 4):
        raise ConfigError(f"image_size must be an integer >= 4, got {image_size!r} (or None: the dataset's own "
                          f"size)")
    return image_size


def check_pad_value(pad: Any) -> int | None:
    """``pad`` (pixels of padding before a random crop) is None or an integer >= 0 (a numpy integer counts as one);
    returned as a Python int."""
    pad = plain_scalar(pad)
    return None if pad is None else check_positive_int("pad", pad, allow_zero=True)


def check_seed(seed: Any) -> int:
    """``seed`` (what picks splits and subsets) is an integer in [0, 2**32); a numpy integer counts as one."""
    return check_integer_seed("seed", int(seed) if isinstance(seed, np.integer) else seed)


def check_download(download: Any) -> bool | None:
    """``download`` is True, False or None (None: allowed unless ``SPARSELAB_OFFLINE=1``); a string such as
    ``"False"`` is refused rather than read as true."""
    return check_bool("download", download, optional=True)


def check_root(root: Any) -> Path | None:
    """``root`` (where a dataset's files are) is None or a folder path, a string or :class:`os.PathLike`; returned
    as a :class:`~pathlib.Path` with ``~`` expanded."""
    if root is None:
        return None
    try:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(type(root).__name__)
        return Path(root).expanduser()
    except TypeError:  # an int, bytes, or a PathLike that gives bytes
        raise ConfigError(f"root must be a folder path (a string or pathlib.Path), got {root!r}") from None


def _check_options(dataset: str, allowed: Iterable[str] | None, options: dict[str, Any]) -> None:
    if allowed is None:
        return
    allowed = sorted(allowed)
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
            hint = (" Did you mean " + " or ".join(repr(c) for c in close) + "?") if close else ""
            raise ConfigError(f"unknown option {key!r} for dataset {dataset!r}.{hint} Allowed: {', '.join(allowed)}")


def available() -> dict[str, str]:
    """Names of the registered datasets with one-line descriptions."""
    return {k: v.description for k, v in sorted(_REGISTRY.items())}


def load(name: str, /, split: str | None = None, image_size: int | None = None, **options: Any):
    """Load a dataset by name; the whole :class:`DataBundle`, or one split's dataset when ``split`` is given.

    Args:
        name: a registered name (see :func:`available`), or a path to an ImageFolder tree (positional, so that
            ``name=`` stays free for the ImageFolder loader's display name).
        split: ``None`` for all splits, else ``"train"``, ``"val"`` or ``"test"``.
        image_size: side length images are resized to (default: the dataset's native size; 224 for
            photo datasets).
        **options: per-dataset options, e.g. ``root`` (where the files are), ``download`` (allow torchvision
            to download; off when ``SPARSELAB_OFFLINE=1``), ``limit`` (cap on training images, stratified),
            ``classes`` (keep these labels only, renumbered from 0), ``val_fraction`` (in [0, 1)),
            ``augment`` (``none``, ``flip``, ``crop``, ``crop_flip``). An option the dataset's loader does not take
            raises :class:`~sparselab.errors.ConfigError` naming the allowed ones.

    Example:
        >>> import sparselab as sl
        >>> sl.data.load("digits", split="test", image_size=8)[0][0].shape
        torch.Size([1, 8, 8])
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}")
    image_size = check_image_size(image_size)
    if not isinstance(name, (str, Path)):
        raise ConfigError(f"a dataset is named by a string (or the path of an ImageFolder tree), got {name!r}")
    name = str(name)
    # numpy scalars become the equal Python values: the same checks apply and the fingerprint is the same
    options = {k: plain_scalar(v) for k, v in options.items()}
    check_limit(options.get("limit"))
    if name not in _REGISTRY:
        if "/" in name or Path(name).expanduser().is_dir():
            entry = _REGISTRY["imagefolder"]
            if "root" in options:
                raise ConfigError(f"the dataset is the path {name!r} already; pass root= with "
                                  f"sparselab.data.load('imagefolder', root=...) instead")
            allowed = None if entry.options is None else [o for o in entry.options if o != "root"]
            _check_options(name, allowed, options)
            bundle = entry.loader(root=name, image_size=image_size, **options)
        else:
            raise unknown_name("dataset", name, _REGISTRY, "Or pass the path of an ImageFolder tree.")
    else:
        entry = _REGISTRY[name]
        _check_options(name, entry.options, options)
        bundle = entry.loader(image_size=image_size, **options)
    # what it was loaded with (part of a resumed run's data fingerprint); None means the loader's default
    bundle.options = {k: v for k, v in options.items() if v is not None}
    return bundle if split is None else bundle.split(split)
