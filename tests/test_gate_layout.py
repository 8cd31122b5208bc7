"""The layer -> gate -> vector layout that gates and compaction read alike (one rule for layer keys), the contract of
masks_from_scores on no scores, and the patch grid of a ViT that takes images of any size (dynamic_img_size)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.structure import Gates, ResidualTaps, ViTStructure, compact_vit, pad_masks
from sparselab.structure.compact.slicing import _check_masks
from sparselab.structure.taps import embedded_grid
from sparselab.structure.unstructured import masks_from_scores
from sparselab.structure.vit import check_gate_layout, layer_key


def two_layer_vit(seed: int = 0, **options) -> nn.Module:
    """A 2-layer ViT on 16x16 images (4x4 patches, hidden width 32)."""
    torch.manual_seed(seed)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=2,
                             num_heads=2, mlp_ratio=2.0, **options).eval()


HALF = torch.arange(32) < 16  # an mlp_hid mask of the model above


# ====================================================================== layer keys
@pytest.mark.parametrize("key", [1, np.int64(1), np.int32(1), np.uint8(1), "1", "01"])
def test_gates_and_compaction_read_the_same_layer_keys(key):
    model = two_layer_vit()
    s = ViTStructure(model)
    assert layer_key(key, s.depth, "masks") == 1
    assert torch.equal(_check_masks(s, {key: {"mlp_hid": HALF}})[1]["mlp_hid"], HALF)
    assert torch.equal(pad_masks(s, {key: {"mlp_hid": HALF}}, 8)[0][1]["mlp_hid"], HALF)
    assert compact_vit(model, {key: {"mlp_hid": HALF}}).blocks[1].mlp.fc1.out_features == 16
    gates = Gates(s)
    gates.set_hard({key: {"mlp_hid": HALF}})
    assert torch.equal(gates.hard_masks()[1]["mlp_hid"], HALF)
    gates.set_values({key: {"mlp_hid": torch.full((32,), 0.25)}})
    assert torch.allclose(gates.gate(1, "mlp_hid"), torch.full((32,), 0.25))
    gates.remove()


@pytest.mark.parametrize("key", [True, False, 1.0, 0.0, np.float64(1.0), np.bool_(True), "1.0", " 1", "-1", "one",
                                 "", "١", None, (1,)])
def test_gates_and_compaction_refuse_the_same_layer_keys_naming_the_key(key):
    model = two_layer_vit()
    s = ViTStructure(model)
    gates = Gates(s)
    calls = {
        "compact_vit": lambda: compact_vit(model, {key: {"mlp_hid": HALF}}),
        "pad_masks": lambda: pad_masks(s, {key: {"mlp_hid": HALF}}, 8),
        "set_hard": lambda: gates.set_hard({key: {"mlp_hid": HALF}}),
        "set_values": lambda: gates.set_values({key: {"mlp_hid": HALF.float()}}),
    }
    messages = {}
    for name, call in calls.items():
        with pytest.raises(ConfigError, match="layer keys must be whole layer numbers") as err:
            call()
        assert repr(key) in str(err.value) and "decimal digits" in str(err.value), name
        messages[name] = str(err.value).split(": ", 1)[1]  # after the name of the dict
    assert len(set(messages.values())) == 1, messages  # one rule, one message
    assert gates.all_one()  # nothing was set
    gates.remove()


def test_a_layer_given_twice_under_two_keys_is_refused():
    model = two_layer_vit()
    s = ViTStructure(model)
    masks = {1: {"mlp_hid": HALF}, "1": {"mlp_hid": ~HALF}}  # which one counts would be the dict order's accident
    with pytest.raises(ConfigError, match=r"name layer 1 twice, as 1 and '1'"):
        compact_vit(model, masks)
    gates = Gates(s)
    with pytest.raises(ConfigError, match="twice"):
        gates.set_hard(masks)
    assert gates.all_one()
    gates.remove()


def test_the_layout_errors_name_layer_gate_and_what_is_allowed():
    model = two_layer_vit()
    s = ViTStructure(model)
    gates = Gates(s)
    cases = [
        ({2: {"mlp_hid": HALF}}, r"name layer 2, but the model has 2 layers \(0..1\)"),
        ({0: {"mlp_hidden": HALF}}, r"for layer 0 name unknown gate 'mlp_hidden'; gates: attn_in, attn_qkv"),
        ({0: {"mlp_hid": HALF[:31]}}, r"for layer 0, gate 'mlp_hid' has shape \(31,\); the gate has 32 entries"),
        ({0: [HALF]}, "for layer 0 must be a dict gate -> "),
        ([HALF], "must be a dict layer -> gate -> "),
    ]
    for masks, match in cases:
        for call in (lambda: compact_vit(model, masks), lambda: gates.set_hard(masks),
                     lambda: gates.set_values(masks)):
            with pytest.raises(ConfigError, match=match):
                call()
    for call in (lambda m: compact_vit(model, m), gates.set_hard):  # masks, not soft values
        with pytest.raises(ConfigError, match=r"layer 0, gate 'mlp_hid' must be boolean \(True = kept\) or 0/1"):
            call({0: {"mlp_hid": torch.full((32,), 0.5)}})
    gates.set_values({0: {"mlp_hid": torch.full((32,), 0.5)}})  # soft values are what set_values is for
    gates.remove()


def test_check_gate_layout_leaves_values_to_the_caller():
    s = ViTStructure(two_layer_vit())
    (layer, gate, v), = check_gate_layout(s, {"0": {"attn_qkv": [0.3] * 8}}, "gate values")
    assert (layer, gate) == (0, "attn_qkv") and torch.allclose(v, torch.full((8,), 0.3, dtype=v.dtype))


# ====================================================================== masks_from_scores
@pytest.mark.parametrize("scope", ["global", "layer", "row"])
def test_masks_from_no_scores_is_refused_with_what_scores_should_hold(scope):
    with pytest.raises(ConfigError, match=r"scores must be a non-empty dict of weight name -> score tensor.*"
                                          r"got an empty dict"):
        masks_from_scores({}, 0.5, scope)
    with pytest.raises(ConfigError, match="got list"):
        masks_from_scores([torch.ones(3)], 0.5, scope)
    assert masks_from_scores({"w": torch.tensor([[1.0, 3.0]])}, 0.5, scope)["w"].tolist() == [[False, True]]


# ====================================================================== patch grid of any image size
def dynamic_vit(**options) -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                             num_heads=2, dynamic_img_size=True, **options)


@pytest.mark.parametrize("patch_probe", ["linear", "conv2"])
def test_block_benefit_probes_images_of_other_sizes_than_the_models(patch_probe):
    model = dynamic_vit()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe=patch_probe)
    s = probes.structure
    targets = torch.tensor([1, 2, 3])
    for size, grid in (((28, 28), (7, 7)), ((36, 36), (9, 9)), ((28, 36), (7, 9)), ((40, 24), (10, 6))):
        model(torch.randn(3, 1, *size))
        assert probes.taps.grid == grid
        assert s.patch_tokens(probes.taps.stream[-1], probes.taps.grid).shape == (3, 32, *grid)
        loss = probes.probe_loss(targets)
        assert torch.isfinite(loss)
    assert probes.counts.tolist() == [4.0, 4.0]
    probes.remove()
    assert probes.taps.grid is None


def test_patch_tokens_put_each_image_patch_where_it_is():
    model = dynamic_vit().eval()
    s = ViTStructure(model)
    taps = ResidualTaps(s)
    x = torch.randn(1, 1, 28, 36)
    model(x)
    before = s.patch_tokens(taps.stream[0], taps.grid)  # x_0: each token still depends on its own patch only
    x[:, :, 4:8, 28:32] += 1.0  # the patch in row 1, column 7 of the 7x9 grid
    model(x)
    changed = (s.patch_tokens(taps.stream[0], taps.grid) - before).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[1, 7]]
    taps.remove()


def test_a_padded_input_gets_the_padded_grid():
    model = dynamic_vit(dynamic_img_pad=True)
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    model(torch.randn(2, 1, 30, 25))  # padded up to 32x28
    assert probes.taps.grid == (8, 7)
    assert torch.isfinite(probes.probe_loss(torch.tensor([0, 1])))
    probes.remove()


def test_a_grid_that_cannot_be_known_is_refused_instead_of_guessed():
    s = ViTStructure(dynamic_vit())
    tokens = torch.randn(2, 1 + 49, 32)
    with pytest.raises(ConfigError, match=r"takes images of any size \(dynamic_img_size\).*pass the input's grid"):
        s.patch_tokens(tokens)
    assert s.patch_tokens(tokens, (7, 7)).shape == (2, 32, 7, 7)
    with pytest.raises(ConfigError, match=r"49 patch tokens \(after 1 prefix tokens\) do not fill a 7x9 patch grid"):
        s.patch_tokens(tokens, (7, 9))
    fixed = ViTStructure(two_layer_vit())
    assert fixed.fixed_grid and fixed.patch_tokens(torch.randn(2, 17, 16)).shape == (2, 16, 4, 4)
    with pytest.raises(ConfigError, match="do not fill a 4x4 patch grid"):
        fixed.patch_tokens(torch.randn(2, 13, 16))  # e.g. patch dropout removed tokens


def test_embedded_grid_reads_flat_and_spatial_embeddings():
    flat = PatchEmbed(img_size=28, patch_size=4, in_chans=1, embed_dim=8, strict_img_size=False)
    x = torch.randn(1, 1, 28, 36)
    assert embedded_grid(flat, x, flat(x)) == (7, 9)
    spatial = PatchEmbed(img_size=28, patch_size=4, in_chans=1, embed_dim=8, strict_img_size=False,
                         output_fmt="NHWC")
    assert embedded_grid(spatial, x, spatial(x)) == (7, 9)
    assert embedded_grid(flat, x, flat(x)[:, :50]) is None  # tokens that fill no grid of this image
    assert embedded_grid(flat, None, flat(x)) is None
