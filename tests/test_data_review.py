"""Damaged, mislabelled and mistyped inputs to sparselab.data: a clear error or the right data, never a silently
wrong dataset or a raw traceback."""
from __future__ import annotations

import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from conftest import write_cifar, write_fashion_mnist, write_image_folder

import sparselab as sl
from sparselab.data import TensorImages
from sparselab.data.idx import read_idx, write_idx
from sparselab.errors import ConfigError, DataNotFoundError

# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("raw,match", [
    (bytes([0, 0, 8, 3]), "header is cut off"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "header is cut off"),
    (bytes([0, 0, 8, 0]), "no dimensions"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3, 4]), "2 bytes more"),
])
def test_idx_bad_header_or_size_is_a_clear_error(tmp_path, raw, match):
    (tmp_path / "a").write_bytes(raw)
    with pytest.raises(DataNotFoundError, match=match):
        read_idx(tmp_path / "a")


def test_idx_damaged_gzip_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((50, 8, 8), np.uint8))
    raw = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "plain.gz").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]))  # named .gz, not compressed
    for name in ("cut.gz", "plain.gz"):
        with pytest.raises(DataNotFoundError, match="damaged or truncated"):
            read_idx(tmp_path / name)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_idx(tmp_path / "missing")


def test_idx_big_endian_values_come_back_native(tmp_path):
    path = tmp_path / "f"
    values = np.array([1.5, -2.0, 3.25], dtype=">f4")
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 3) + values.tobytes())
    out = read_idx(path)
    assert out.dtype.isnative and out.tolist() == [1.5, -2.0, 3.25]
    torch.as_tensor(out)  # a non-native byte order would fail here


def test_write_idx_refuses_other_dtypes(tmp_path):
    with pytest.raises(ConfigError, match="uint8 or int8"):
        write_idx(tmp_path / "a", np.zeros(3, np.int16))


# ---------------------------------------------------------------- Fashion-MNIST


def _fmnist(tmp_path):
    return write_fashion_mnist(tmp_path / "fm", n_train=100, n_test=40, gz=False)


def test_fashion_mnist_test_files_of_different_lengths(tmp_path):
    root = _fmnist(tmp_path)
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(30, np.uint8))
    for options in ({}, {"classes": [0, 1]}):
        with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte disagree in length"):
            sl.data.load("fashion_mnist", root=root, **options)


def test_fashion_mnist_labels_beyond_ten_classes(tmp_path):
    root = _fmnist(tmp_path)
    write_idx(root / "train-labels-idx1-ubyte", (np.arange(100) % 12).astype(np.uint8))
    with pytest.raises(DataNotFoundError, match="label 11; Fashion-MNIST's labels are 0 to 9"):
        sl.data.load("fashion_mnist", root=root)


def test_fashion_mnist_swapped_or_misshapen_files(tmp_path):
    root = _fmnist(tmp_path)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros((100, 28, 28), np.uint8))  # an image file as labels
    with pytest.raises(DataNotFoundError, match="not a Fashion-MNIST label file"):
        sl.data.load("fashion_mnist", root=root)
    root = _fmnist(tmp_path / "b")
    write_idx(root / "train-images-idx3-ubyte", np.zeros(100, np.uint8))
    with pytest.raises(DataNotFoundError, match="not a Fashion-MNIST image file"):
        sl.data.load("fashion_mnist", root=root)
    root = _fmnist(tmp_path / "c")
    (root / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]))
    with pytest.raises(DataNotFoundError, match="header is cut off"):
        sl.data.load("fashion_mnist", root=root)


def test_fashion_mnist_float_images_with_nan_are_refused(tmp_path):
    root = _fmnist(tmp_path)
    x = np.random.default_rng(0).uniform(0, 255, (100, 28, 28)).astype(">f4")
    x[3, 0, 0] = np.nan
    (root / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 100, 28, 28)
                                                   + x.tobytes())
    with pytest.raises(DataNotFoundError, match="expected uint8 images"):
        sl.data.load("fashion_mnist", root=root)


def test_download_must_be_a_flag(tmp_path, monkeypatch):
    """download="False" must not be read as true (and start a download)."""
    import torchvision.datasets as tvd

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    for cls in ("FashionMNIST", "CIFAR10", "Flowers102"):
        monkeypatch.setattr(tvd, cls, no_download)
    for name in ("fashion_mnist", "cifar10", "flowers102"):
        with pytest.raises(ConfigError, match="download must be True or False or None, got 'False'"):
            sl.data.load(name, root=tmp_path / "empty", download="False")


