from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import write_cifar, write_fashion_mnist, write_image_folder
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.data import TensorImages, fashion_mnist
from sparselab.data.idx import read_idx, write_idx
from sparselab.errors import ConfigError, DataNotFoundError, UnknownNameError


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    arr = np.random.default_rng(0).integers(0, 255, size=(5, 7, 3), dtype=np.uint8)
    write_idx(tmp_path / f"a{suffix}", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / f"a{suffix}"), arr)


def test_idx_truncated_file_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 4), np.uint8))
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "a").write_bytes(raw[:-3])
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(tmp_path / "a")


def test_fashion_mnist_from_data_dir(fmnist_files):
    data = sl.data.load("fashion_mnist", val_fraction=0.1)
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 1, 28)
    assert len(data.train) + len(data.val) == 600 and len(data.test) == 200
    x, y = data.train[0]
    assert x.shape == (1, 28, 28) and 0 <= y < 10
    # normalised with the training split's statistics
    assert abs(data.train.images.mean().item()) < 1e-4
    assert abs(data.train.images.std().item() - 1) < 1e-2


def test_fashion_mnist_prefers_data_dir_then_debian(isolated_data_dir, monkeypatch):
    debian = write_fashion_mnist(isolated_data_dir / "debian", n_train=300, n_test=100, gz=True)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    assert len(sl.data.load("fashion_mnist", split="test")) == 100
    # a copy under data/ (torchvision's raw layout, uncompressed) wins over the Debian package
    write_fashion_mnist(isolated_data_dir / "FashionMNIST" / "raw", n_train=400, n_test=50, gz=False)
    assert len(sl.data.load("fashion_mnist", split="test")) == 50


def test_fashion_mnist_missing_names_all_three_places(isolated_data_dir):
    with pytest.raises(DataNotFoundError) as err:
        sl.data.load("fashion_mnist")
    msg = str(err.value)
    assert str(isolated_data_dir / "fashion_mnist") in msg
    assert "dataset-fashion-mnist" in msg and "torchvision download" in msg
    assert "apt-get install" in msg


def test_digits_split_is_deterministic_disjoint_and_complete():
    a = sl.data.load("digits", image_size=8)
    b = sl.data.load("digits", image_size=8)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)

    def hashes(ds):
        return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in ds.images}

    assert not (hashes(a.train) & hashes(a.test))
    assert not (hashes(a.val) & hashes(a.test))
    # every class in every split
    for ds in (a.train, a.val, a.test):
        assert set(ds.labels.tolist()) == set(range(10))


