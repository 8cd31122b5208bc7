"""scikit-learn's bundled handwritten digits (1 797 8x8 images), resized; always available offline.

Example:
    >>> import sparselab as sl
    >>> d = sl.data.load("digits", image_size=28)
    >>> len(d.train) + len(d.val) + len(d.test)
    1797
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import check_ratio
from .registry import register
from .tensors import build_bundle, stratified_split


@register("digits", "scikit-learn handwritten digits: 1 797 8x8 images, 10 classes (resized)")
def load_digits(
    image_size: int | None = None,
    limit: int | None = None,
    classes: Sequence[int] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    augment: str = "none",
    seed: int = 0,
):
    """Digits with a deterministic stratified split: ``test_fraction`` for test, then ``val_fraction`` of the rest."""
    from sklearn.datasets import load_digits as sk_digits

    check_ratio("test_fraction", test_fraction)
    bunch = sk_digits()
    images = bunch.images.astype(np.float32)
    labels = bunch.target.astype(np.int64)
    rest, test = stratified_split(labels, test_fraction, seed=12345)  # fixed: the test set never moves
    return build_bundle(
        "digits", (images[rest], labels[rest]), (images[test], labels[test]),
        class_names=[str(i) for i in range(10)], image_size=image_size or 28, max_value=16.0, classes=classes,
        limit=limit, val_fraction=val_fraction, augment=augment, seed=seed,
    )
