"""``limit`` keeps at least one training image of every class and is refused below the number of classes, before
anything is read; ImageFolder trees refuse 32-bit images when they are built, naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_cifar, write_image_folder

import sparselab as sl
from sparselab.data import folders
from sparselab.data.registry import check_limit_per_class
from sparselab.data.tensors import build_bundle, stratified_limit
from sparselab.errors import ConfigError, DataNotFoundError

PLAIN = dict(augment="none", mean=(0, 0, 0), std=(1, 1, 1))


def _save(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _train_labels(data) -> list[int]:
    return [int(data.train.base.targets[i]) for i in data.train.indices]


# ------------------------------------------------------------------------------------------------ limit per class
def test_a_limit_below_the_classes_of_an_image_folder_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=4, size=8)
    with pytest.raises(ConfigError, match=r"t: limit=2 is below its 3 classes, so some class would have no training "
                                          r"image; the smallest limit is 3"):
        sl.data.load("imagefolder", root=root, image_size=8, limit=2, **PLAIN)
    data = sl.data.load("imagefolder", root=root, image_size=8, limit=3, **PLAIN)
    assert sorted(_train_labels(data)) == [0, 1, 2]


def test_a_limit_below_the_classes_of_arrays_is_refused():
    images, labels = np.zeros((12, 4, 4), np.float32), np.arange(12) % 4
    with pytest.raises(ConfigError, match=r"toy: limit=3 is below its 4 classes.*smallest limit is 4"):
        build_bundle("toy", (images, labels), None, class_names=list("abcd"), image_size=4, max_value=1.0, limit=3,
                     val_fraction=0.0)
    data = build_bundle("toy", (images, labels), None, class_names=list("abcd"), image_size=4, max_value=1.0,
                        limit=4, val_fraction=0.0)
    assert sorted(data.train.labels.tolist()) == [0, 1, 2, 3]


def test_digits_count_the_classes_kept():
    with pytest.raises(ConfigError, match=r"digits: limit=9 is below its 10 classes"):
        sl.data.load("digits", image_size=8, limit=9)
    with pytest.raises(ConfigError, match=r"digits: limit=2 is below its 3 classes.*smallest limit is 3"):
        sl.data.load("digits", image_size=8, limit=2, classes=[3, 5, 7])
    data = sl.data.load("digits", image_size=8, limit=3, classes=[3, 5, 7])
    assert sorted(data.train.labels.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "flowers102", "pets", "food101"])
def test_a_limit_below_the_classes_is_refused_before_the_files_are_looked_for(name, tmp_path):
    """No files are there: the limit is refused first (rather than after a download or a read)."""
    with pytest.raises(ConfigError, match=rf"{name}: limit=5 is below its \d+ classes"):
        sl.data.load(name, root=tmp_path, limit=5)


def test_a_limit_of_cifar_classes_is_counted_after_the_class_selection(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar10: limit=2 is below its 3 classes"):
        sl.data.load("cifar10", root=tmp_path, limit=2, classes=[1, 2, 3])
    write_cifar(tmp_path, "cifar10", n_train=50)
    data = sl.data.load("cifar10", root=tmp_path, limit=3, classes=[1, 2, 3], val_fraction=0.0)
    assert sorted(data.train.labels.tolist()) == [0, 1, 2]


def test_a_small_class_keeps_a_training_image_under_a_limit():
    """In proportion alone, 3 of 44 images would all be of the large class."""
    images = np.zeros((44, 4, 4), np.float32)
    labels = np.array([0] * 40 + [1, 1, 2, 2])
    data = build_bundle("toy", (images, labels), None, class_names=list("abc"), image_size=4, max_value=1.0,
                        limit=3, val_fraction=0.0)
    assert sorted(data.train.labels.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(3))
def test_stratified_limit_keeps_every_class_and_exactly_the_limit(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(6, size=300, p=[0.9, 0.04, 0.03, 0.01, 0.01, 0.01])
    present = set(labels.tolist())
    for limit in range(len(present), 40):
        keep = stratified_limit(labels, limit, seed)
        assert len(keep) == limit == len(set(keep.tolist()))
        assert set(labels[keep].tolist()) == present
    # where no class rounds to nothing, the classes keep their proportions as before
    balanced = np.arange(100) % 4
    assert np.bincount(balanced[stratified_limit(balanced, 10, seed)]).tolist() == [3, 3, 2, 2]


def test_check_limit_per_class_allows_none_and_the_class_count():
    check_limit_per_class("toy", None, 10)
    check_limit_per_class("toy", 10, 10)
    with pytest.raises(ConfigError, match="smallest limit is 10"):
        check_limit_per_class("toy", 9, 10)


# ------------------------------------------------------------------------------------------------ 32-bit images
def test_a_32_bit_image_in_a_val_folder_is_refused_when_the_tree_is_built(tmp_path):
    root = write_image_folder(tmp_path / "t", per_class=2, size=8)
    _save(root / "val" / "cat" / "9.tif", np.full((8, 8), 100_000, np.int32))
    with pytest.raises(DataNotFoundError, match=r"val[/\\]cat[/\\]9\.tif: a 32-bit integer image"):
        sl.data.load("imagefolder", root=root, image_size=8, **PLAIN)


def test_a_large_tree_checks_the_first_image_of_every_class(tmp_path, monkeypatch):
    """Beyond MODE_CHECKS images only a sample of headers is read; an image outside it is refused when read."""
    monkeypatch.setattr(folders, "MODE_CHECKS", 4)
    root = write_image_folder(tmp_path / "t", splits=(), per_class=3, size=8)
    opened = []
    check = folders.check_image_mode
    monkeypatch.setattr(folders, "check_image_mode", lambda img: (opened.append(img.filename), check(img))[1])
    _save(root / "dog" / "1.tif", np.full((8, 8), 100_000, np.int32))  # the second image of its class
    data = sl.data.load("imagefolder", root=root, image_size=8, val_fraction=0.0, **PLAIN)
    assert sorted(Path(f).relative_to(root).as_posix() for f in opened) == ["cat/0.png", "dog/0.png", "owl/0.png"]
    index = [Path(f).relative_to(root).as_posix() for f, _ in data.train.base.samples].index("dog/1.tif")
    with pytest.raises(DataNotFoundError, match=r"dog[/\\]1\.tif: a 32-bit integer image"):
        data.train[index]
    (root / "dog" / "0.png").unlink()
    _save(root / "dog" / "0.tif", np.full((8, 8), 100_000, np.int32))  # now the first image of its class
    with pytest.raises(DataNotFoundError, match=r"dog[/\\]0\.tif: a 32-bit integer image"):
        sl.data.load("imagefolder", root=root, image_size=8, val_fraction=0.0, **PLAIN)


def test_sixteen_bit_images_pass_the_check(tmp_path):
    root = tmp_path / "t"
    _save(root / "a" / "0.png", np.full((8, 8), 60000, np.uint16))
    _save(root / "b" / "0.pgm", np.full((8, 8), 1000, np.uint16))
    _save(root / "c" / "0.tif", np.full((8, 8), 1000, np.uint16))
    data = sl.data.load("imagefolder", root=root, image_size=8, val_fraction=0.0, **PLAIN)
    assert [data.train[i][0].shape for i in range(3)] == [(3, 8, 8)] * 3
