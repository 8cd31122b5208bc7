"""sparselab.data: random-crop padding refused where nothing applies it, non-square photos cropped rather than
stretched, 32-bit images refused, every class kept in training by the stratified splits, numpy integers accepted as
options (and fingerprinted as Python ints), and TinyImageNet's unlabelled test/ folder ignored."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_cifar, write_image_folder

import sparselab as sl
from sparselab.data import DataBundle, TensorImages
from sparselab.data.tensors import build_bundle, stratified_split
from sparselab.data.transforms import image_transforms
from sparselab.errors import ConfigError, DataNotFoundError

PLAIN = dict(augment="none", mean=(0, 0, 0), std=(1, 1, 1))  # pixels come back as they are, in [0, 1]


def _save(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _train_labels(data: DataBundle) -> list[int]:
    return [int(data.train.base.targets[i]) for i in data.train.indices]


# 1. pad ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [128, 224])
def test_pad_at_paper_scale_is_refused_not_ignored(tmp_path, image_size):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=2)
    with pytest.raises(ConfigError, match=r"pad=4.*applies below 128 px only.*random-resized crop"):
        sl.data.load("imagefolder", root=root, image_size=image_size, pad=4)
    with pytest.raises(ConfigError, match=r"pad=4 for cifar10 .*applies below 128 px only"):
        sl.data.load("cifar10", root=tmp_path / "no-cifar-here", image_size=image_size, pad=4)
    with pytest.raises(ConfigError, match="applies below 128 px only"):
        image_transforms(image_size, pad=0)
    # without pad both load as before
    assert len(sl.data.load("imagefolder", root=root, image_size=image_size, val_fraction=0.0).train) == 6


def test_cifar_at_paper_scale_loads_without_its_small_scale_padding(tmp_path):
    write_cifar(tmp_path, "cifar10", n_train=50)
    assert len(sl.data.load("cifar10", root=tmp_path, image_size=128, val_fraction=0.0).train) == 50
    assert sl.data.load("cifar10", root=tmp_path, val_fraction=0.0).train.pad == 4
    assert sl.data.load("cifar10", root=tmp_path, val_fraction=0.0, pad=2).train.pad == 2


def test_pad_without_a_random_crop_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "t", splits=(), per_class=2)
    with pytest.raises(ConfigError, match=r"pad=2 with augment='none'.*needs an augmentation with a random crop"):
        sl.data.load("imagefolder", root=root, image_size=16, augment="none", pad=2)
    for augment in ("none", "flip"):
        with pytest.raises(ConfigError, match=f"pad=4 for cifar10 with augment='{augment}'"):
            sl.data.load("cifar10", root=tmp_path / "no-cifar-here", augment=augment, pad=4)
    with pytest.raises(ConfigError, match="needs an augmentation with a random crop"):
        image_transforms(32, augment=False, pad=4)


# 2. non-square photos ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tall", [False, True])
def test_non_square_photos_are_centre_cropped_not_stretched(tmp_path, tall):
    """A 60x20 photo: red and blue ends, green middle. Resizing its shorter side to 16 and cropping the centre
    square shows green only; stretching it to 16x16 would squeeze the red and blue ends in."""
    photo = np.zeros((20, 60, 3), np.uint8)
    photo[:, :12, 0] = 255
    photo[:, 12:48, 1] = 255
    photo[:, 48:, 2] = 255
    if tall:
        photo = np.ascontiguousarray(photo.transpose(1, 0, 2))
    for c in ("a", "b"):
        for i in range(2):
            _save(tmp_path / "t" / c / f"{i}.png", photo)
    data = sl.data.load("imagefolder", root=tmp_path / "t", image_size=16, val_fraction=0.0, **PLAIN)
    x, _ = data.train[0]
    assert x.shape == (3, 16, 16)
    red, green, blue = x[0].max().item(), x[1].min().item(), x[2].max().item()
    assert red < 0.01 and blue < 0.01 and green > 0.99
    # the aspect-keeping resize and crop apply to evaluation and to the augmented training images alike
    data = sl.data.load("imagefolder", root=tmp_path / "t", image_size=16, val_fraction=0.5, augment="crop_flip",
                        pad=0, mean=(0, 0, 0), std=(1, 1, 1))
    for x, _ in (data.train[0], data.val[0]):
        assert x.shape == (3, 16, 16) and x[0].max() < 0.01 and x[2].max() < 0.01


def test_square_photos_come_back_as_before(tmp_path):
    """For square images the shorter-side resize is the old square resize: same pixels."""
    from PIL import Image
    from torchvision import transforms as T

    root = write_image_folder(tmp_path / "t", splits=(), per_class=1, size=20)
    data = sl.data.load("imagefolder", root=root, image_size=16, val_fraction=0.0, **PLAIN)
    x, y = data.train[0]
    img = Image.open(root / data.classes[y] / "0.png").convert("RGB")
    torch.testing.assert_close(x, T.ToTensor()(T.Resize((16, 16))(img)))


# 3. 32-bit images --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("array,kind", [(np.full((8, 8), 100_000, np.int32), "integer"),
                                        (np.full((8, 8), 0.5, np.float32), "floating-point")])
def test_32_bit_images_are_refused_naming_the_file(tmp_path, array, kind):
    """PIL's own RGB conversion would clip a 32-bit integer image at 255 (white) and a float one to black; the tree
    is refused when it loads, before any training."""
    root = tmp_path / "t"
    _save(root / "a" / "0.tif", array)
    _save(root / "b" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataNotFoundError, match=rf"a[/\\]0\.tif: a 32-bit {kind} image .* only 8-bit and 16-bit"):
        sl.data.load("imagefolder", root=root, image_size=8, val_fraction=0.0, **PLAIN)


def test_sixteen_bit_values_in_a_32_bit_mode_keep_their_brightness(tmp_path):
    """PIL opens 16-bit PGM files (and older Pillow 16-bit PNGs) in its 32-bit mode ``I``: they are 16-bit."""
    from PIL import Image

    root = tmp_path / "t"
    for c, v in (("dark", 1000), ("bright", 60000)):
        _save(root / c / "0.pgm", np.full((8, 8), v, np.uint16))
        assert Image.open(root / c / "0.pgm").mode in ("I", "I;16")
    data = sl.data.load("imagefolder", root=root, image_size=8, val_fraction=0.0, **PLAIN)
    means = {data.classes[y]: round(float(x.mean()), 2) for x, y in (data.train[i] for i in range(2))}
    assert means == {"dark": round(4 / 255, 2), "bright": round(233 / 255, 2)}


# 4. every class keeps a training image -----------------------------------------------------------------------------

def test_stratified_split_keeps_one_of_every_class_in_the_rest():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])  # class 1 has one image; class 2's round(0.75 * 2) would be 2
    for seed in range(5):
        rest, part = stratified_split(labels, 0.75, seed)
        assert set(labels[rest].tolist()) == {0, 1, 2}
        assert sorted(np.concatenate([rest, part]).tolist()) == list(range(7))
    # a fraction that would take every image of every class still leaves nothing (callers refuse that)
    rest, part = stratified_split(np.array([0, 1]), 0.75, 0)
    assert len(rest) == 0 and len(part) == 2


@pytest.mark.parametrize("options", [dict(val_fraction=0.6), dict(val_fraction=0.0, test_fraction=0.6),
                                     dict(val_fraction=0.6, test_fraction=0.6)])
def test_a_class_with_a_single_image_stays_in_training(tmp_path, options):
    root = write_image_folder(tmp_path / "t", classes=("cat", "dog"), splits=(), per_class=5)
    _save(root / "owl" / "0.png", np.zeros((20, 20, 3), np.uint8))
    data = sl.data.load("imagefolder", root=root, image_size=16, **PLAIN, **options)
    assert data.classes == ["cat", "dog", "owl"]
    assert set(_train_labels(data)) == {0, 1, 2}
    assert sum(len(s) for s in (data.train, data.val, data.test) if s is not None) == 11


def test_in_memory_bundles_keep_every_class_in_training():
    images = np.zeros((9, 4, 4), np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    data = build_bundle("toy", (images, labels), None, class_names=["a", "b", "c"], image_size=4, max_value=1.0,
                        val_fraction=0.6)
    assert set(data.train.labels.tolist()) == {0, 1, 2} and len(data.train) + len(data.val) == 9


# 5. numpy integers -------------------------------------------------------------------------------------------------

def test_numpy_integers_are_options_like_python_ints(tmp_path):
    plain = sl.data.load("digits", image_size=8, limit=100, seed=3)
    numpy = sl.data.load("digits", image_size=np.int64(8), limit=np.int64(100), seed=np.int32(3))
    assert len(numpy.train) == 100 and numpy.image_size == 8 and type(numpy.image_size) is int
    assert numpy.train[0][0].shape == (1, 8, 8)
    assert numpy.fingerprint() == plain.fingerprint()
    torch.testing.assert_close(numpy.train.images, plain.train.images)

    root = write_image_folder(tmp_path / "t", splits=(), per_class=4)
    data = sl.data.load("imagefolder", root=root, image_size=np.int16(16), limit=np.uint8(5), pad=np.int64(2),
                        augment="crop_flip", val_fraction=0.0)
    assert len(data.train) == 5 and data.train[0][0].shape == (3, 16, 16)
    write_cifar(tmp_path, "cifar10", n_train=50)
    cifar = sl.data.load("cifar10", root=tmp_path, pad=np.int64(2), limit=np.int64(20), val_fraction=0.0)
    assert cifar.train.pad == 2 and len(cifar.train) == 20
    assert TensorImages(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), pad=np.int64(1)).pad == 1


@pytest.mark.parametrize("options,match", [
    (dict(limit=np.float64(100.0)), "limit must be a positive integer"),
    (dict(limit=np.bool_(True)), "limit must be a positive integer"),
    (dict(limit=True), "limit must be a positive integer"),
    (dict(limit=100.0), "limit must be a positive integer"),
    (dict(limit=np.int64(0)), "limit must be a positive integer"),
    (dict(image_size=np.float64(8.0)), "image_size must be an integer >= 4"),
    (dict(image_size=np.bool_(True)), "image_size must be an integer >= 4"),
    (dict(image_size=8.0), "image_size must be an integer >= 4"),
    (dict(image_size=np.int64(2)), "image_size must be an integer >= 4"),
])
def test_numpy_floats_and_flags_are_still_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        sl.data.load("digits", **{"image_size": 8, **options})


def test_a_numpy_integer_fingerprints_like_the_equal_python_int():
    def bundle(**options) -> DataBundle:
        b = DataBundle("toy", TensorImages(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])), None, None,
                       num_classes=2, in_chans=1, image_size=4)
        b.options = options
        return b

    assert bundle(limit=np.int64(5), seed=np.uint32(1)).fingerprint() == bundle(limit=5, seed=1).fingerprint()
    assert (bundle(classes=np.array([3, 1])).fingerprint() == bundle(classes=[3, 1]).fingerprint()
            == bundle(classes=torch.tensor([3, 1])).fingerprint())
    assert bundle(limit=np.int64(5)).fingerprint() != bundle(limit=6).fingerprint()


# 6. TinyImageNet ---------------------------------------------------------------------------------------------------

def _tiny_imagenet(root: Path) -> Path:
    """TinyImageNet's published layout, val/ sorted into class folders: train/<wnid>/images/, val/<wnid>/, and the
    unlabelled test/images/."""
    rng = np.random.default_rng(0)
    for wnid in ("n01443537", "n01629819"):
        for i in range(3):
            _save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng.integers(0, 255, (64, 64, 3), np.uint8))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            _save(root / "val" / wnid / f"val_{wnid}_{i}.JPEG", rng.integers(0, 255, (64, 64, 3), np.uint8))
    for i in range(4):
        _save(root / "test" / "images" / f"test_{i}.JPEG", rng.integers(0, 255, (64, 64, 3), np.uint8))
    return root


def test_tinyimagenet_ignores_its_unlabelled_test_folder(tmp_path):
    root = _tiny_imagenet(tmp_path / "tiny-imagenet-200")
    data = sl.data.load("tinyimagenet", root=root, image_size=16, augment="none")
    assert data.classes == ["n01443537", "n01629819"]
    assert len(data.train) == 6 and data.val is None and len(data.test) == 4  # val/ is the test split
    assert data.test[0][0].shape == (3, 16, 16)
    # without val/ nothing is left to test on, and the message says why
    import shutil

    shutil.rmtree(root / "val")
    with pytest.raises(DataNotFoundError, match="its test/ is unlabelled, so val/ is the test split"):
        sl.data.load("tinyimagenet", root=root, image_size=16)


def test_an_unlabelled_split_folder_of_a_plain_tree_is_named_as_such(tmp_path):
    root = _tiny_imagenet(tmp_path / "tiny")
    with pytest.raises(DataNotFoundError, match=r"test holds one images/ folder instead of class folders"):
        sl.data.load("imagefolder", root=root, image_size=16)
