"""Image transforms: timm's train/eval pipelines at photo scale, simple ones for small images.

Example:
    >>> from sparselab.data.transforms import image_transforms
    >>> train_tf, eval_tf = image_transforms(32)
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError, DataNotFoundError

PAPER_SCALE = 128  # from this size on, images get timm's ImageNet-style pipelines
RANDAUGMENT = "rand-m9-mstd0.5-inc1"  # the DeiT recipe's RandAugment policy
RANDOM_ERASING = (0.25, "pixel")  # the DeiT recipe's random erasing: probability, fill mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_pad(pad: Any, image_size: int, crops: bool, where: str = "") -> None:
    """Refuse a ``pad`` (pixels of padding before the random crop) that no transform would apply: from
    :data:`PAPER_SCALE` px on timm's pipeline crops with RandomResizedCrop and pads nothing, and without a crop in
    the augmentation (``crops`` False) there is nothing to pad for. None (the default) is always allowed."""
    if pad is None:
        return
    if image_size >= PAPER_SCALE:
        raise ConfigError(f"pad={pad!r}{where}: random-crop padding applies below {PAPER_SCALE} px only; at "
                          f"{image_size} px timm's pipeline crops with a random-resized crop and pads nothing. Leave "
                          f"pad out, or use image_size < {PAPER_SCALE}")
    if not crops:
        raise ConfigError(f"pad={pad!r}{where}: random-crop padding needs an augmentation with a random crop, and "
                          f"this one has none. Leave pad out, or choose an augmentation that crops")


def image_transforms(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     augment: bool = True, grayscale: bool = False, pad: int | None = None):
    """(train, eval) transforms for PIL images.

    At ``image_size >= 128`` these are timm's, as in the DeiT recipe: RandAugment rand-m9-mstd0.5-inc1,
    random-resized crop, flip and random erasing (p 0.25, ``pixel`` mode: per-pixel normal noise) for training,
    resize + centre crop (crop_pct 0.875) for evaluation; ``pad`` is refused there. Below that: the shorter side
    resized to ``image_size`` and the centre square cropped (the aspect ratio is kept, nothing is stretched), then
    for training a random crop after ``pad`` pixels of padding (default 1/8 of the size; the CIFAR/TinyImageNet
    recipes use 4) and a flip; normalised. ``pad`` without ``augment`` is refused (no crop would use it).
    """
    from torchvision import transforms as T

    check_pad(pad, image_size, crops=augment)
    to_mode = [T.Grayscale(1)] if grayscale else [T.Lambda(_to_rgb)]
    if image_size >= PAPER_SCALE:
        from timm.data import create_transform

        train = create_transform(image_size, is_training=augment, auto_augment=RANDAUGMENT,
                                 re_prob=RANDOM_ERASING[0], re_mode=RANDOM_ERASING[1], interpolation="bicubic",
                                 mean=tuple(mean), std=tuple(std))
        evaluation = create_transform(image_size, is_training=False, interpolation="bicubic", crop_pct=0.875,
                                      mean=tuple(mean), std=tuple(std))
        return T.Compose(to_mode + [train]), T.Compose(to_mode + [evaluation])
    base = [T.Resize(image_size), T.CenterCrop(image_size)]
    padding = max(1, image_size // 8) if pad is None else pad
    aug = [T.RandomCrop(image_size, padding=padding), T.RandomHorizontalFlip()] if augment else []
    tail = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(to_mode + base + aug + tail), T.Compose(to_mode + base + tail)


#: PIL modes of 16-bit greyscale images (PNG, TIFF); PIL's own conversion to RGB clips them at 255
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: file formats that hold at most 16 bits per sample, so that PIL's 32-bit mode ``I`` holds 16-bit values there
#: (older Pillow opens 16-bit PNGs as ``I``; 16-bit PGM/PPM open as ``I``)
_AT_MOST_16_BIT_FORMATS = ("PNG", "PPM")


def _bits_per_sample(img) -> int:
    """How many bits the values of a mode-``I`` image use: 16 where its file format stores no more, else 32."""
    fmt = getattr(img, "format", None)
    if fmt in _AT_MOST_16_BIT_FORMATS:
        return 16
    if fmt == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258)  # BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        if isinstance(bits, int) and bits <= 16:
            return 16
    return 32


def check_image_mode(img: Any) -> None:
    """Refuse a 32-bit integer (PIL mode ``I`` with 32-bit values) or floating-point (mode ``F``) image: neither
    has a range to scale from, and PIL's own conversion to RGB would clip it at 255. Only the mode and the file
    format's header are looked at, so an image opened with ``PIL.Image.open`` needs no decoding.

    Raises:
        DataNotFoundError: such an image.

    Example:
        >>> from PIL import Image
        >>> check_image_mode(Image.new("I;16", (4, 4)))   # 16-bit greyscale: read, scaled to 8 bits
    """
    mode = getattr(img, "mode", "RGB")
    if mode == "F" or (mode == "I" and _bits_per_sample(img) > 16):
        kind = "floating-point" if mode == "F" else "integer"
        raise DataNotFoundError(f"a 32-bit {kind} image (PIL mode {mode}) cannot be read: only 8-bit and 16-bit "
                                f"images can be (8-bit RGB or greyscale, 16-bit greyscale); convert it to one of "
                                f"those, e.g. a 16-bit PNG")


def _to_rgb(img):
    """``img`` as 8-bit RGB; 16-bit greyscale is scaled to 8 bits (0..65535 to 0..255) rather than clipped.

    Raises:
        DataNotFoundError: a 32-bit image (see :func:`check_image_mode`).
    """
    check_image_mode(img)
    mode = getattr(img, "mode", "RGB")
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        import numpy as np
        from PIL import Image

        values = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
