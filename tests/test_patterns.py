"""Weight-pattern measurements (sparselab.patterns) and their figures (sparselab.plots.patterns) on hand-built
masks with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.patterns import (
    dead_units,
    infer_image_shape,
    input_pixel_map,
    kept_masks,
    kernel_positions,
    layer_keep_ratios,
    vit_blocks,
    vit_magnitude_maps,
)
from sparselab.plots import plot_layer_keep_ratios, plot_weight_patterns
from sparselab.structure.unstructured import apply_masks, magnitude_masks, num_pruned, prunable_weights


# ------------------------------------------------------------------------------------------------ fixtures
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                         nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def centre_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = {}
    for name, w in prunable_weights(model).items():
        m = torch.zeros_like(w, dtype=torch.bool)
        if w.dim() == 4 and w.shape[-2:] == (3, 3):
            m[:, :, 1, 1] = True
        else:
            m[:] = True
        masks[name] = m
    return masks


def tiny_mlp(image=(1, 4, 4)) -> nn.Module:
    torch.manual_seed(0)
    c, h, w = image
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return sl.models.create("vit_nano_patch4_28", num_classes=10)


# --------------------------------------------------------------------------------------------- kept_masks
def test_kept_masks_from_zeroed_weights_equal_the_masks_used():
    net = tiny_cnn()
    masks = magnitude_masks(net, 0.7)
    apply_masks(net, masks)
    got = kept_masks(net)
    assert list(got) == list(masks)
    for name in masks:
        assert got[name].dtype == torch.bool
        assert torch.equal(got[name], masks[name])


def test_kept_masks_sources_and_errors():
    net = tiny_cnn()
    by_sparsity = kept_masks(net, sparsity=0.5)
    ref = magnitude_masks(net, 0.5)
    assert all(torch.equal(by_sparsity[k], ref[k]) for k in ref)
    as_float = kept_masks(net, {k: v.float() for k, v in ref.items()})
    assert all(as_float[k].dtype == torch.bool and torch.equal(as_float[k], ref[k]) for k in ref)
    with pytest.raises(ConfigError, match="not both"):
        kept_masks(net, ref, sparsity=0.5)
    with pytest.raises(ConfigError, match="without a mask: 6.weight"):
        kept_masks(net, {k: v for k, v in ref.items() if k != "6.weight"})
    with pytest.raises(ConfigError, match="not prunable weights: 0.bias"):
        kept_masks(net, {**ref, "0.bias": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match=r"shape \(3, 2\)"):
        kept_masks(net, {**ref, "0.weight": torch.ones(3, 2, dtype=torch.bool)})


# ------------------------------------------------------------------------------------------ keep ratios
def test_layer_keep_ratios_match_masks():
    net = tiny_cnn()
    masks = magnitude_masks(net, 0.6, scope="layer")
    table = layer_keep_ratios(net, masks)
    assert table.columns.tolist() == ["layer", "kind", "shape", "numel", "kept", "keep_ratio"]
    assert table["layer"].tolist() == list(prunable_weights(net))
    assert table["kind"].tolist() == ["conv", "conv", "conv", "linear"]
    assert table["shape"].tolist() == [(3, 2, 3, 3), (4, 3, 3, 3), (4, 4, 1, 1), (5, 4)]
    assert table["kept"].tolist() == [int(m.sum()) for m in masks.values()]
    assert table["numel"].tolist() == [m.numel() for m in masks.values()]
    assert np.allclose(table["keep_ratio"], table["kept"] / table["numel"])
    assert table["kept"].sum() == sum(int(m.sum()) for m in masks.values())


_PROPERTY_NET = tiny_cnn()


@settings(max_examples=25, deadline=None)
@given(s=st.floats(min_value=0.0, max_value=0.999, allow_nan=False))
def test_global_keep_ratios_keep_exactly_n_minus_floor(s):
    table = layer_keep_ratios(_PROPERTY_NET, sparsity=s)
    n = int(table["numel"].sum())
    assert n == 198
    assert int(table["kept"].sum()) == n - math.floor(s * n + 1e-9) == n - num_pruned(n, s)
    assert int(round((table["keep_ratio"] * table["numel"]).sum())) == n - num_pruned(n, s)


# ------------------------------------------------------------------------------------- kernel positions
def test_kernel_positions_centre_only():
    net = tiny_cnn()
    table = kernel_positions(net, centre_masks(net))
    assert table.columns.tolist() == ["layer", "row", "col", "kept", "total", "kept_fraction"]
    assert list(dict.fromkeys(table["layer"])) == ["0.weight", "2.weight"]  # the 1x1 conv is left out
    assert len(table) == 18
    for _, row in table.iterrows():
        expected = 1.0 if (row["row"], row["col"]) == (1, 1) else 0.0
        assert row["kept_fraction"] == expected
    assert table.loc[table["layer"] == "2.weight", "total"].unique().tolist() == [12]
    assert table.loc[(table["layer"] == "2.weight") & (table["row"] == 1) & (table["col"] == 1), "kept"].item() == 12


def test_kernel_positions_partial_fraction():
    net = nn.Conv2d(2, 2, 3, bias=False)
    mask = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    mask[0, 0, 0, 2] = True  # 1 of 4 channel pairs at (0, 2)
    mask[:, :, 2, 0] = True  # all 4 at (2, 0)
    table = kernel_positions(net, {"weight": mask}).set_index(["row", "col"])["kept_fraction"]
    assert table[(0, 2)] == 0.25 and table[(2, 0)] == 1.0 and table.sum() == 1.25


# -------------------------------------------------------------------------------------------- dead units
def test_dead_units_linear_rows_and_columns():
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight.uniform_(0.5, 1.0)
        net[0].weight[[1, 4]] = 0.0  # two dead neurons
        net[0].weight[:, 3] = 0.0  # one unread input feature
        net[2].weight.fill_(1.0)
    table = dead_units(net).set_index("layer")
    assert table.loc["0.weight", ["units", "dead", "inputs", "dead_inputs"]].tolist() == [6, 2, 5, 1]
    assert table.loc["0.weight", "dead_fraction"] == pytest.approx(2 / 6)
    assert table.loc["0.weight", "dead_input_fraction"] == pytest.approx(1 / 5)
    assert table.loc["2.weight", ["dead", "dead_inputs"]].tolist() == [0, 0]


def test_dead_units_conv_filters_and_groups():
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=2))
    masks = {"0.weight": torch.ones(4, 4, 3, 3, dtype=torch.bool), "1.weight": torch.ones(4, 2, 3, 3,
                                                                                          dtype=torch.bool)}
    masks["0.weight"][2] = False  # filter 2 dead
    masks["0.weight"][:, 1] = False  # input channel 1 unread
    masks["1.weight"][:2, 0] = False  # group 0 (outputs 0, 1) never reads its first input: channel 0
    table = dead_units(net, masks).set_index("layer")
    assert table.loc["0.weight", ["units", "dead", "inputs", "dead_inputs"]].tolist() == [4, 1, 4, 1]
    assert table.loc["1.weight", ["units", "dead", "inputs", "dead_inputs"]].tolist() == [4, 0, 4, 1]


# ------------------------------------------------------------------------------------------- pixel map
def test_input_pixel_map_single_pixel():
    net = tiny_mlp()
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in prunable_weights(net).items()}
    masks["1.weight"] = torch.zeros(6, 16, dtype=torch.bool)
    masks["1.weight"][:, 2 * 4 + 3] = True  # pixel (2, 3) for every neuron
    pixel = input_pixel_map(net, masks, image_shape=(1, 4, 4))
    assert pixel.shape == (4, 4)
    assert pixel[2, 3].item() == 6
    assert torch.count_nonzero(pixel).item() == 1
    frac = input_pixel_map(net, masks, image_shape=(1, 4, 4), fraction=True)
    assert frac[2, 3].item() == 1.0 and frac.sum().item() == 1.0


def test_input_pixel_map_channels_and_errors():
    net = tiny_mlp((2, 3, 3))
    mask = torch.zeros(6, 18, dtype=torch.bool)
    mask[0, 0 * 9 + 1 * 3 + 2] = True  # channel 0, pixel (1, 2)
    mask[[1, 2], 1 * 9 + 1 * 3 + 2] = True  # channel 1, same pixel, two neurons
    masks = {"1.weight": mask, "3.weight": torch.ones(3, 6, dtype=torch.bool)}
    pixel = input_pixel_map(net, masks, image_shape=(2, 3, 3))
    assert pixel[1, 2].item() == 3 and pixel.sum().item() == 3
    assert input_pixel_map(net, masks, image_shape=(2, 3, 3), fraction=True)[1, 2].item() == pytest.approx(3 / 12)
    with pytest.raises(ConfigError, match="no Linear layer that reads a flattened 1×5×5"):
        input_pixel_map(net, masks, image_shape=(1, 5, 5))
    with pytest.raises(ConfigError, match="convolution"):
        input_pixel_map(tiny_cnn(), image_shape=(4, 1, 1))
    assert infer_image_shape(tiny_mlp((1, 4, 4))) == (1, 4, 4)
    assert infer_image_shape(tiny_mlp((3, 2, 2))) == (3, 2, 2)


def test_input_pixel_map_on_lenet():
    net = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
    pixel = input_pixel_map(net, sparsity=0.8)
    first = kept_masks(net, sparsity=0.8)["fc1.weight"]
    assert pixel.shape == (8, 8)
    assert pixel.sum().item() == first.sum().item()
    assert pixel[3, 5].item() == first[:, 3 * 8 + 5].sum().item()


# ------------------------------------------------------------------------------------------------- ViTs
def test_vit_maps_rows_and_direct_values(vit):
    maps = vit_magnitude_maps(vit)
    attn, mlp = maps["attn"], maps["mlp"]
    depth, heads, hidden = len(vit.blocks), vit.blocks[0].attn.num_heads, vit.blocks[0].mlp.fc1.out_features
    assert attn.columns.tolist() == ["layer", "head", "part", "value"]
    assert len(attn) == depth * heads * 4
    assert not attn.duplicated(["layer", "head", "part"]).any()
    assert set(attn["part"]) == {"q", "k", "v", "proj"}
    assert mlp.columns.tolist() == ["layer", "neuron", "value"] and len(mlp) == depth * hidden

    layer, head = 2, 1
    block = vit.blocks[layer]
    d = block.attn.head_dim
    dim = block.attn.qkv.in_features
    qkv, proj = block.attn.qkv.weight.detach().abs(), block.attn.proj.weight.detach().abs()
    expected = {"q": qkv[head * d:(head + 1) * d].mean(), "k": qkv[dim + head * d:dim + (head + 1) * d].mean(),
                "v": qkv[2 * dim + head * d:2 * dim + (head + 1) * d].mean(),
                "proj": proj[:, head * d:(head + 1) * d].mean()}
    got = attn[(attn["layer"] == layer) & (attn["head"] == head)].set_index("part")["value"]
    for part, value in expected.items():
        assert got[part] == pytest.approx(value.item(), rel=1e-6)
    neuron = 7
    l1 = block.mlp.fc1.weight[neuron].abs().sum() + block.mlp.fc2.weight[:, neuron].abs().sum()
    assert mlp[(mlp["layer"] == layer) & (mlp["neuron"] == neuron)]["value"].item() == pytest.approx(l1.item(),
                                                                                                      rel=1e-6)


def test_vit_maps_kept_fractions(vit):
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in prunable_weights(vit).items()}
    d = vit.blocks[0].attn.head_dim
    dim = vit.blocks[0].attn.qkv.in_features
    masks["blocks.0.attn.qkv.weight"][dim + 3 * d:dim + 4 * d] = False  # k of head 3 fully pruned
    masks["blocks.0.attn.proj.weight"][:, :d // 2] = False  # half of head 0's proj columns
    masks["blocks.1.mlp.fc1.weight"][5] = False  # fc1 row of neuron 5
    maps = vit_magnitude_maps(vit, masks)
    attn, mlp = maps["attn"].set_index(["layer", "head", "part"])["value"], maps["mlp"]
    assert attn[(0, 3, "k")] == 0.0 and attn[(0, 3, "q")] == 1.0 and attn[(0, 0, "proj")] == 0.5
    assert attn.drop([(0, 3, "k"), (0, 0, "proj")]).eq(1.0).all()
    fc1_in, fc2_out = vit.blocks[1].mlp.fc1.in_features, vit.blocks[1].mlp.fc2.out_features
    value = mlp[(mlp["layer"] == 1) & (mlp["neuron"] == 5)]["value"].item()
    assert value == pytest.approx(fc2_out / (fc1_in + fc2_out))
    with pytest.raises(ConfigError, match="VisionTransformer"):
        vit_magnitude_maps(tiny_cnn())
    assert vit_blocks(tiny_cnn()) == []


# ---------------------------------------------------------------------------------------------- figures
def test_plot_layer_keep_ratios_values_and_compare():
    net = tiny_cnn()
    table = layer_keep_ratios(net, sparsity=0.7)
    fig = plot_layer_keep_ratios(net, sparsity=0.7)
    assert [t.type for t in fig.data] == ["bar"]
    assert list(fig.data[0].y) == pytest.approx(table["keep_ratio"].tolist())
    assert list(fig.data[0].x) == ["0", "2", "3", "6"]
    assert "0.3" in fig.data[0].name
    assert fig.layout.template == pio.templates["plotly_white"] and "Keep ratio" in fig.layout.title.text

    other = layer_keep_ratios(net, magnitude_masks(net, 0.7, scope="layer")).iloc[1:]  # one layer missing
    fig = plot_layer_keep_ratios(compare={"global": table, "uniform": other}, log=True)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert fig.layout.barmode == "group" and fig.layout.yaxis.type == "log"
    assert fig.data[1].y[0] is None
    assert list(fig.data[1].y[1:]) == pytest.approx(other["keep_ratio"].tolist())
    assert "global vs uniform" in fig.layout.title.text
    both = plot_layer_keep_ratios(table, compare={"uniform": other}, label="global")
    assert [t.name.split(" (")[0] for t in both.data] == ["global", "uniform"]
    json.loads(fig.to_json())

    with pytest.raises(ConfigError, match="keep_ratio"):
        plot_layer_keep_ratios(table.drop(columns="keep_ratio"))
    with pytest.raises(ConfigError, match="needs a model"):
        plot_layer_keep_ratios()
    with pytest.raises(ConfigError, match="apply to a model"):
        plot_layer_keep_ratios(table, sparsity=0.5)


def test_plot_weight_patterns_cnn():
    net = tiny_cnn()
    masks = centre_masks(net)
    masks["2.weight"][1] = False  # one dead filter
    fig = plot_weight_patterns(net, masks)
    assert [t.type for t in fig.data] == ["heatmap", "bar", "bar"]
    positions = kernel_positions(net, masks)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (2, 9)
    assert z[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert z.ravel().tolist() == pytest.approx(positions["kept_fraction"].tolist())
    dead = dead_units(net, masks)
    assert list(fig.data[1].x) == pytest.approx(dead["dead_fraction"].tolist())
    assert list(fig.data[2].x) == pytest.approx(dead["dead_input_fraction"].tolist())
    assert fig.data[1].x[1] == pytest.approx(0.25)
    assert "kernel position" in fig.layout.annotations[0].text
    json.loads(fig.to_json())
    with pytest.raises(ConfigError, match="image_shape"):
        plot_weight_patterns(net, masks, image_shape=(1, 4, 4))


def test_plot_weight_patterns_mlp():
    net = tiny_mlp()
    masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in prunable_weights(net).items()}
    masks["1.weight"] = torch.zeros(6, 16, dtype=torch.bool)
    masks["1.weight"][:3, 2 * 4 + 3] = True
    fig = plot_weight_patterns(net, masks, image_shape=(1, 4, 4))
    assert [t.type for t in fig.data] == ["heatmap", "bar", "bar"]
    z = np.asarray(fig.data[0].z)
    assert z.shape == (4, 4)
    assert z[2, 3] == 0.5 and np.count_nonzero(z) == 1
    assert np.array_equal(z, input_pixel_map(net, masks, image_shape=(1, 4, 4), fraction=True).numpy())
    assert list(fig.data[1].x) == pytest.approx([0.5, 0.0])  # 3 of 6 neurons dead, none in the last layer
    assert "input pixel" in fig.layout.annotations[0].text
    json.loads(fig.to_json())


def test_plot_weight_patterns_vit(vit):
    fig = plot_weight_patterns(vit)
    assert [t.type for t in fig.data] == ["heatmap"] * 5
    assert [t.name for t in fig.data] == ["q", "k", "v", "proj", "MLP neurons"]
    attn = vit_magnitude_maps(vit)["attn"]
    depth, heads = len(vit.blocks), vit.blocks[0].attn.num_heads
    for trace in fig.data[:4]:
        z = np.asarray(trace.z)
        assert z.shape == (depth, heads)
        wide = attn[attn["part"] == trace.name].pivot(index="layer", columns="head", values="value")
        assert np.allclose(z, wide.to_numpy())
    mlp_z = np.asarray(fig.data[4].z, dtype=float)
    assert mlp_z.shape == (depth, vit.blocks[0].mlp.fc1.out_features)
    assert (np.diff(mlp_z, axis=1) <= 0).all()  # sorted, largest first
    mlp = vit_magnitude_maps(vit)["mlp"]
    assert mlp_z[1].tolist() == pytest.approx(sorted(mlp[mlp["layer"] == 1]["value"], reverse=True))
    assert "mean |w|" in fig.layout.annotations[0].text
    kept = plot_weight_patterns(vit, sparsity=0.9)
    assert "kept fraction" in kept.layout.annotations[0].text
    assert float(np.nanmax(np.asarray(kept.data[4].z, dtype=float))) <= 1.0
    json.loads(kept.to_json())


def test_plot_weight_patterns_rejects_other_models():
    net = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="supports timm ViTs"):
        plot_weight_patterns(net)
    with pytest.raises(ConfigError, match="nn.Module"):
        plot_weight_patterns(pd.DataFrame())


def test_vit_pattern_summary_matches_hand_built_masks():
    import sparselab as sl
    from sparselab.patterns import kept_masks, vit_pattern_summary

    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    masks = {k: torch.ones_like(v) for k, v in kept_masks(model, sparsity=0.0).items()}
    masks["blocks.3.mlp.fc1.weight"].zero_()
    masks["blocks.3.mlp.fc2.weight"].zero_()
    for i in range(4):  # residual channel 5 is read by no block
        masks[f"blocks.{i}.attn.qkv.weight"][:, 5] = False
        masks[f"blocks.{i}.mlp.fc1.weight"][:, 5] = False
    masks["blocks.0.attn.qkv.weight"][:16] = False  # head 0's q rows of block 0 (head dim 16)
    s = vit_pattern_summary(model, masks)
    d = model.embed_dim
    qkv_n, proj_n, fc_n = 3 * d * d, d * d, model.blocks[0].mlp.fc1.weight.numel()
    attn_expected = 1 - (4 * 3 * d + 16 * d - 16) / (4 * (qkv_n + proj_n))
    assert s["attn_kept"] == pytest.approx(attn_expected)
    assert s["mlp_kept"] == pytest.approx(1 - (2 * fc_n + 3 * model.blocks[0].mlp.fc1.out_features) / (8 * fc_n))
    assert s["dead_neurons"] == pytest.approx(1 / 4)
    assert s["unread_channels"] == pytest.approx(1 / d)
    assert s["depth_rho"] < 0  # the last block lost its MLP
    assert s["head_spread"] > 0 and list(s["per_block"].columns) == ["block", "attn", "mlp", "all"]
