"""Shared fixtures: every test runs offline, with its own data directory, on generated files."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# the same examples on every run, so CI is reproducible; explore with HYPOTHESIS_PROFILE=explore
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ["SPARSELAB_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path_factory, monkeypatch):
    """Point sparselab's data directory and the Debian Fashion-MNIST folder at empty temporary folders."""
    root = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("SPARSELAB_DATA", str(root))
    from sparselab.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", root / "no-debian-package")
    return root


def class_images(n: int, num_classes: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class is visible (a bright stripe at a class-specific row) plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h = shape[0]
    for i, c in enumerate(labels):
        row = int(c * (h - 2) / max(num_classes - 1, 1))
        images[i, row:row + 2] = 250
    return images, labels.astype(np.uint8)


def write_fashion_mnist(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    """Fashion-MNIST-format IDX files (generated images) in ``folder``."""
    from sparselab.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        x, y = class_images(n, 10, (28, 28), seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y)
    return folder


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 100, n_test: int = 40) -> Path:
    """CIFAR python pickles in torchvision's layout under ``root``."""
    k = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def dump(fname, n, seed):
        x, y = class_images(n, k, (32, 32, 3), seed)
        obj = {b"data": x.transpose(0, 3, 1, 2).reshape(n, -1), label_key.encode(): [int(v) for v in y]}
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f)
        return x, y

    if name == "cifar10":
        for i in range(1, 6):
            dump(f"data_batch_{i}", n_train // 5, i)
        dump("test_batch", n_test, 9)
        meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
        meta_name = "batches.meta"
    else:
        dump("train", n_train, 1)
        dump("test", n_test, 9)
        meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)]}
        meta_name = "meta"
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return root


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6, size: int = 20,
                       splits=("train", "val")) -> Path:
    """PNG files arranged as root/<split>/<class>/<i>.png (or root/<class>/ when ``splits`` is empty)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits or ("",):
        for c_idx, c in enumerate(classes):
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
                arr[c_idx::len(classes)] = 255
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture
def fmnist_files(isolated_data_dir) -> Path:
    """Generated Fashion-MNIST files in ``data/fashion_mnist``."""
    return write_fashion_mnist(isolated_data_dir / "fashion_mnist")


def nano_vit(seed: int = 0, **options):
    """The small ViT most tests prune (``vit_nano_patch4_28``, 10 classes, 28-px single-channel images), with its
    weights drawn from ``seed``; ``options`` go to ``sl.models.create``."""
    import torch

    import sparselab as sl

    torch.manual_seed(seed)
    return sl.models.create("vit_nano_patch4_28", num_classes=10, **options)


@pytest.fixture
def tiny_vit():
    """:func:`nano_vit` as a fixture: ``model = tiny_vit(seed=1)``."""
    return nano_vit


def counted_macs(model, shape=(3, 32, 32)) -> int:
    """Multiply-accumulates of one image of ``shape``, counted by hooks on a forward pass (Linear, Conv2d,
    attention scores and values, attention pooling): the reference ``compact_stats`` is checked against."""
    import torch
    from timm.layers import Attention, AttentionPoolLatent
    from torch import nn

    total, handles = [0], []

    def linear(m, args, out):
        total[0] += args[0].numel() // m.in_features * m.in_features * m.out_features

    def conv(m, args, out):
        total[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def attention(m, args, out):
        b, n, _ = args[0].shape
        total[0] += 2 * b * n * n * m.num_heads * m.head_dim

    def pool(m, args, out):
        b, n, _ = args[0].shape
        total[0] += 2 * b * m.latent_len * n * m.num_heads * m.head_dim

    for m in model.modules():
        for kind, hook in ((nn.Linear, linear), (nn.Conv2d, conv), (Attention, attention),
                           (AttentionPoolLatent, pool)):
            if isinstance(m, kind):
                handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.randn(1, *shape))
    for h in handles:
        h.remove()
    return total[0]


def outlier_logits(outliers=(), nans=()):
    """A two-class model whose training forwards give logits ``[0, 0]`` (loss log 2, predicts class 0), except the
    forwards numbered in ``outliers`` (1-based: ``[0, 5]``, a large loss, wrong) and in ``nans`` (a NaN loss)."""
    import math

    import torch
    from torch import nn

    class OutlierLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.outliers, self.nans = set(outliers), set(nans)
            self.calls = 0

        def forward(self, x):
            base = x.flatten(1)[:, :1] * self.w * 0.0
            logits = torch.cat([base, base], dim=1)
            if self.training:
                self.calls += 1
                if self.calls in self.outliers:
                    logits = logits + torch.tensor([0.0, 5.0])
                elif self.calls in self.nans:
                    logits = logits * math.nan
            return logits

    return OutlierLogits()


def infinite_gradient(x):
    """0, with an infinite gradient for ``x``: added to a loss, a gradient overflow with a finite loss."""
    import torch

    class InfGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return grad.new_full(ctx.shape, float("inf"))

    return InfGradient.apply(x)
