"""Structure and compaction at their edges: a compact spec of other kept channels or heads with the same widths,
load_compact's device, the MACs of a head that reads every token, gate and weight masks that would be broadcast or
scale instead of masking, and an ONNX opset the exporter does not write."""
from __future__ import annotations

import pytest
import torch
from conftest import counted_macs
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import sparselab  # noqa: F401  (registers the small ViTs with timm)
from sparselab.errors import ConfigError
from sparselab.structure import GATES, Gates, ViTStructure, apply_masks
from sparselab.structure.compact import (
    compact_spec,
    compact_stats,
    compact_vit,
    export_onnx,
    load_compact,
    save_compact,
)


def tiny_vit(cls=VisionTransformer, seed=0, embed_dim=16, heads=2, **options) -> nn.Module:
    """A 2-layer ViT on 16x16 images with every weight perturbed (non-zero biases and norm affines)."""
    torch.manual_seed(seed)
    model = cls(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=embed_dim, depth=2,
                num_heads=heads, mlp_ratio=2.0, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def random_masks(structure: ViTStructure, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {i: {gate: torch.rand(n, generator=g) < 0.6 for gate, n in structure.gate_sizes(i).items()}
            for i in range(structure.depth)}


def hard_masked(model: nn.Module, masks: dict, qkv_unit: str = "dim") -> nn.Module:
    Gates(ViTStructure(model, qkv_unit)).set_hard(masks)
    return model


# ====================================================================== save_compact: the layout, not only shapes
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), qk_norm=st.booleans(), init_values=st.sampled_from([None, 0.1]),
       qkv_unit=st.sampled_from(["dim", "head"]), pad_to=st.sampled_from([1, 3, 8]))
def test_save_compact_accepts_only_the_spec_of_the_kept_channels_it_holds(tmp_path_factory, seed, qk_norm,
                                                                          init_values, qkv_unit, pad_to):
    model = tiny_vit(seed=seed % 7, qk_norm=qk_norm, init_values=init_values)
    structure = ViTStructure(model, qkv_unit)
    masks = random_masks(structure, seed)
    small = compact_vit(model, masks, pad_to=pad_to, qkv_unit=qkv_unit)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))

    # the spec of the masks themselves: the loaded model computes what the hard-masked model does
    folder = save_compact(small, compact_spec(model, masks, pad_to=pad_to, qkv_unit=qkv_unit),
                          tmp_path_factory.mktemp("right"))
    torch.testing.assert_close(load_compact(folder)(x), hard_masked(model, masks, qkv_unit)(x), rtol=1e-5,
                               atol=1e-5)

    # the same kept widths at other positions (each mask rolled by one): the weights have the same shapes, but a
    # model loaded from that spec would read and write other residual channels. Which hidden units or head
    # dimensions a branch keeps is its own bookkeeping (the weights alone define what the branch computes), so
    # only specs that differ in the residual channels must be refused; with pad_to a block may keep them all
    rolled = {i: {g: m.roll(1) for g, m in per.items()} for i, per in masks.items()}
    other = compact_spec(model, rolled, pad_to=pad_to, qkv_unit=qkv_unit)

    def residual_channels(spec: dict) -> list:
        return [{g: layer["indices"][g] for g in ("attn_in", "attn_out", "mlp_in", "mlp_out")}
                for layer in spec["layers"]]

    if residual_channels(other) != residual_channels(compact_spec(model, masks, pad_to=pad_to, qkv_unit=qkv_unit)):
        target = tmp_path_factory.mktemp("wrong")
        with pytest.raises(ConfigError, match="does not match the compact spec"):
            save_compact(small, other, target)
        assert not any(target.iterdir())


def test_save_compact_refuses_a_spec_of_the_other_qkv_unit_with_the_same_shapes(tmp_path):
    model = tiny_vit(embed_dim=4, heads=2)  # head_dim 2 = heads: one head or one head dimension, same widths
    masks = {0: {"attn_qkv": torch.tensor([True, False])}}
    small = compact_vit(model, masks, qkv_unit="dim")
    with pytest.raises(ConfigError, match=r"blocks.0.attn has 2 heads of 1 dimensions where the spec has 1 of 2"):
        save_compact(small, compact_spec(model, masks, qkv_unit="head"), tmp_path)
    save_compact(small, compact_spec(model, masks, qkv_unit="dim"), tmp_path)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_compact(tmp_path)(x), small(x))


