from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import sparselab as sl
from sparselab.errors import CheckpointError, ConfigError, UnknownNameError
from sparselab.models import pretrained as pre


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def resnet_params(depth, widths, in_chans=3, classes=10):
    """Parameter count of a CIFAR ResNet from its definition (3x3 convs, BN, 1x1 projection shortcuts)."""
    n = (depth - 2) // 6
    total = 9 * in_chans * widths[0] + 2 * widths[0]
    cin = widths[0]
    for w in widths:
        for _ in range(n):
            total += 9 * cin * w + 9 * w * w + 4 * w + (cin * w + 2 * w if cin != w else 0)
            cin = w
    return total + cin * classes + classes


@pytest.mark.parametrize("name,in_chans,size,params", [
    ("resnet20", 3, 32, resnet_params(20, (16, 32, 64))),
    ("resnet32", 3, 32, resnet_params(32, (16, 32, 64))),
    ("resnet56", 3, 32, resnet_params(56, (16, 32, 64))),
    ("resnet32_wide", 3, 32, resnet_params(32, (32, 64, 128))),
    ("lenet_300_100", 1, 28, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
])
def test_paper_cnns(name, in_chans, size, params):
    m = sl.models.create(name, num_classes=10, in_chans=in_chans)
    assert n_params(m) == params
    assert m(torch.zeros(2, in_chans, size, size)).shape == (2, 10)


# configuration E as the HyperSparse reference builds it for CIFAR: four max-pools, none after the last block
VGG19_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


def vgg_params(cfg, in_chans, classes, width=1.0):
    """Parameter count from the configuration: 3x3 convs with bias, BN (weight, bias), one Linear classifier."""
    total, cin = 0, in_chans
    for v in cfg:
        if v == "M":
            continue
        c = max(1, int(round(v * width)))
        total += 3 * 3 * cin * c + c + 2 * c
        cin = c
    return total + cin * classes + classes


def test_vgg19_bn_is_the_reference_architecture():
    full = sl.models.create("vgg19_bn", num_classes=100, in_chans=3)
    convs = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16 and all(c.bias is not None for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in full.modules()) == 4
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in full.modules()) == 16
    linears = [m for m in full.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 512
    assert n_params(full) == vgg_params(VGG19_E, 3, 100) == 20_086_692  # 20,018,880 conv + 16,512 bias/BN + 51,300
    narrow = sl.models.create("vgg19_bn", num_classes=10, in_chans=1, width=0.25)
    assert n_params(narrow) == vgg_params(VGG19_E, 1, 10, width=0.25)


@pytest.mark.parametrize("size,left", [(28, 2), (32, 2), (64, 4)])
def test_vgg19_bn_shapes_and_the_average_pool(size, left):
    torch.manual_seed(0)
    net = sl.models.create("vgg19_bn", num_classes=7, in_chans=3, width=0.125).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert net(x).shape == (2, 7)
        feats = net.features(x)
        assert feats.shape[-2:] == (left, left)  # ceil-mode pools: 28 -> 14 -> 7 -> 4 -> 2
        if size in (32, 64):  # the reference's AvgPool2d(2) at 32 px and AvgPool2d(4) at 64 px
            ref = net.classifier(torch.nn.AvgPool2d(left)(feats).flatten(1))
            torch.testing.assert_close(net(x), ref)


def test_vgg19_bn_initialisation():
    torch.manual_seed(0)
    net = sl.models.create("vgg19_bn", num_classes=100, in_chans=3)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * 9
            assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)  # He normal, the reference's n
            assert m.weight.mean().abs().item() < 0.1 * (2 / fan_in) ** 0.5
            assert (m.bias == 0).all()
            if m.in_channels == m.out_channels == 512:  # fan_in == fan_out here
                assert m.weight.std().item() == pytest.approx((2 / (m.out_channels * 9)) ** 0.5, rel=0.1)
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    assert net.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert (net.classifier.bias == 0).all()
    # the 64 -> 128 conv tells fan_in (std 0.059) from fan_out (0.042): the reference uses n = 3*3*in_channels
    conv = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][2]
    assert (conv.in_channels, conv.out_channels) == (64, 128)
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


