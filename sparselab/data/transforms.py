"""Image transforms: timm's train/eval pipelines at photo scale, simple ones for small images.

Example:
    >>> from sparselab.data.transforms import image_transforms
    >>> train_tf, eval_tf = image_transforms(32)
"""
from __future__ import annotations

from typing import Sequence

PAPER_SCALE = 128  # from this size on, images get timm's ImageNet-style pipelines
RANDAUGMENT = "rand-m9-mstd0.5-inc1"  # the DeiT recipe's RandAugment policy
RANDOM_ERASING = (0.25, "pixel")  # the DeiT recipe's random erasing: probability, fill mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_transforms(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     augment: bool = True, grayscale: bool = False, pad: int | None = None):
    """(train, eval) transforms for PIL images.

    At ``image_size >= 128`` these are timm's, as in the DeiT recipe: RandAugment rand-m9-mstd0.5-inc1,
    random-resized crop, flip and random erasing (p 0.25, ``pixel`` mode: per-pixel normal noise) for training,
    resize + centre crop (crop_pct 0.875) for evaluation. Below that: resize, optional random crop after ``pad``
    pixels of padding (default 1/8 of the size; the CIFAR/TinyImageNet recipes use 4) and flip, normalise.
    """
    from torchvision import transforms as T

    to_mode = [T.Grayscale(1)] if grayscale else [T.Lambda(_to_rgb)]
    if image_size >= PAPER_SCALE:
        from timm.data import create_transform

        train = create_transform(image_size, is_training=augment, auto_augment=RANDAUGMENT,
                                 re_prob=RANDOM_ERASING[0], re_mode=RANDOM_ERASING[1], interpolation="bicubic",
                                 mean=tuple(mean), std=tuple(std))
        evaluation = create_transform(image_size, is_training=False, interpolation="bicubic", crop_pct=0.875,
                                      mean=tuple(mean), std=tuple(std))
        return T.Compose(to_mode + [train]), T.Compose(to_mode + [evaluation])
    base = [T.Resize((image_size, image_size))]
    padding = max(1, image_size // 8) if pad is None else pad
    aug = [T.RandomCrop(image_size, padding=padding), T.RandomHorizontalFlip()] if augment else []
    tail = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(to_mode + base + aug + tail), T.Compose(to_mode + base + tail)


#: PIL modes of 16-bit greyscale images (PNG, TIFF); PIL's own conversion to RGB clips them at 255
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img):
    """``img`` as 8-bit RGB; 16-bit greyscale is scaled to 8 bits (0..65535 to 0..255) rather than clipped."""
    if getattr(img, "mode", "RGB") in SIXTEEN_BIT_MODES:
        import numpy as np
        from PIL import Image

        values = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
