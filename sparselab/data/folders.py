"""Photo datasets: torchvision's Flowers-102, Oxford-IIIT Pets and Food-101, and ImageFolder trees (the form
iNaturalist and iFood come in).

An ImageFolder root either holds ``train/`` and ``val/`` (and optionally ``test/``) subfolders, each with one
folder per class, or is itself one tree of class folders that is split deterministically. A tree with ``train/``
and ``val/`` but no ``test/`` (iFood, iNaturalist, TinyImageNet as published) uses its ``val/`` folder as the test
set, as the papers do; there is then no separate validation split.

Example:
    >>> import sparselab as sl
    >>> data = sl.data.load("imagefolder", root="data/inat19", image_size=224)   # doctest: +SKIP
"""
from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataNotFoundError, check_ratio
from ..paths import data_dir, offline
from .datasets import DataBundle
from .registry import (
    check_download,
    check_image_size,
    check_limit,
    check_limit_per_class,
    check_pad_value,
    check_root,
    check_seed,
    loader_options,
    register,
)
from .tensors import stratified_limit, stratified_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD, _to_rgb, check_image_mode, check_pad, image_transforms

#: ``augment`` for photo datasets: the recipe's augmentation (timm's RandAugment pipeline at 128 px and up; a
#: random crop after padding and a flip below) under either name, or none.
PHOTO_AUGMENTS = ("randaugment", "crop_flip", "none")


def _check_augment(augment: str) -> None:
    if augment not in PHOTO_AUGMENTS:
        raise ConfigError(f"augment must be one of {PHOTO_AUGMENTS} for photo datasets ('randaugment' and "
                          f"'crop_flip' both mean the recipe's augmentation: RandAugment from 128 px, crop and flip "
                          f"below), got {augment!r}")


