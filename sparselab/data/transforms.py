"""Image transforms: timm's train/eval pipelines at photo scale, simple ones for small images.

Example:
    >>> from sparselab.data.transforms import image_transforms
    >>> train_tf, eval_tf = image_transforms(32)
"""
from __future__ import annotations

from typing import Sequence

PAPER_SCALE = 128  # from this size on, images get timm's ImageNet-style pipelines

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_transforms(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     augment: bool = True, grayscale: bool = False):
    """(train, eval) transforms for PIL images.

    At ``image_size >= 128`` these are timm's: RandAugment, random-resized crop, flip and random erasing for
    training (as in the DeiT recipe), resize + centre crop (crop_pct 0.875) for evaluation. Below that: resize,
    optional random crop (padding 1/8) and flip, normalise.
    """
    from torchvision import transforms as T

    to_mode = [T.Grayscale(1)] if grayscale else [T.Lambda(_to_rgb)]
    if image_size >= PAPER_SCALE:
        from timm.data import create_transform

        train = create_transform(image_size, is_training=augment, auto_augment="rand-m9-mstd0.5-inc1",
                                 re_prob=0.25, interpolation="bicubic", mean=tuple(mean), std=tuple(std))
        evaluation = create_transform(image_size, is_training=False, interpolation="bicubic", crop_pct=0.875,
                                      mean=tuple(mean), std=tuple(std))
        return T.Compose(to_mode + [train]), T.Compose(to_mode + [evaluation])
    base = [T.Resize((image_size, image_size))]
    aug = [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()] if augment else []
    tail = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(to_mode + base + aug + tail), T.Compose(to_mode + base + tail)


def _to_rgb(img):
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
