"""Compact ViTs: equal to the hard-masked model, parameter counts, statistics, save/load and errors."""
from __future__ import annotations

import functools
import json

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import sparselab  # noqa: F401  (registers the small ViTs with timm)
from sparselab.errors import CheckpointError, ConfigError
from sparselab.structure import GATES, Gates, ViTStructure
from sparselab.structure.compact import (
    CompactBlock,
    CompactMlp,
    ConstantBranch,
    ScatterChannels,
    SelectChannels,
    ZeroPaddedLayerNorm,
    compact_spec,
    compact_stats,
    compact_vit,
    load_compact,
    pad_masks,
    save_compact,
)
from sparselab.structure.compact import modules as compact_modules

PREFIX = {
    "cls": dict(),
    "avg": dict(class_token=False, global_pool="avg"),
    "reg": dict(reg_tokens=2),
    "reg_avg": dict(class_token=False, global_pool="avg", reg_tokens=1, no_embed_class=True),
}
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def tiny_vit(depth=2, heads=2, head_dim=8, mlp_ratio=2.0, prefix="cls", init_values=None, qk_norm=False, seed=0,
             cls=VisionTransformer, **extra) -> nn.Module:
    """A tiny ViT on 16x16 images with every weight perturbed (non-zero biases and norm affines)."""
    torch.manual_seed(seed)
    model = cls(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=heads * head_dim, depth=depth,
                num_heads=heads, mlp_ratio=mlp_ratio, init_values=init_values, qk_norm=qk_norm,
                **PREFIX[prefix], **extra)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def random_masks(structure: ViTStructure, seed: int, modes=None) -> dict:
    """Random boolean masks; ``modes[(layer, gate)]`` in {"rand", "all", "none"} (default "rand")."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for i in range(structure.depth):
        masks[i] = {}
        for gate, n in structure.gate_sizes(i).items():
            mode = (modes or {}).get((i, gate), "rand")
            if mode == "all":
                m = torch.ones(n, dtype=torch.bool)
            elif mode == "none":
                m = torch.zeros(n, dtype=torch.bool)
            else:
                m = torch.rand(n, generator=g) < 0.3 + 0.6 * torch.rand(1, generator=g)
            masks[i][gate] = m
    return masks


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_fused(model: nn.Module, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def has_hooks(model: nn.Module) -> bool:
    return any(getattr(m, name, None) for m in model.modules() for name in HOOK_DICTS)


# ====================================================================== equality with the hard-masked model
@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(1, 4),
    heads=st.integers(1, 4),
    head_dim=st.integers(2, 12),
    mlp_ratio=st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0]),
    prefix=st.sampled_from(sorted(PREFIX)),
    init_values=st.sampled_from([None, 0.1]),
    qk_norm=st.booleans(),
    biases=st.sampled_from([(True, True), (True, True), (False, True), (False, False)]),
    seed=st.integers(0, 2**16),
    pad_to=st.sampled_from([1, 1, 4, 8]),
    qkv_unit=st.sampled_from(["dim", "head"]),
    data=st.data(),
)
def test_compact_equals_hard_masked_model(depth, heads, head_dim, mlp_ratio, prefix, init_values, qk_norm, biases,
                                          seed, pad_to, qkv_unit, data):
    head_dim = max(head_dim, -(-8 // heads))  # embed dim 8..48
    model = tiny_vit(depth, heads, head_dim, mlp_ratio, prefix, init_values, qk_norm, seed,
                     qkv_bias=biases[0], proj_bias=biases[1])
    structure = ViTStructure(model, qkv_unit)
    modes = {(i, g): data.draw(st.sampled_from(["rand", "rand", "rand", "rand", "all", "none"]), label=f"{i}.{g}")
             for i in range(depth) for g in GATES}
    masks = random_masks(structure, seed, modes)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    dense = model(x)

    gates = Gates(structure)
    gates.set_hard(masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masked = model(x)
    small = compact_vit(model, masks, pad_to=pad_to, qkv_unit=qkv_unit)

    close(small(x), masked)
    set_fused(small, False)  # the explicit softmax(q k^T * scale) path
    close(small(x), masked)
    set_fused(model, False)
    close(model(x), masked)
    set_fused(model, True)

    if pad_to == 1:
        assert n_params(small) == structure.total_params(masks)  # empty gates included: constant branches
    else:  # padded widths: multiples of pad_to (or the full width) wherever the branch is live
        padded, _ = pad_masks(structure, masks, pad_to)
        assert n_params(small) == structure.total_params(padded) >= structure.total_params(masks)
        for i, blk in enumerate(small.blocks):
            for lin, full_in, full_out in ((getattr(blk.mlp, "fc1", None), structure.embed_dim, structure.hidden[i]),
                                           (getattr(blk.attn, "proj", None), None, structure.embed_dim)):
                if lin is not None:
                    assert lin.out_features % pad_to == 0 or lin.out_features == full_out
                    if full_in is not None:
                        assert lin.in_features % pad_to == 0 or lin.in_features == full_in
    for i, blk in enumerate(small.blocks):  # whole heads go: the compact attention has fewer, full-width heads
        if qkv_unit == "head" and hasattr(blk.attn, "num_heads"):
            assert blk.attn.num_heads == int(masks[i]["attn_qkv"].sum()) and blk.attn.head_dim == head_dim
    assert not has_hooks(small)
    own = {p.data_ptr() for p in model.parameters()}
    assert not own & {p.data_ptr() for p in small.parameters()}

    # the original model is untouched and its gates still work
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    close(model(x), masked)
    gates.set_hard(structure.full_masks())
    close(model(x), dense)
    gates.remove()


def test_all_kept_equals_dense_model_and_stats():
    for qk_norm in (False, True):
        model = tiny_vit(depth=3, heads=3, head_dim=6, prefix="reg", init_values=0.1, qk_norm=qk_norm)
        x = torch.randn(3, 3, 16, 16)
        small = compact_vit(model, ViTStructure(model).full_masks())
        close(small(x), model(x))
        set_fused(small, False)
        close(small(x), model(x))
        assert compact_stats(small) == compact_stats(model)
        assert compact_vit(model)(x).shape == (3, 5)  # no masks: all kept


def test_stats_count_the_removed_hidden_neurons():
    model = tiny_vit(depth=2, heads=2, head_dim=8, mlp_ratio=4.0)
    s = ViTStructure(model)
    masks = s.full_masks()
    hid, dim = s.hidden[1], s.embed_dim
    masks[1]["mlp_hid"] = torch.arange(hid) < hid // 2
    dense, small = compact_stats(model), compact_stats(compact_vit(model, masks))
    tokens = 16 + 1
    assert dense["tokens"] == small["tokens"] == tokens
    assert dense["flops"] - small["flops"] == tokens * 2 * dim * (hid - hid // 2)
    assert dense["params"] - small["params"] == (hid - hid // 2) * (2 * dim + 1)
    assert small["params"] == s.total_params(masks)
    # analytic dense count: patch conv, per-token Linears, attention matmuls, head
    per_layer = tokens * (dim * 3 * dim + dim * dim + 2 * dim * hid) + 2 * tokens * tokens * dim
    assert dense["flops"] == dim * 3 * 16 * 16 + 2 * per_layer + dim * 5


def test_degenerate_branches_are_constants():
    model = tiny_vit(depth=3, heads=2, head_dim=4, init_values=0.1, qk_norm=True)
    s = ViTStructure(model)
    masks = random_masks(s, 3, {(0, "attn_in"): "none", (0, "mlp_hid"): "none", (1, "attn_qkv"): "none",
                                (1, "mlp_in"): "none", (2, "attn_out"): "none", (2, "mlp_out"): "none"})
    small = compact_vit(model, masks)
    for blk in small.blocks:
        assert isinstance(blk.attn, ConstantBranch) and isinstance(blk.mlp, ConstantBranch)
        assert isinstance(blk.norm1, nn.Identity) and isinstance(blk.ls2, nn.Identity)
    assert small.blocks[2].attn.value.numel() == 0
    x = torch.randn(2, 3, 16, 16)
    Gates(s).set_hard(masks)
    close(small(x), model(x))
    small.train()
    small(x).sum().backward()  # constants are trainable biases
    assert small.blocks[0].attn.value.grad is not None


def test_compaction_keeps_modes_and_frozen_flags():
    model = tiny_vit()
    model.train()
    model.blocks[0].mlp.fc1.weight.requires_grad_(False)
    small = compact_vit(model, random_masks(ViTStructure(model), 0))
    assert small.training and all(m.training for m in small.modules())
    assert not small.blocks[0].mlp.fc1.weight.requires_grad and small.blocks[0].mlp.fc2.weight.requires_grad


def test_zero_padded_layer_norm_matches_layer_norm_on_padded_input():
    torch.manual_seed(0)
    ln = nn.LayerNorm(7, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    kept = torch.tensor([0, 2, 3, 6])
    x = torch.randn(5, 4)
    padded = torch.zeros(5, 7)
    padded[:, kept] = x
    zp = ZeroPaddedLayerNorm(4, 7, ln.weight[kept], ln.bias[kept], eps=1e-6)
    close(zp(x), ln(padded)[:, kept])
    assert sum(p.numel() for p in zp.parameters()) == 8


def test_vit_nano_with_random_masks():
    model = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = ViTStructure(model)
    masks = random_masks(s, 7)
    x = torch.randn(2, 1, 28, 28)
    small = compact_vit(model, masks)
    Gates(s).set_hard(masks)
    close(small(x), model(x))
    assert n_params(small) == s.total_params(masks) < n_params(model)


@pytest.mark.parametrize("init_values", [None, 0.1])
def test_partial_branch_outputs_are_added_to_their_channels_without_a_scatter(init_values, monkeypatch):
    model = tiny_vit(depth=2, init_values=init_values, drop_path_rate=0.0)
    s = ViTStructure(model)
    masks = s.full_masks()
    for i in range(2):
        masks[i]["attn_out"] = torch.arange(16) % 3 != 0
        masks[i]["mlp_out"] = torch.arange(16) < 11
    small = compact_vit(model, masks)
    assert all(type(b) is CompactBlock for b in small.blocks)
    scatters, scatter = [], ScatterChannels.forward
    monkeypatch.setattr(ScatterChannels, "forward", lambda self, x: scatters.append(1) or scatter(self, x))
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    out = small(x)
    Gates(s).set_hard(masks)
    close(out, model(x))
    # no LayerScale: each partial branch output goes into the residual stream by one index_add, no scatter;
    # a LayerScale acts on all channels after the scatter, so that path stays
    assert len(scatters) == (0 if init_values is None else 4)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_mlp_gelu_runs_in_place_only_where_nothing_else_sees_the_pre_activation(approximate, monkeypatch):
    model = tiny_vit(depth=2, act_layer=functools.partial(nn.GELU, approximate=approximate)).eval()
    s = ViTStructure(model)
    masks = s.full_masks()
    masks[0]["mlp_hid"] = torch.arange(32) % 3 != 1
    masks[1]["mlp_in"] = torch.arange(16) < 12
    small = compact_vit(model, masks)
    assert all(type(b.mlp) is CompactMlp for b in small.blocks)
    gelu_calls, gelu = [], nn.GELU.forward
    monkeypatch.setattr(nn.GELU, "forward", lambda self, x: gelu_calls.append(1) or gelu(self, x))
    x = torch.randn(3, 3, 16, 16)
    Gates(s).set_hard(masks)
    with torch.no_grad():
        reference = model(x)
        gelu_calls.clear()
        close(small(x), reference)
    assert len(gelu_calls) == 2  # small hidden activations (here 17 tokens) keep the out-of-place GELU
    gelu_calls.clear()
    monkeypatch.setattr(compact_modules, "INPLACE_MIN_BYTES", 0)

    with torch.no_grad():  # nothing records or sees fc1's output: the activation overwrites it
        close(small(x), reference)
    with torch.inference_mode():
        close(small(x), reference)
    assert gelu_calls == []

    out = small(x)  # the parameters need gradients: GELU must keep its input for the backward pass
    assert len(gelu_calls) == 2
    close(out, reference)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in small.blocks[0].mlp.parameters())

    seen = []  # a hook holding fc1's output must find it unchanged after the forward pass
    handle = small.blocks[0].mlp.fc1.register_forward_hook(lambda m, args, o: seen.append((m, args[0], o)))
    with torch.no_grad():
        close(small(x), reference)
    handle.remove()
    fc1, fc1_in, fc1_out = seen[0]
    with torch.no_grad():
        torch.testing.assert_close(fc1_out, fc1(fc1_in), rtol=0, atol=0)
    gelu_calls.clear()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, args, o: None)
    with torch.no_grad():
        close(small(x), reference)
    handle.remove()
    assert len(gelu_calls) == 2  # a global hook may hold any module's output: no overwriting


def test_distilled_model_prefix_tokens():
    model = tiny_vit(depth=2, cls=VisionTransformerDistilled, init_values=0.1)
    assert model.num_prefix_tokens == 2
    s = ViTStructure(model)
    masks = random_masks(s, 1)
    x = torch.randn(2, 3, 16, 16)
    small = compact_vit(model, masks)
    Gates(s).set_hard(masks)
    close(small(x), model(x))
    assert n_params(small) == s.total_params(masks)
    assert compact_spec(model, masks)["architecture"] == "VisionTransformerDistilled"


# ====================================================================== save / load
@pytest.mark.parametrize("kind, qkv_unit", [("plain", "dim"), ("distilled", "dim"), ("plain", "head")])
def test_save_load_round_trip(tmp_path, kind, qkv_unit):
    if kind == "plain":
        model = tiny_vit(depth=3, heads=3, head_dim=6, prefix="reg_avg", init_values=0.1, qk_norm=True,
                         act_layer="gelu_tanh")
    else:
        model = tiny_vit(depth=2, cls=VisionTransformerDistilled)
    s = ViTStructure(model, qkv_unit)
    masks = random_masks(s, 5, {(1, "mlp_hid"): "none", (0, "attn_in"): "none", (2, "attn_qkv"): "rand"})
    small = compact_vit(model, masks, pad_to=4, qkv_unit=qkv_unit)
    spec = compact_spec(model, masks, pad_to=4, qkv_unit=qkv_unit)
    assert json.loads(json.dumps(spec)) == spec and spec["qkv_unit"] == qkv_unit
    assert spec["layers"][1]["kept"]["mlp_hid"] == 0
    padded, _ = pad_masks(s, masks, 4)
    assert spec["layers"][0]["indices"]["attn_qkv"] == torch.nonzero(padded[0]["attn_qkv"]).flatten().tolist()
    folder = save_compact(small, spec, tmp_path / "out" / "compact")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "spec.json"]
    loaded = load_compact(folder)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), small(x))
    assert type(loaded) is type(model) and n_params(loaded) == n_params(small)
    save_compact(loaded, spec, folder)  # overwriting works
    assert torch.equal(load_compact(folder)(x), small(x))


def test_save_rejects_a_spec_of_another_model(tmp_path):
    model = tiny_vit()
    s = ViTStructure(model)
    small = compact_vit(model, random_masks(s, 0))
    with pytest.raises(ConfigError, match="does not match the compact spec"):
        save_compact(small, compact_spec(model, random_masks(s, 1)), tmp_path)
    with pytest.raises(ConfigError, match="format"):
        save_compact(small, {"format": "something else"}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_compact(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="is empty"):
        load_compact(tmp_path)
    model = tiny_vit()
    s = ViTStructure(model)
    masks_a, masks_b = random_masks(s, 0), random_masks(s, 1)
    a = save_compact(compact_vit(model, masks_a), compact_spec(model, masks_a), tmp_path / "a")
    b = save_compact(compact_vit(model, masks_b), compact_spec(model, masks_b), tmp_path / "b")
    (b / "spec.json").write_text((a / "spec.json").read_text())
    with pytest.raises(CheckpointError, match="does not match"):
        load_compact(b)
    (b / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_compact(b)
    (a / "spec.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_compact(a)
    (a / "spec.json").write_text(json.dumps({"format": "sparselab-compact-vit", "version": 1}))
    with pytest.raises(CheckpointError, match="malformed"):
        load_compact(a)


# ====================================================================== bad inputs
def test_bad_masks_name_layer_and_gate():
    model = tiny_vit(depth=2, heads=2, head_dim=8, mlp_ratio=2.0)
    with pytest.raises(ConfigError, match=r"layer 1, gate 'mlp_hid'.*32 entries"):
        compact_vit(model, {1: {"mlp_hid": torch.ones(31, dtype=torch.bool)}})
    with pytest.raises(ConfigError, match=r"layer 0.*unknown gate 'mlp_hidden'"):
        compact_vit(model, {0: {"mlp_hidden": torch.ones(32, dtype=torch.bool)}})
    with pytest.raises(ConfigError, match="layer 5.*2 layers"):
        compact_vit(model, {5: {"mlp_hid": torch.ones(32, dtype=torch.bool)}})
    with pytest.raises(ConfigError, match=r"layer 0, gate 'attn_in'.*boolean"):
        compact_vit(model, {0: {"attn_in": torch.full((16,), 0.5)}})
    with pytest.raises(ConfigError, match="layer 0, gate 'attn_qkv'"):
        compact_vit(model, {0: {"attn_qkv": torch.ones(2, 8, dtype=torch.bool)}})
    # 0/1 values are accepted as masks
    x = torch.randn(1, 3, 16, 16)
    close(compact_vit(model, {0: {"attn_in": torch.ones(16)}})(x), model(x))


def test_unsupported_models_are_rejected():
    with pytest.raises(ConfigError):
        compact_vit(nn.Linear(3, 3))
    model = tiny_vit()
    model.blocks[0].mlp.act = nn.Hardshrink()
    compact_vit(model)  # compaction itself copies any activation
    with pytest.raises(ConfigError, match="activation"):
        compact_spec(model)


@pytest.mark.parametrize("act", ["silu", "hard_mish", "relu"])
def test_a_compact_spec_names_the_activation_timm_builds(act):
    from timm.layers import get_act_layer

    from sparselab.structure.compact.spec import _act_name

    layer = get_act_layer(act)
    name = _act_name(layer())
    assert name is not None and get_act_layer(name) is layer


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=3), dim=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_channel_select_and_scatter_equal_index_select_and_index_copy(shape, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    index = torch.nonzero(torch.rand(dim, generator=gen) < 0.5).flatten()
    x = torch.randn(*shape, dim, generator=gen)
    assert torch.equal(SelectChannels(index)(x), x.index_select(-1, index))
    y = torch.randn(*shape, index.numel(), generator=gen)
    expected = torch.zeros(*shape, dim).index_copy_(len(shape), index, y)
    assert torch.equal(ScatterChannels(index, dim)(y), expected)