@pytest.mark.parametrize("name", ["vit_nano_patch4_28", "vit_micro_patch4_28", "vit_mini_patch7_28",
                                  "vit_micro_patch4_32"])
def test_small_vits_are_registered_with_timm(name):
    assert timm.is_model(name)
    m = timm.create_model(name, num_classes=7)
    assert isinstance(m, VisionTransformer)
    size = m.patch_embed.img_size[0]
    assert m(torch.zeros(2, m.patch_embed.proj.in_channels, size, size)).shape == (2, 7)
    assert sl.models.create(name, num_classes=3, in_chans=3).patch_embed.proj.in_channels == 3


def test_timm_deit_by_name():
    m = sl.models.create("deit_tiny_patch16_224", num_classes=5)
    assert isinstance(m, VisionTransformer) and m.num_classes == 5
    assert 5.4e6 < n_params(m) < 5.8e6


def test_unknown_model_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet32'"):
        sl.models.create("resnet23")


def test_bad_num_classes():
    with pytest.raises(ConfigError):
        sl.models.create("resnet20", num_classes=0)


def test_local_checkpoint_round_trip_and_head_replacement(tmp_path):
    src = sl.models.create("vit_nano_patch4_28", num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    same = sl.models.create("vit_nano_patch4_28", num_classes=10, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k
    other = sl.models.create("vit_nano_patch4_28", num_classes=4, pretrained=path)
    assert other.head.out_features == 4
    assert torch.equal(other.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    # torch .pth files wrapped in {"model": ...} work too
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    assert torch.equal(sl.models.create("vit_nano_patch4_28", pretrained=tmp_path / "w.pth").pos_embed,
                       src.pos_embed)


def test_empty_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        sl.models.create("resnet20", pretrained=empty)
    torch.save({}, tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        sl.models.create("resnet20", pretrained=tmp_path / "nothing.pth")
    torch.save(sl.models.create("resnet20").state_dict(), tmp_path / "r20.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        sl.models.create("resnet32", pretrained=tmp_path / "r20.pth")
    torch.save(sl.models.create("resnet32_wide").state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        sl.models.create("resnet32", pretrained=tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="neither a checkpoint file"):
        sl.models.create("resnet20", pretrained="no/such/file.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        sl.models.create("resnet20", pretrained=tmp_path / "junk.pth")


def test_hub_weights_offline_is_a_clear_error():
    with pytest.raises(CheckpointError, match="local checkpoint"):
        sl.models.create("deit_tiny_patch16_224", pretrained=True)


def test_source_pretrained_is_cached_and_reproducible(fmnist_files, isolated_data_dir):
    model = sl.models.create("vit_nano_patch4_28", num_classes=4, pretrained="fashion_mnist", recipe="quick",
                             progress=False)
    assert model.head.out_features == 4
    path = pre.checkpoint_path("vit_nano_patch4_28", recipe="quick")
    assert path.is_file() and path.is_relative_to(isolated_data_dir)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["recipe"] == "quick" and 0 <= record["test_acc"] <= 1
    first = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    again = sl.models.create("vit_nano_patch4_28", num_classes=4, pretrained="fashion_mnist", recipe="quick")
    assert path.stat().st_mtime_ns == mtime  # cached, not retrained
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k  # the fresh head is seeded, too
    pre.pretrain("vit_nano_patch4_28", recipe="quick", force=True, progress=False)
    assert path.read_bytes() == first  # rebuilt bit for bit
    # the pretrained backbone differs from a random one
    random = sl.models.create("vit_nano_patch4_28")
    assert not torch.equal(random.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_source_pretrained_rejects_other_models_and_recipes(fmnist_files):
    with pytest.raises(ConfigError, match="small ViTs"):
        sl.models.create("resnet20", pretrained="fashion_mnist")
    with pytest.raises(UnknownNameError, match="recipe"):
        sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe="fast")


def test_corrupt_cached_source_checkpoint_says_how_to_rebuild(fmnist_files):
    path = pre.checkpoint_path("vit_nano_patch4_28", recipe="quick")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="sparselab pretrain --model vit_nano_patch4_28 --force"):
        sl.models.create("vit_nano_patch4_28", pretrained="fashion_mnist", recipe="quick")
