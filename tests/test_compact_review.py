"""Compact ViTs at their edges: frozen and partly-evaluating models, masks given to pad_masks directly, cost counts
of attention-pooled models, latency of non-float32 models and the checks of the ONNX export."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import counted_macs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparselab  # noqa: F401  (registers the small ViTs with timm)
from sparselab.cost import latency_against, latency_ms
from sparselab.errors import ConfigError
from sparselab.structure import Gates, ViTStructure
from sparselab.structure.compact import ConstantBranch, compact_stats, compact_vit, export_onnx, pad_masks


def small_vit(seed: int = 0, **options) -> nn.Module:
    """A 2-layer ViT-Tiny on 32x32 images with every weight perturbed."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10,
                              **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def random_masks(structure: ViTStructure, seed: int, empty=()) -> dict:
    g = torch.Generator().manual_seed(seed)
    masks = {i: {gate: torch.rand(n, generator=g) < 0.5 for gate, n in structure.gate_sizes(i).items()}
             for i in range(structure.depth)}
    for layer, gate in empty:
        masks[layer][gate] = torch.zeros_like(masks[layer][gate])
    return masks


def hard_masked(model: nn.Module, masks: dict) -> nn.Module:
    Gates(ViTStructure(model)).set_hard(masks)
    return model


# ====================================================================== requires_grad and modes
@pytest.mark.parametrize("empty", [(0, "attn_in"), (0, "attn_qkv"), (1, "mlp_in"), (1, "mlp_hid")])
def test_a_frozen_model_has_frozen_constant_branches(empty):
    model = small_vit(init_values=0.1)
    masks = random_masks(ViTStructure(model), 0, [empty])
    model.requires_grad_(False)
    small = compact_vit(model, masks)
    assert any(isinstance(m, ConstantBranch) for m in small.modules())
    assert not any(p.requires_grad for p in small.parameters())
    model.requires_grad_(True)  # a trainable model keeps trainable constants
    assert all(p.requires_grad for p in compact_vit(model, masks).parameters())


def test_dropouts_in_eval_mode_inside_a_training_model_stay_off():
    model = small_vit(proj_drop_rate=0.5, drop_rate=0.5, drop_path_rate=0.5).train()
    for m in model.modules():  # dropout switched off by hand: training mode computes deterministically
        if isinstance(m, nn.Dropout) or type(m).__name__ == "DropPath":
            m.eval()
    masks = random_masks(ViTStructure(model), 1)
    small = compact_vit(model, masks)
    assert small.training and small.blocks[0].training
    assert not any(m.training for m in small.modules() if isinstance(m, nn.Dropout))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(small(x), hard_masked(model, masks)(x), rtol=1e-5, atol=1e-5)


# ====================================================================== pad_masks and mask keys
def test_pad_masks_checks_its_masks_as_compact_vit_does():
    s = ViTStructure(small_vit())
    with pytest.raises(ConfigError, match=r"layer 0, gate 'mlp_hid'.*768 entries"):
        pad_masks(s, {0: {"mlp_hid": torch.ones(700, dtype=torch.bool)}}, 8)
    with pytest.raises(ConfigError, match="unknown gate 'mlp_hidden'"):
        pad_masks(s, {0: {"mlp_hidden": torch.ones(768, dtype=torch.bool)}}, 8)
    with pytest.raises(ConfigError, match="layer 2, but the model has 2 layers"):
        pad_masks(s, {2: {"mlp_hid": torch.ones(768, dtype=torch.bool)}}, 8)
    with pytest.raises(ConfigError, match="boolean"):
        pad_masks(s, {0: {"mlp_hid": torch.full((768,), 0.5)}}, 8)


@settings(max_examples=15, deadline=None)
@given(kept=st.integers(1, 767), multiple=st.sampled_from([1, 8, 16, 1000]),
       form=st.sampled_from(["str_key", "list", "float", "long"]))