def _limited(labels: np.ndarray | None, n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the first ``limit`` items kept in class proportion (all of them without a limit); without
    labels the first ``limit``."""
    if limit is None or limit >= n:
        return np.arange(n)
    if labels is None:
        return np.arange(limit)
    return stratified_limit(np.asarray(labels), limit, seed)


def _check_channel_stats(name: str, values: Any, positive: bool) -> tuple[float, ...]:
    """``mean`` or ``std``: three finite numbers, one per RGB channel (``std`` above 0)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
        raise ConfigError(f"{name} must be three numbers, one per RGB channel, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
                or (positive and v <= 0):
            raise ConfigError(f"{name} must be three finite numbers{' above 0' if positive else ''}, one per RGB "
                              f"channel, got {values!r}")
        out.append(float(v))
    return tuple(out)


class _Transformed(Dataset):
    """A view of a dataset of PIL images with its own transform (so train and val can differ)."""

    def __init__(self, base: Dataset, indices, transform):
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        try:
            img, label = self.base[j]
        except OSError as exc:  # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
            samples = getattr(self.base, "samples", None)
            where = samples[j][0] if samples is not None else f"image {j}"
            raise DataNotFoundError(f"{where} cannot be read as an image ({type(exc).__name__}: {exc}); remove "
                                    f"or replace it") from None
        return self.transform(img), label


def _load_image(path: str):
    """An image file as 8-bit RGB (16-bit greyscale scaled down, not clipped; 32-bit images refused, naming the
    file)."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
        try:
            return _to_rgb(img)
        except DataNotFoundError as exc:
            raise DataNotFoundError(f"{path}: {exc}") from None


#: at most this many image headers are read when a tree is built, to refuse 32-bit images before training (about
#: 0.1 ms each from a warm disk, more from a network one: every file of a tree of 100k images or more would add
#: seconds to minutes to every load)
MODE_CHECKS = 1000


def _check_image_modes(samples: list[tuple[str, int]]) -> None:
    """Refuse a 32-bit image (:func:`check_image_mode`) before training, naming the file: every image of a tree of
    up to :data:`MODE_CHECKS` images; in a larger tree the first image of every class (evenly thinned to
    :data:`MODE_CHECKS` classes), which finds a tree stored in such a format. Any other image is still refused when
    read. Only headers are read; a file that cannot be opened is left to the reader's own error."""
    from PIL import Image

    if len(samples) <= MODE_CHECKS:
        files = [file for file, _ in samples]
    else:
        first: dict[int, str] = {}
        for file, y in samples:
            first.setdefault(y, file)
        files = list(first.values())
        if len(files) > MODE_CHECKS:
            files = [files[i] for i in np.linspace(0, len(files) - 1, MODE_CHECKS).round().astype(int)]
    for file in files:
        try:
            with Image.open(file) as img:
                check_image_mode(img)
        except DataNotFoundError as exc:
            raise DataNotFoundError(f"{file}: {exc}") from None
        except OSError:
            continue


def _class_folder_tree(path: Path):
    """The ImageFolder tree at ``path``; hidden folders and files (``.ipynb_checkpoints``, macOS ``._*`` copies)
    are neither classes nor images."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    def visible_image(file: str) -> bool:
        hidden = any(part.startswith(".") for part in Path(os.path.relpath(file, path)).parts)
        return not hidden and has_file_allowed_extension(file, IMG_EXTENSIONS)

    try:
        tree = ImageFolder(str(path), loader=_load_image, is_valid_file=visible_image, allow_empty=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataNotFoundError(f"{path} is not an ImageFolder tree (one sub-folder of images per class): "
                                f"{exc}") from None
    # a plain ImageFolder (picklable for DataLoader workers) with the hidden class folders taken out
    classes = [c for c in tree.classes if not c.startswith(".")]
    if not classes:
        raise DataNotFoundError(f"{path} is not an ImageFolder tree (one sub-folder of images per class): it has "
                                f"no class folders")
    renumber = {tree.class_to_idx[c]: i for i, c in enumerate(classes)}
    tree.samples = [(file, renumber[y]) for file, y in tree.samples if y in renumber]
    tree.imgs, tree.targets = tree.samples, [y for _, y in tree.samples]
    tree.classes, tree.class_to_idx = classes, {c: i for i, c in enumerate(classes)}
    empty = sorted(set(classes) - {classes[y] for y in tree.targets})
    if empty:
        raise DataNotFoundError(f"{path} is not an ImageFolder tree (one sub-folder of images per class): the class "
                                f"folders {', '.join(empty)} hold no images ({', '.join(IMG_EXTENSIONS)})")
    _check_image_modes(tree.samples)
    return tree


@register("imagefolder", "any ImageFolder tree: root/[train|val|test]/<class>/<image> or root/<class>/<image>")
def load_imagefolder(image_size: int | None = None, root: str | Path | None = None,
                     val_fraction: float | None = None, test_fraction: float | None = None, limit: int | None = None,
                     augment: str = "randaugment", seed: int = 0, name: str | None = None, pad: int | None = None,
                     mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
    """Load an ImageFolder tree with timm's train/eval transforms (224 px by default), normalised by
    ``mean``/``std``.

    Images of any shape are welcome: at 128 px and up timm's transforms crop them (a random-resized crop for
    training, resize and centre crop for evaluation); below 128 px the shorter side is resized to ``image_size``
    and the centre square cropped, so that a non-square photo keeps its aspect ratio rather than being stretched,
    then training images get a random crop after ``pad`` pixels of padding and a flip (``pad`` is refused at 128 px
    and up, and with ``augment="none"``: nothing would use it). 8-bit and 16-bit images are read (16-bit greyscale
    scaled to 8 bits); 32-bit ones are refused, naming the file: here, before training, when the tree holds at most
    1000 images or when one is the first image of its class (only image headers are read), else when read.

    ``limit`` keeps that many training images, classes in proportion and at least one of every class (a limit
    below the number of classes is refused). ``val_fraction`` (default 0.1) and
    ``test_fraction`` (default 0) split a single tree of class folders, stratified by class; every class keeps at
    least one training image (a class with a single image is never split off whole). A tree with ``train/``
    folders has its splits already.
    """
    return _load_tree(image_size=image_size, root=root, val_fraction=val_fraction, test_fraction=test_fraction,
                      limit=limit, augment=augment, seed=seed, name=name, pad=pad, mean=mean, std=std)


def _load_tree(image_size: int | None, root: str | Path | None, val_fraction: float | None,
               test_fraction: float | None, limit: int | None, augment: str, seed: int, name: str | None,
               pad: int | None, mean: tuple[float, ...], std: tuple[float, ...],
               unlabelled_test: bool = False) -> DataBundle:
    """:func:`load_imagefolder`; with ``unlabelled_test`` a ``test/`` folder is the dataset's unlabelled test set
    (TinyImageNet's): it is ignored and ``val/`` serves as the test split."""
    if root is None:
        raise ConfigError("imagefolder needs root=<path of the tree>")
    root = check_root(root)
    if not root.is_dir():
        raise DataNotFoundError(f"ImageFolder root {root} does not exist" if not root.exists() else
                                f"ImageFolder root {root} is a file, not a folder")
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if value is not None:
            check_ratio(option, value)
    limit = check_limit(limit)
    seed = check_seed(seed)
    _check_augment(augment)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"name must be a string (what the dataset is called in results), got {name!r}")
    pad = check_pad_value(pad)
    mean = _check_channel_stats("mean", mean, positive=False)
    std = _check_channel_stats("std", std, positive=True)
    size = check_image_size(image_size) or 224
    check_pad(pad, size, crops=augment != "none", where=f" with augment={augment!r}")
    train_tf, eval_tf = image_transforms(size, mean=mean, std=std, augment=augment != "none", pad=pad)
    if (root / "train").is_dir():
        given = [f"{o}={v}" for o, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} splits a single tree of class folders, but {root} is split into "
                              f"folders already (train/, val/, test/); leave it out")
        train_base = _class_folder_tree(root / "train")
        splits = {"train": _Transformed(train_base, np.arange(len(train_base)), train_tf)}
        has_test = (root / "test").is_dir() and not unlabelled_test
        for split in ("val", "test") if has_test else ("val",):
            if (root / split).is_dir():
                base = _class_folder_tree(root / split)
                if base.classes != train_base.classes:
                    raise DataNotFoundError(_other_classes(root, split, base.classes, train_base.classes))
                splits[split if has_test else "test"] = _Transformed(base, np.arange(len(base)), eval_tf)
        if "test" not in splits:
            raise DataNotFoundError(f"{root} has train/ but neither val/ nor test/: there is nothing to test on"
                                    if not unlabelled_test else
                                    f"{root} has train/ but no val/: its test/ is unlabelled, so val/ is the test "
                                    f"split; there is nothing to test on")
        classes = train_base.classes
    else:
        split_folders = [s for s in ("val", "test") if (root / s).is_dir()]
        if split_folders:
            raise DataNotFoundError(f"{root} has {' and '.join(s + '/' for s in split_folders)} but no train/ folder: "
                                    f"a tree split into folders needs train/<class>/ (and val/ or test/); a single "
                                    f"tree holds one folder per class and no split folders")
        val_fraction = 0.1 if val_fraction is None else val_fraction
        test_fraction = 0.0 if test_fraction is None else test_fraction
        base = _class_folder_tree(root)
        labels = np.array(base.targets)
        rest, test = stratified_split(labels, test_fraction, seed=12345)
        tr, va = stratified_split(labels[rest], val_fraction, seed)
        if not len(tr):
            raise ConfigError(f"{root}: no training images are left (test_fraction={test_fraction} and "
                              f"val_fraction={val_fraction} of its {len(labels)} images go to test and validation); "
                              f"lower them")
        splits = {"train": _Transformed(base, rest[tr], train_tf), "val": _Transformed(base, rest[va], eval_tf),
                  "test": _Transformed(base, test, eval_tf)}
        splits = {k: v for k, v in splits.items() if len(v)}
        classes = base.classes
    if limit is not None:
        train = splits["train"]
        labels = np.asarray(train.base.targets)[np.asarray(train.indices, dtype=np.int64)]
        check_limit_per_class(name or root.name, limit, len(np.unique(labels)))
        keep = _limited(labels, len(train), limit, seed)
        splits["train"] = _Transformed(train.base, np.asarray(train.indices)[keep], train.transform)
    return DataBundle(name or root.name, splits["train"], splits.get("val"), splits.get("test"),
                      num_classes=len(classes), in_chans=3, image_size=size, classes=list(classes))