def test_save_compact_refuses_a_constant_branch_of_other_channels(tmp_path):
    model = tiny_vit()
    empty = {"mlp_hid": torch.zeros(32, dtype=torch.bool)}
    a = {1: {**empty, "mlp_out": torch.arange(16) < 8}}
    b = {1: {**empty, "mlp_out": torch.arange(16) >= 8}}
    with pytest.raises(ConfigError, match=r"blocks.1.mlp holds other mlp_out channels of layer 1"):
        save_compact(compact_vit(model, a), compact_spec(model, b), tmp_path)


def test_load_compact_checks_its_device_before_reading(tmp_path):
    model = tiny_vit()
    folder = save_compact(compact_vit(model), compact_spec(model), tmp_path)
    for bad in ("bogus", 2.5, True):
        with pytest.raises(ConfigError, match="device must name a torch device"):
            load_compact(folder, device=bad)
    missing = torch.cuda.device_count() + 1
    with pytest.raises(ConfigError, match=f"'cuda:{missing}' is not on this machine"):
        load_compact(folder, device=f"cuda:{missing}")
    with pytest.raises(ConfigError, match="device must name a torch device"):  # before the missing folder
        load_compact(tmp_path / "missing", device="bogus")
    assert load_compact(folder, device=torch.device("cpu")).head.weight.device.type == "cpu"


# ====================================================================== compact_stats
@pytest.mark.parametrize("cls, options", [
    (VisionTransformer, dict(global_pool="")),
    (VisionTransformer, dict(global_pool="", class_token=False, reg_tokens=2)),
    (VisionTransformer, dict(global_pool="avg")),
    (VisionTransformerDistilled, dict()),
])
def test_compact_stats_counts_a_head_that_reads_every_token(cls, options):
    model = tiny_vit(cls, **options)
    small = compact_vit(model, random_masks(ViTStructure(model), 1))
    for m in (model, small):
        assert compact_stats(m)["flops"] == counted_macs(m, shape=(3, 16, 16))


# ====================================================================== gate masks
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), form=st.sampled_from(["bool", "float", "long", "list"]),
       qkv_unit=st.sampled_from(["dim", "head"]))
def test_set_hard_sets_exactly_the_masks_given(seed, form, qkv_unit):
    structure = ViTStructure(tiny_vit(), qkv_unit)
    masks = random_masks(structure, seed)
    convert = {"bool": lambda m: m, "float": lambda m: m.float(), "long": lambda m: m.long(),
               "list": lambda m: m.tolist()}[form]
    gates = Gates(structure)
    gates.set_hard({i: {g: convert(m) for g, m in per.items()} for i, per in masks.items()})
    got = gates.hard_masks()
    assert all(torch.equal(got[i][g], masks[i][g]) for i in masks for g in GATES)
    gates.remove()