def test_pad_masks_reads_every_accepted_form_of_a_mask_alike(kept, multiple, form):
    s = ViTStructure(small_vit())
    mask = torch.arange(768) < kept
    reference = pad_masks(s, {0: {"mlp_hid": mask}}, multiple)
    key, value = 0, mask
    if form == "str_key":  # as in JSON
        key = "0"
    elif form == "list":
        value = mask.tolist()
    else:
        value = mask.to(torch.float32 if form == "float" else torch.long)
    padded, added = pad_masks(s, {key: {"mlp_hid": value}}, multiple)
    for got, want in ((padded, reference[0]), (added, reference[1])):
        assert all(torch.equal(got[i][g], want[i][g]) and got[i][g].dtype == torch.bool
                   for i in want for g in want[i])
    assert int(padded[0]["mlp_hid"].sum()) == min(-(-kept // multiple) * multiple, 768)


@pytest.mark.parametrize("key", [0.5, 1.9, 1.0, True])
def test_a_layer_key_that_is_no_layer_number_is_refused(key):
    model = small_vit()
    with pytest.raises(ConfigError, match="whole layer numbers"):
        compact_vit(model, {key: {"mlp_hid": torch.arange(768) < 3}})
    compact_vit(model, {1: {"mlp_hid": torch.arange(768) < 3}})  # an int is a layer, as is "1" (JSON)


# ====================================================================== compact_stats
@settings(max_examples=12, deadline=None)
@given(options=st.sampled_from([dict(), dict(reg_tokens=2), dict(class_token=False, global_pool="avg"),
                                dict(global_pool="map"), dict(global_pool="map", class_token=False),
                                dict(global_pool="map", pool_include_prefix=True, reg_tokens=1)]),
       qkv_unit=st.sampled_from(["dim", "head"]), seed=st.integers(0, 100))
def test_compact_stats_counts_what_a_forward_pass_computes(options, qkv_unit, seed):
    model = small_vit(**options)
    small = compact_vit(model, random_masks(ViTStructure(model, qkv_unit), seed), qkv_unit=qkv_unit)
    for m in (model, small):
        assert compact_stats(m)["flops"] == counted_macs(m)


# ====================================================================== latency
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_latency_of_a_model_of_another_floating_point_type(dtype):
    model = small_vit().to(dtype)
    small = compact_vit(model, random_masks(ViTStructure(model), 0))
    assert latency_ms(small, (3, 32, 32), repeats=2, warmup=0) > 0
    assert latency_against(small, model, (3, 32, 32), repeats=2, warmup=0)["speedup"] > 0
    with pytest.raises(ConfigError, match="convert them to one type"):
        latency_against(small, small_vit(), (3, 32, 32), repeats=2)


@pytest.mark.parametrize("shape, match", [
    (32, "input_shape must be a sequence of positive integers"),
    ((3, 32.0, 32), "input_shape must be a sequence of positive integers"),
    ((3, 0, 32), "input_shape must be a sequence of positive integers"),
    ((3, 16, 16), r"cannot take a random batch of shape \(1, 3, 16, 16\).*Input height \(16\)"),
])
def test_latency_of_inputs_the_model_cannot_take(shape, match):
    model = small_vit().train()
    with pytest.raises(ConfigError, match=match):
        latency_ms(model, shape, repeats=2)
    with pytest.raises(ConfigError, match=match):
        latency_against(model, model, shape, repeats=2)
    assert model.training  # the mode is given back after a failure too


# ====================================================================== ONNX export
def test_onnx_export_checks_its_arguments(tmp_path):
    model = compact_vit(small_vit(), random_masks(ViTStructure(small_vit()), 0))
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="check_batch must be an integer >= 1"):
            export_onnx(model, tmp_path / "m.onnx", check_batch=bad)
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    for bad in (32, (3, 32), (3, 32.0, 32), (3, True, 32)):
        with pytest.raises(ConfigError, match=r"input_shape must be \(channels, height, width\)"):
            export_onnx(model, tmp_path / "m.onnx", input_shape=bad)
    with pytest.raises(ConfigError, match=r"cannot take a random batch of shape \(4, 3, 16, 16\)"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match="is a folder"):
        export_onnx(model, tmp_path)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(ConfigError, match=f"float32 model.*{dtype}"):
            export_onnx(compact_vit(small_vit().to(dtype)), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_onnx_export_of_a_gpu_model_leaves_it_on_the_gpu(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = compact_vit(small_vit(), random_masks(ViTStructure(small_vit()), 0)).cuda().train()
    assert export_onnx(model, tmp_path / "m.onnx")["max_abs_diff"] <= 1e-4
    assert all(p.is_cuda for p in model.parameters()) and model.training