#: load_imagefolder's defaults, for the named trees that read through :func:`_load_tree` directly
_IMAGEFOLDER_DEFAULTS = {k: p.default for k, p in inspect.signature(load_imagefolder).parameters.items()}


def _other_classes(root: Path, split: str, found: list[str], expected: list[str]) -> str:
    """The message for a split folder whose class folders differ from ``train/``'s."""
    if found == ["images"] and "images" not in expected:
        return (f"{root / split} holds one images/ folder instead of class folders: an unlabelled split (as "
                f"TinyImageNet's test/, or its val/ before sorting into class folders with val_annotations.txt) has "
                f"no classes to test on; sort it into class folders or remove it")
    return f"{root / split} has other classes than {root / 'train'}"


def _named_tree(name: str, folder: str, hint: str, unlabelled_test: bool = False, **defaults):
    """Register ``name``: the ImageFolder tree under ``data/<folder>`` read by :func:`load_imagefolder` with
    ``defaults``; with ``unlabelled_test`` its ``test/`` folder (unlabelled as published) is ignored and ``val/``
    is the test split."""
    def loader(image_size=None, root=None, **options):
        path = check_root(root) if root is not None else data_dir() / folder
        if not path.is_dir():
            raise DataNotFoundError(f"{name} is not downloadable automatically; put the ImageFolder tree at {path} "
                                    f"(or pass root=...). {hint}")
        settings = {**_IMAGEFOLDER_DEFAULTS, **defaults, **options, "image_size": image_size, "root": path,
                    "name": name}
        return _load_tree(**settings, unlabelled_test=unlabelled_test)

    loader.__doc__ = f"{name} from an ImageFolder tree under data/{folder}" + (
        "; its unlabelled test/ folder is ignored and val/ is the test split." if unlabelled_test else ".")
    # it forwards its options to load_imagefolder: the same ones are allowed (the name is its own)
    register(name, f"{name}: ImageFolder tree under data/{folder}",
             options=loader_options(load_imagefolder, exclude=("image_size", "name")))(loader)