# ---------------------------------------------------------------- CIFAR


def _rewrite(path, change):
    with open(path, "rb") as f:
        obj = pickle.load(f)
    change(obj)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar_batch_with_a_label_missing_is_refused(tmp_path):
    """One label short in data_batch_1 would shift every later label onto the wrong image."""
    write_cifar(tmp_path)
    _rewrite(tmp_path / "cifar-10-batches-py" / "data_batch_1", lambda o: o[b"labels"].pop())
    with pytest.raises(DataNotFoundError, match="data_batch_1 holds 20 images but labels"):
        sl.data.load("cifar10", root=tmp_path)


def test_cifar_label_out_of_range_is_refused(tmp_path):
    write_cifar(tmp_path)
    _rewrite(tmp_path / "cifar-10-batches-py" / "data_batch_1", lambda o: o[b"labels"].__setitem__(0, 10))
    with pytest.raises(DataNotFoundError, match="labels from 0 to 10; cifar10 has 10 classes"):
        sl.data.load("cifar10", root=tmp_path, val_fraction=0.0)


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "damaged or truncated"),
    (lambda p: p.write_bytes(pickle.dumps({b"x": 1})), "lacks data, labels"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2])), "holds a list, not a dict"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})),
     "uint8 rows of 3072"),
])
def test_cifar_damaged_batch_is_a_clear_error(tmp_path, damage, match):
    write_cifar(tmp_path)
    damage(tmp_path / "cifar-10-batches-py" / "data_batch_2")
    with pytest.raises(DataNotFoundError, match=match):
        sl.data.load("cifar10", root=tmp_path)


def test_cifar_seed_and_empty_train_at_paper_scale(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*32\), got -1"):
        sl.data.load("cifar10", root=tmp_path, image_size=128, seed=-1)
    with pytest.raises(ConfigError, match="no training images are left"):
        sl.data.load("cifar10", root=tmp_path, image_size=128, val_fraction=0.99)


def test_roots_under_home_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_cifar(tmp_path / "c")
    write_image_folder(tmp_path / "inat")
    assert len(sl.data.load("cifar10", root="~/c", split="test")) == 40
    assert sl.data.load("inat19", root="~/inat", image_size=16).num_classes == 3


# ---------------------------------------------------------------- digits and in-memory splits


def test_digits_without_a_test_split_still_selects_classes():
    data = sl.data.load("digits", image_size=8, test_fraction=0.0, classes=[3, 5])
    assert data.test is None and data.num_classes == 2 and set(data.train.labels.tolist()) == {0, 1}


@pytest.mark.parametrize("options", [dict(val_fraction="0.2"), dict(test_fraction="0.2"), dict(val_fraction=True)])
def test_fractions_must_be_numbers(options):
    with pytest.raises(ConfigError, match="must be a number in"):
        sl.data.load("digits", image_size=8, **options)


def test_build_bundle_refuses_bad_labels_and_nan_pixels():
    from sparselab.data.tensors import build_bundle

    x = np.random.default_rng(0).uniform(0, 1, (20, 8, 8)).astype(np.float32)
    y = np.arange(20) % 2
    names = ["a", "b"]
    with pytest.raises(ConfigError, match=r"labels must be integers in \[0, 2\)"):
        build_bundle("toy", (x, y + 1), None, class_names=names, image_size=8, max_value=1.0)
    with pytest.raises(ConfigError, match="20 training images but 19 labels"):
        build_bundle("toy", (x, y[:19]), None, class_names=names, image_size=8, max_value=1.0)
    bad = x.copy()
    bad[4, 2, 2] = np.inf
    with pytest.raises(ConfigError, match="NaN or infinite"):
        build_bundle("toy", (bad, y), None, class_names=names, image_size=8, max_value=1.0)


def test_tensor_images_checks_its_inputs():
    with pytest.raises(ConfigError, match="labels must be a 1-d tensor"):
        TensorImages(torch.zeros(4, 1, 4, 4), torch.zeros(4, 1))
    with pytest.raises(ConfigError, match="whole numbers"):
        TensorImages(torch.zeros(2, 1, 4, 4), torch.tensor([0.5, 1.7]))
    with pytest.raises(ConfigError, match="one value per channel"):
        TensorImages(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), augment="crop", fill=[0.0, 1.0])
    ds = TensorImages(np.zeros((2, 1, 4, 4), np.float32), [0, 1])  # arrays and lists are accepted
    assert ds.labels.tolist() == [0, 1] and ds.images.dtype == torch.float32