@pytest.mark.parametrize("masks, match", [
    ({0: {"mlp_hid": torch.tensor([False])}}, r"layer 0, gate 'mlp_hid' has shape \(1,\); the gate has 32 entries"),
    ({1: {"attn_in": torch.ones(1, 16, dtype=torch.bool)}}, r"shape \(1, 16\); the gate has 16 entries"),
    ({0: {"mlp_hid": torch.ones(31, dtype=torch.bool)}}, r"shape \(31,\)"),
    ({0: {"mlp_hidden": torch.ones(32, dtype=torch.bool)}}, "unknown gate 'mlp_hidden'"),
    ({2: {"mlp_hid": torch.ones(32, dtype=torch.bool)}}, "layer 2, but the model has 2 layers"),
    ({0.5: {"mlp_hid": torch.ones(32, dtype=torch.bool)}}, "whole layer numbers"),
    ({0: {"mlp_hid": torch.full((32,), 2)}}, "boolean"),
    ({0: {"mlp_hid": torch.full((32,), 0.5)}}, "boolean"),
    ([torch.ones(32)], "must be a dict"),
])
def test_set_hard_refuses_masks_it_would_broadcast_scale_or_not_find(masks, match):
    gates = Gates(ViTStructure(tiny_vit()))
    with pytest.raises(ConfigError, match=match):
        gates.set_hard(masks)
    assert gates.all_one()  # nothing was set
    with pytest.raises(ConfigError, match="shape"):
        gates.set_values({0: {"mlp_hid": torch.tensor(0.3)}})  # a scalar would set the whole gate
    gates.set_values({"1": {"mlp_hid": torch.full((32,), 0.3)}})  # a layer key as in JSON
    assert torch.allclose(gates.gate(1, "mlp_hid"), torch.full((32,), 0.3))
    gates.remove()


# ====================================================================== unstructured masks
@pytest.mark.parametrize("masks, match", [
    ({"0.weight": torch.tensor([True, False, True, True])}, r"the mask of 0.weight has shape \(4,\)"),
    ({"0.weight": torch.ones(1, 4, dtype=torch.bool)}, r"shape \(1, 4\); the parameter has \(3, 4\)"),
    ({"0.weight": torch.full((3, 4), 0.5)}, "boolean"),
    ({"1.weight": torch.ones(3, 4, dtype=torch.bool)}, "masks name '1.weight'"),
    ({"0.weight": torch.ones(3, 4, dtype=torch.bool), "x": torch.ones(1)}, "masks name 'x'"),
])
def test_apply_masks_refuses_masks_it_would_broadcast_or_scale(masks, match):
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    before = net[0].weight.detach().clone()
    with pytest.raises(ConfigError, match=match):
        apply_masks(net, masks)
    assert torch.equal(net[0].weight, before)  # nothing was zeroed


def test_apply_masks_zeroes_exactly_the_masked_weights():
    net = nn.Sequential(nn.Linear(4, 3))
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]])
    before = net[0].weight.detach().clone()
    apply_masks(net, {"0.weight": mask})
    assert torch.equal(net[0].weight, before * mask)


# ====================================================================== ONNX export
def test_export_onnx_refuses_an_opset_it_would_not_write(tmp_path):
    model = compact_vit(tiny_vit(), random_masks(ViTStructure(tiny_vit()), 0))
    for bad in (True, "18", 0, 17.0):
        with pytest.raises(ConfigError, match="opset must be an integer >= 1"):
            export_onnx(model, tmp_path / "m.onnx", opset=bad)
    for bad in (1.5, "0", None):
        with pytest.raises(ConfigError, match="seed must be an integer"):
            export_onnx(model, tmp_path / "m.onnx", seed=bad)
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    for bad in (3, 99):  # the exporter would write its own opset instead
        with pytest.raises(ConfigError, match=f"could not write ONNX opset {bad} .* wrote opset"):
            export_onnx(model, tmp_path / "m.onnx", opset=bad)
    assert list(tmp_path.iterdir()) == []
    export_onnx(model, tmp_path / "m.onnx", opset=18)
    assert [o.version for o in onnx.load(tmp_path / "m.onnx").opset_import if o.domain == ""] == [18]


def test_numpy_integers_count_as_integers_and_come_back_as_python_ints():
    import numpy as np

    from sparselab.errors import check_positive_int

    value = check_positive_int("epochs", np.int64(3))
    assert value == 3 and type(value) is int
    for bad in (np.float64(3.0), np.bool_(True), True, 0, np.int32(-1)):
        with pytest.raises(ConfigError, match="epochs must be an integer"):
            check_positive_int("epochs", bad)
    model = tiny_vit()
    masks = random_masks(ViTStructure(model), 3)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(compact_vit(model, masks, pad_to=np.int64(8))(x), compact_vit(model, masks, pad_to=8)(x))
    assert compact_spec(model, masks, pad_to=np.int64(8)) == compact_spec(model, masks, pad_to=8)
