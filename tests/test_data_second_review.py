"""sparselab.data: option types checked before any file is read, Fashion-MNIST files that are stale, empty or of
mismatched sizes, and the ImageFolder loader's own name."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fashion_mnist, write_image_folder

import sparselab as sl
from sparselab.data.idx import write_idx
from sparselab.errors import ConfigError, DataNotFoundError


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "imagefolder", "inat19", "flowers102"])
@pytest.mark.parametrize("root", [123, b"/tmp"])
def test_root_of_the_wrong_type_is_a_clear_error(name, root):
    with pytest.raises(ConfigError, match="root must be a folder path"):
        sl.data.load(name, root=root)


def test_imagefolder_takes_its_name_option(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=2)
    data = sl.data.load("imagefolder", root=root, image_size=16, name="birds", val_fraction=0.0)
    assert data.name == "birds"
    with pytest.raises(ConfigError, match="name must be a string"):
        sl.data.load("imagefolder", root=root, image_size=16, name=5)


def _age(path: Path, seconds: float) -> None:
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_fashion_mnist_reads_gz_files_copied_over_an_older_extracted_copy(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=100, n_test=30, gz=False)
    for path in root.iterdir():
        _age(path, 3600)
    write_fashion_mnist(root, n_train=100, n_test=50, gz=True)
    assert len(sl.data.load("fashion_mnist", root=root, split="test")) == 50
    # an extracted copy newer than its .gz (as torchvision leaves it) is read as before
    for path in root.glob("*.gz"):
        _age(path, 7200)
    assert len(sl.data.load("fashion_mnist", root=root, split="test")) == 30


def test_fashion_mnist_images_of_another_size_are_refused(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=100, n_test=40, gz=False)
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((40, 32, 32), np.uint8))
    with pytest.raises(DataNotFoundError, match="square images of one size .* 28x28 and 32x32"):
        sl.data.load("fashion_mnist", root=root)
    root = write_fashion_mnist(tmp_path / "wide", n_train=100, n_test=40, gz=False)
    write_idx(root / "train-images-idx3-ubyte", np.zeros((100, 28, 20), np.uint8))
    with pytest.raises(DataNotFoundError, match="square images of one size"):
        sl.data.load("fashion_mnist", root=root)


def test_fashion_mnist_without_training_images_is_a_clear_error(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=100, n_test=40, gz=False)
    write_idx(root / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte holds no images"):
        sl.data.load("fashion_mnist", root=root)


def test_build_bundle_without_training_images_is_a_clear_error():
    from sparselab.data.tensors import build_bundle

    empty = (np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match="no training images"):
        build_bundle("toy", empty, None, class_names=["a", "b"], image_size=8, max_value=1.0)


@pytest.mark.parametrize("image_size", [None, 128])
@pytest.mark.parametrize("options,match", [(dict(pad=-1), "pad must be an integer >= 0"),
                                           (dict(pad="4"), "pad must be an integer >= 0"),
                                           (dict(classes="3"), "classes must be a list")])
def test_cifar_options_are_checked_before_looking_for_files(tmp_path, image_size, options, match):
    # no CIFAR files under root: the option error comes first
    with pytest.raises(ConfigError, match=match):
        sl.data.load("cifar10", root=tmp_path, image_size=image_size, **options)


def test_fashion_mnist_classes_are_checked_before_looking_for_files(tmp_path):
    with pytest.raises(ConfigError, match="classes must be a list"):
        sl.data.load("fashion_mnist", root=tmp_path, classes="3")