# ---------------------------------------------------------------- ImageFolder trees


def test_split_folders_without_train_are_not_read_as_classes(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=("val", "test"))
    with pytest.raises(DataNotFoundError, match="has val/ and test/ but no train/ folder"):
        sl.data.load("imagefolder", root=root, image_size=16)


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=4)
    shutil.copytree(root / "cat", root / ".ipynb_checkpoints")
    (root / "dog" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    data = sl.data.load("imagefolder", root=root, image_size=16, augment="none", val_fraction=0.0)
    assert data.classes == ["cat", "dog", "owl"] and data.num_classes == 3
    assert len(data.train) == 12
    assert all(data.train[i][0].shape == (3, 16, 16) for i in range(len(data.train)))


def test_fractions_leaving_no_training_images(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=2)
    for options in ({}, {"limit": 1}):
        with pytest.raises(ConfigError, match="no training images are left"):
            sl.data.load("imagefolder", root=root, image_size=16, val_fraction=0.9, test_fraction=0.5, **options)


def test_fractions_are_refused_for_a_tree_split_into_folders(tmp_path):
    root = write_image_folder(tmp_path / "t")
    for options in (dict(val_fraction=0.3), dict(test_fraction=0.2)):
        with pytest.raises(ConfigError, match="is split into folders already"):
            sl.data.load("imagefolder", root=root, image_size=16, **options)
    assert sl.data.load("imagefolder", root=root, image_size=16, val_fraction=0.0).val is None


@pytest.mark.parametrize("options,match", [
    (dict(seed=-1), "seed must be an integer"),
    (dict(seed="3"), "seed must be an integer"),
    (dict(std=(0, 0, 0)), "std must be three finite numbers above 0"),
    (dict(mean=(0.5, 0.5)), "mean must be three numbers"),
    (dict(mean="0.5"), "mean must be three numbers"),
    (dict(mean=(0.5, float("nan"), 0.5)), "mean must be three finite numbers"),
    (dict(pad=-1), "pad must be an integer >= 0"),
    (dict(pad="4"), "pad must be an integer >= 0"),
])
def test_imagefolder_options_are_checked_when_loading(tmp_path, options, match):
    root = write_image_folder(tmp_path / "t", splits=())
    with pytest.raises(ConfigError, match=match):
        sl.data.load("imagefolder", root=root, image_size=16, **options)


def test_an_unreadable_image_names_its_file(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=3)
    (root / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = sl.data.load("imagefolder", root=root, image_size=16, augment="none", val_fraction=0.0)
    with pytest.raises(DataNotFoundError, match=r"cat/0\.png cannot be read as an image"):
        [data.train[i] for i in range(len(data.train))]


def test_sixteen_bit_greyscale_keeps_its_brightness(tmp_path):
    """PIL's own RGB conversion clips 16-bit values at 255: every image would be white."""
    from PIL import Image

    root = tmp_path / "t16"
    for c, v in (("dark", 1000), ("bright", 60000)):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), v, np.uint16)).save(root / c / f"{i}.png")
    data = sl.data.load("imagefolder", root=root, image_size=8, augment="none", val_fraction=0.0,
                        mean=(0, 0, 0), std=(1, 1, 1))
    means = {data.classes[y]: round(float(x.mean()), 2) for x, y in (data.train[i] for i in range(len(data.train)))}
    assert means == {"dark": round(4 / 255, 2), "bright": round(233 / 255, 2)}


def test_imagefolder_splits_can_be_pickled_for_worker_processes(tmp_path):
    import pickle

    root = write_image_folder(tmp_path / "t", splits=(), per_class=3)
    data = sl.data.load("imagefolder", root=root, image_size=16, augment="none", val_fraction=0.0)
    copy = pickle.loads(pickle.dumps(data.train))
    assert len(copy) == 9 and copy[0][0].shape == (3, 16, 16)


def test_an_empty_class_folder_is_a_clear_error(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=3)
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(DataNotFoundError, match="the class folders emu hold no images"):
        sl.data.load("imagefolder", root=root, image_size=16)
    only_hidden = tmp_path / "hidden"
    shutil.copytree(root / "cat", only_hidden / ".ipynb_checkpoints")
    with pytest.raises(DataNotFoundError, match="it has no class folders"):
        sl.data.load("imagefolder", root=only_hidden, image_size=16)