_named_tree("inat19", "inat19", "Arrange the iNaturalist-2019 images as train/<class>/ and val/<class>/.")
_named_tree("ifood", "ifood", "Arrange the iFood-2019 images as train/<class>/ and val/<class>/.")
# TinyImageNet's own channel statistics (the ones commonly used with its 64-px recipe)
TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2302, 0.2265, 0.2262)
_named_tree("tinyimagenet", "tiny-imagenet-200", "Arrange TinyImageNet as train/<class>/*.JPEG and val/<class>/*.JPEG "
            "(its val/ folder needs sorting into class folders with val_annotations.txt; its unlabelled test/ "
            "folder is ignored).", unlabelled_test=True, mean=TINYIMAGENET_MEAN, std=TINYIMAGENET_STD)


def _torchvision_loader(name: str, tv_class: str, splits: dict[str, str | None], num_classes: int):
    def loader(image_size=None, root=None, download=None, augment="randaugment", limit=None, seed=0):
        import torchvision.datasets as tvd

        limit = check_limit(limit)
        check_limit_per_class(name, limit, num_classes)  # before anything is downloaded
        seed = check_seed(seed)
        check_root(root)
        download = check_download(download)
        _check_augment(augment)
        size = check_image_size(image_size) or 224
        base = Path(root).expanduser() if root is not None else data_dir()
        allow = (not offline()) if download is None else download
        train_tf, eval_tf = image_transforms(size, augment=augment != "none")
        out = {}
        for ours, theirs in splits.items():
            if theirs is None:
                out[ours] = None
                continue
            try:
                out[ours] = getattr(tvd, tv_class)(str(base), split=theirs, download=allow,
                                                   transform=train_tf if ours == "train" else eval_tf)
            except Exception as exc:
                why = "downloads disabled (SPARSELAB_OFFLINE=1 or download=False)" if not allow else str(exc)
                raise DataNotFoundError(f"{name} ({tv_class}) not found under {base}: {why}. Fix: run once with "
                                        f"network access (torchvision downloads it there).") from None
        if limit is not None:
            train = out["train"]
            keep = _limited(getattr(train, "_labels", None), len(train), limit, seed)
            out["train"] = Subset(train, keep.tolist())
        return DataBundle(name, out["train"], out["val"], out["test"], num_classes=num_classes, in_chans=3,
                          image_size=size)

    loader.__doc__ = (f"{name} through torchvision.datasets.{tv_class} with timm transforms; ``limit`` keeps that many "
                      f"training images, classes in proportion (``seed`` picks them), at least one of every class "
                      f"(a limit below its {num_classes} classes is refused).")
    register(name, f"{name} (torchvision {tv_class}, 224 px photos, {num_classes} classes)")(loader)


_torchvision_loader("flowers102", "Flowers102", {"train": "train", "val": "val", "test": "test"}, 102)
_torchvision_loader("pets", "OxfordIIITPet", {"train": "trainval", "val": None, "test": "test"}, 37)
_torchvision_loader("food101", "Food101", {"train": "train", "val": None, "test": "test"}, 101)