def test_digits_resize_classes_and_limit():
    d = sl.data.load("digits", image_size=28, classes=[3, 5, 7], limit=60)
    assert d.num_classes == 3 and d.classes == ["3", "5", "7"]
    assert d.train.images.shape[1:] == (1, 28, 28)
    assert len(d.train) == 60
    counts = torch.bincount(d.train.labels)
    assert counts.tolist() == [20, 20, 20]
    assert set(d.test.labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("name,k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_generated_pickles(tmp_path, name, k):
    write_cifar(tmp_path, name, n_train=200 if k == 100 else 100)
    data = sl.data.load(name, root=tmp_path)
    assert data.num_classes == k and data.in_chans == 3 and data.image_size == 32
    assert isinstance(data.train, TensorImages)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert len(data.test) == 40
    assert data.classes[1] in ("c1", "f1")


def test_cifar_at_paper_scale_uses_timm_transforms(tmp_path):
    write_cifar(tmp_path, "cifar10")
    data = sl.data.load("cifar10", root=tmp_path, image_size=224)
    x, y = data.train[0]
    assert x.shape == (3, 224, 224) and isinstance(y, int)
    assert data.test[0][0].shape == (3, 224, 224)


def test_cifar_missing_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        sl.data.load("cifar10", root=tmp_path)


def test_imagefolder_with_split_folders(tmp_path):
    root = write_image_folder(tmp_path / "tree")
    data = sl.data.load("imagefolder", root=root, image_size=16, augment="none")
    assert data.num_classes == 3 and data.classes == ["cat", "dog", "owl"]
    # train/ + val/ without test/ (iFood, iNat19, TinyImageNet): val/ is the test set, as in the papers
    assert len(data.train) == 18 and data.val is None and len(data.test) == 18
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and y == 0
    # a path works as a name, too
    assert len(sl.data.load(str(root), split="test", image_size=16)) == 18
    # with a test/ folder as well, val/ stays the validation split
    three = write_image_folder(tmp_path / "three", splits=("train", "val", "test"))
    data = sl.data.load("imagefolder", root=three, image_size=16)
    assert len(data.val) == 18 and len(data.test) == 18


def test_a_train_val_tree_reports_a_test_accuracy(tmp_path):
    """A run on a train/ + val/ tree must end with a number, not NaN."""
    root = write_image_folder(tmp_path / "tree", per_class=8)
    data = sl.data.load("imagefolder", root=root, image_size=16, augment="none")
    model = sl.models.create("lenet_300_100", num_classes=3, in_chans=3, image_size=16)
    history = sl.fit(model, data, epochs=1, batch_size=8, progress=False)
    acc = history.last("acc", "test")
    assert 0 <= acc <= 1


def test_small_photo_recipe_pads_by_four_and_paper_scale_erases_in_pixel_mode():
    from torchvision import transforms as T

    from sparselab.data.transforms import image_transforms

    train, _ = image_transforms(64, pad=4)
    crops = [t for t in train.transforms if isinstance(t, T.RandomCrop)]
    assert len(crops) == 1 and crops[0].padding == 4
    train, _ = image_transforms(224)
    from timm.data.random_erasing import RandomErasing

    erasing = [t for t in train.transforms[-1].transforms if isinstance(t, RandomErasing)]
    assert len(erasing) == 1 and erasing[0].per_pixel and erasing[0].probability == 0.25


def test_cifar_crops_pad_four_pixels_of_black(tmp_path):
    write_cifar(tmp_path, "cifar10", n_train=100)
    data = sl.data.load("cifar10", root=tmp_path, val_fraction=0.0)
    assert data.val is None and len(data.train) == 100
    assert data.train.pad == 4
    black = torch.tensor(data.train.fill)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    torch.testing.assert_close(black, -mean / std)
    x, _ = data.train.get_batch(torch.arange(64), torch.Generator().manual_seed(0), train=True)
    # a crop shifted by the full padding shows a 4-pixel border of black on some image
    corner = x[:, :, 0, 0]
    assert ((corner - black).abs().max(dim=1).values < 1e-6).any()


def test_imagefolder_single_tree_is_split(tmp_path):
    root = write_image_folder(tmp_path / "flat", per_class=10, splits=())
    data = sl.data.load("imagefolder", root=root, image_size=224, val_fraction=0.2, test_fraction=0.2)
    assert len(data.train) + len(data.val) + len(data.test) == 30
    assert data.train[0][0].shape == (3, 224, 224)


@pytest.mark.parametrize("name", ["inat19", "ifood", "flowers102", "pets", "food101"])
def test_photo_datasets_missing_offline(name, tmp_path):
    with pytest.raises(DataNotFoundError):
        sl.data.load(name, root=tmp_path / "nothing")


def test_unknown_dataset_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="Did you mean 'fashion_mnist'"):
        sl.data.load("fashon_mnist")


@pytest.mark.parametrize("kwargs", [dict(val_fraction=1.0), dict(val_fraction=-0.1), dict(test_fraction=1.5),
                                    dict(limit=0), dict(classes=[3, 3]), dict(classes=[11]),
                                    dict(augment="rotate")])
def test_bad_options_are_clear_errors(kwargs):
    with pytest.raises(ConfigError):
        sl.data.load("digits", **kwargs)


def test_bad_split_and_size():
    with pytest.raises(ConfigError, match="split"):
        sl.data.load("digits", split="training")
    with pytest.raises(ConfigError, match="image_size"):
        sl.data.load("digits", image_size=0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), pad=st.integers(1, 3), seed=st.integers(0, 1000),
       augment=st.sampled_from(["flip", "crop", "crop_flip"]))
def test_augmentation_only_moves_pixels(n, pad, seed, augment):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 2, 6, 6) + 1  # strictly positive, so padding shows up as exact zeros
    ds = TensorImages(images, torch.zeros(n, dtype=torch.long), augment=augment, pad=pad)
    x, _ = ds.get_batch(torch.arange(n), g, train=True)
    assert x.shape == images.shape
    for i in range(n):
        values = set(x[i].flatten().tolist()) - {0.0}
        assert values <= set(images[i].flatten().tolist())
    # without train=True nothing changes
    assert torch.equal(ds.get_batch(torch.arange(n), g, train=False)[0], images)


def test_no_test_images_means_no_test_split_and_no_test_metrics():
    data = sl.data.load("digits", image_size=8, test_fraction=0.0)
    assert data.test is None and data.val is not None
    history = sl.fit(sl.models.create("lenet_300_100", image_size=8), data, epochs=1, batch_size=64,
                     max_steps_per_epoch=2, progress=False)
    assert history.metrics.query("split == 'test'").empty  # nothing measured, nothing logged
    assert not history.metrics.query("split == 'val'").empty


def test_classes_may_be_an_array_or_a_tensor():
    import numpy as np

    as_list = sl.data.load("digits", image_size=8, classes=[3, 1])
    for labels in (np.array([3, 1]), torch.tensor([3, 1])):
        other = sl.data.load("digits", image_size=8, classes=labels)
        assert torch.equal(other.train.labels, as_list.train.labels)
        assert torch.equal(other.train.images, as_list.train.images)
