"""Datasets by name: ``sparselab.data.load("digits", image_size=28)``.

Example:
    >>> import sparselab as sl
    >>> sorted(sl.data.available())[:3]
    ['cifar10', 'cifar100', 'digits']
"""
from . import cifar, digits, fashion_mnist, folders  # noqa: F401  (register the loaders)
from .datasets import DataBundle, TensorImages
from .registry import available, load, register

__all__ = ["load", "available", "register", "DataBundle", "TensorImages"]
