"""Weight patterns, History and latency helpers on inputs that once gave wrong numbers or tracebacks: tied
weights, hidden layers taken for the image layer, masks that are scores, NaN weights, merged runs, submodule
modes and devices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparselab as sl
from sparselab.cost import latency_against, latency_ms
from sparselab.errors import CheckpointError, ConfigError, DivergedError
from sparselab.history import History, select_run
from sparselab.patterns import (
    dead_units,
    exchange_numbers,
    input_pixel_map,
    kept_masks,
    kernel_positions,
    layer_keep_ratios,
    vit_magnitude_maps,
    vit_pattern_summary,
)
from sparselab.plots import plot_layer_keep_ratios
from sparselab.structure.unstructured import prunable_weights


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.fixture()
def vit() -> nn.Module:
    torch.manual_seed(0)
    return sl.models.create("vit_nano_patch4_28", num_classes=10)


# -------------------------------------------------------------------------------------------- tied weights
def test_a_tied_weight_is_one_row_in_every_layer_table():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    net[2].weight = net[0].weight
    names = list(prunable_weights(net))
    assert names == ["0.weight", "3.weight"]
    assert layer_keep_ratios(net, sparsity=0.5)["layer"].tolist() == names
    assert dead_units(net, sparsity=0.5)["layer"].tolist() == names

    conv = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    conv[1].weight = conv[0].weight
    assert kernel_positions(conv, sparsity=0.5)["layer"].unique().tolist() == ["0.weight"]


def test_a_linear_tied_to_an_embedding_is_counted_under_the_embedding_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.body = nn.Embedding(5, 4), nn.Linear(4, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight

    table = layer_keep_ratios(Tied(), sparsity=0.5)
    assert table["layer"].tolist() == ["body.weight", "emb.weight"]
    assert table["kind"].tolist() == ["linear", "linear"] and table["numel"].tolist() == [16, 20]


def test_vit_maps_and_summary_take_weights_shared_between_blocks(vit):
    vit.blocks[1].attn.qkv.weight = vit.blocks[0].attn.qkv.weight
    masks = kept_masks(vit, sparsity=0.8)
    assert "blocks.1.attn.qkv.weight" not in masks
    attn = vit_magnitude_maps(vit, masks)["attn"]
    by_layer = attn[attn["part"] != "proj"].pivot_table(index=["head", "part"], columns="layer", values="value")
    assert by_layer[0].tolist() == by_layer[1].tolist()  # one weight, one mask: the same kept fractions
    summary = vit_pattern_summary(vit, masks)
    assert 0 < summary["attn_kept"] < 1


# --------------------------------------------------------------------------------------------- pixel maps
def test_input_pixel_map_refuses_a_shape_that_only_a_hidden_layer_reads():
    net = tiny_mlp()  # 16 -> 6 -> 3: a 1×2×3 "image" has the 6 inputs of the hidden layer
    with pytest.raises(ConfigError, match=r"1×2×3.*first layer 1.weight reads 16 input features"):
        input_pixel_map(net, sparsity=0.5, image_shape=(1, 2, 3))
    assert input_pixel_map(net, sparsity=0.5, image_shape=(1, 4, 4)).shape == (4, 4)


@pytest.mark.parametrize("shape", [(1, 4.7, 4), "144", (1, True, 16)])
def test_input_pixel_map_refuses_image_shapes_that_are_not_three_integers(shape):
    with pytest.raises(ConfigError, match="image_shape must be"):
        input_pixel_map(tiny_mlp(), sparsity=0.5, image_shape=shape)


def test_input_pixel_map_refuses_a_fraction_flag_that_is_not_a_bool():
    with pytest.raises(ConfigError, match="fraction must be True or False"):
        input_pixel_map(tiny_mlp(), sparsity=0.5, image_shape=(1, 4, 4), fraction="no")


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4))
def test_input_pixel_map_of_numpy_integer_shapes_equals_int_shapes(c, h, w):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 3))
    shape = (np.int64(c), np.int32(h), np.int16(w))
    assert torch.equal(input_pixel_map(net, sparsity=0.5, image_shape=shape),
                       input_pixel_map(net, sparsity=0.5, image_shape=(c, h, w)))


# -------------------------------------------------------------------------------------------- mask inputs
def test_scores_or_nan_passed_as_masks_are_refused():
    net = tiny_mlp()
    scores = {k: w.detach().abs() for k, w in prunable_weights(net).items()}
    with pytest.raises(ConfigError, match="booleans or 0/1"):
        layer_keep_ratios(net, scores)
    nan = {k: torch.full_like(w, math.nan) for k, w in prunable_weights(net).items()}
    with pytest.raises(ConfigError, match="booleans or 0/1"):
        dead_units(net, nan)


def test_bad_sparsity_or_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="sparsity must be a number"):
        layer_keep_ratios(tiny_mlp(), sparsity="0.5")
    with pytest.raises(ConfigError, match="nn.Module, got NoneType"):
        layer_keep_ratios(None, sparsity=0.5)
    with pytest.raises(ConfigError, match="nn.Module, got str"):
        input_pixel_map("lenet", sparsity=0.5)


def test_nan_weights_are_refused_instead_of_counted_as_kept(vit):
    net = tiny_mlp()
    with torch.no_grad():
        net[1].weight[0, 0] = math.nan
    with pytest.raises(DivergedError, match="1.weight hold NaN"):
        layer_keep_ratios(net)
    with torch.no_grad():
        vit.blocks[2].mlp.fc1.weight[0, 0] = math.inf
    with pytest.raises(DivergedError, match="blocks.2.mlp.fc1.weight hold NaN or inf"):
        vit_magnitude_maps(vit)


# ----------------------------------------------------------------------------------------- ART exchange
def _art_history(run: str, entered: list[float]) -> History:
    h = History(meta={"run": run})
    for e, value in enumerate(entered):
        h.log_metrics({"art_epoch": e, "kept_entered": value}, step=10 * e, epoch=e)
    return h


def test_exchange_numbers_do_not_average_merged_runs():
    a, b = _art_history("a", [math.nan, 0.4, 0.1]), _art_history("b", [math.nan, 0.2, 0.3])
    merged = History.concat([a, b])
    with pytest.raises(ConfigError, match="merges 2 runs"):
        exchange_numbers(merged)
    assert exchange_numbers(History.concat([a])) == exchange_numbers(a) == {
        "entered after first ART epoch": 0.4, "entered after last ART epoch": 0.1, "ART epochs": 3.0}


# ------------------------------------------------------------------------------------- keep-ratio figure
def test_keep_ratio_tables_with_impossible_ratios_are_refused():
    table = layer_keep_ratios(tiny_mlp(), sparsity=0.5)
    with pytest.raises(ConfigError, match=r"outside \[0, 1\].*1.weight: inf"):
        plot_layer_keep_ratios(table.assign(keep_ratio=[math.inf, 0.5]))
    with pytest.raises(ConfigError, match="outside"):
        plot_layer_keep_ratios(compare={"x": table.assign(keep_ratio=["half", 0.5])})
    gap = plot_layer_keep_ratios(table.assign(keep_ratio=[math.nan, 0.5]))  # NaN: no bar, as before
    assert list(gap.data[0].y) == [None, 0.5]


def test_keep_ratio_figure_refuses_a_log_flag_or_label_of_another_type():
    table = layer_keep_ratios(tiny_mlp(), sparsity=0.5)
    with pytest.raises(ConfigError, match="log must be True or False"):
        plot_layer_keep_ratios(table, log="no")
    with pytest.raises(ConfigError, match="label must be a string"):
        plot_layer_keep_ratios(table, label=3)


# ---------------------------------------------------------------------------------------------- History
def test_last_and_series_of_a_merged_history_refuse_to_mix_runs():
    a, b = History(meta={"run": "a"}), History(meta={"run": "b"})
    a.log_metric("acc", 0.1, step=1, epoch=0, split="val")
    b.log_metric("acc", 0.9, step=1, epoch=0, split="val")
    merged = History.concat([a, b])
    with pytest.raises(ConfigError, match="merges 2 runs.*select_run"):
        merged.last("acc")
    with pytest.raises(ConfigError, match="merges 2 runs"):
        merged.series("acc")
    assert select_run(merged, "a")["metrics"].value.tolist() == [0.1]
    one = History.concat([b])
    assert one.last("acc") == b.last("acc") == 0.9
    assert one.series("acc").tolist() == b.series("acc").tolist() == [0.9]


@pytest.mark.parametrize("step", [1.7, "3", None, math.nan])
def test_a_step_that_is_not_a_whole_number_is_refused(step):
    h = History()
    with pytest.raises(ConfigError, match="step must be a whole number"):
        h.log_metric("loss", 0.5, step=step, epoch=0)
    with pytest.raises(ConfigError, match="step must be a whole number"):
        h.log_blocks("keep", {"blocks.0.attn": 0.5}, step=step, epoch=0)
    assert len(h) == 0


def test_whole_steps_of_other_types_are_stored_as_ints():
    h = History()
    h.log_metric("loss", np.float32(0.5), step=np.int64(3), epoch=2.0)
    h.log_metric("loss", torch.tensor(0.25), step=torch.tensor(4), epoch=0)
    assert h._rows["metrics"] == [(3, 2, "train", "loss", 0.5), (4, 0, "train", "loss", 0.25)]
    assert all(type(v) is int for row in h._rows["metrics"] for v in row[:2])


def test_values_that_are_not_numbers_are_refused_and_nothing_is_logged():
    h = History()
    with pytest.raises(ConfigError, match="metric 'acc' must be a number, got 'high'"):
        h.log_metrics({"loss": 0.5, "acc": "high"}, step=1, epoch=0)
    with pytest.raises(ConfigError, match="must be a number, got None"):
        h.log_blocks("keep", {"blocks.0.attn": 0.5, "blocks.0.mlp": None}, step=1, epoch=0)
    assert len(h) == 0
    h.log_metric("loss", math.nan, step=1, epoch=0)  # a measured NaN is kept
    assert math.isnan(h.last("loss", "train"))


def test_events_must_go_between_pruned_and_kept():
    h = History()
    with pytest.raises(ConfigError, match="old and new must be 0"):
        h.log_events(step=1, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[1], old=5, new=1)
    assert len(h) == 0


def test_concat_and_state_refuse_what_is_not_a_history():
    with pytest.raises(ConfigError, match=r"position\(s\) 1 \(str\)"):
        History.concat([History(), "runs/a/history.jsonl"])
    with pytest.raises(CheckpointError, match="needs 'meta' and 'rows'"):
        History.from_state_dict({"schema": History().state_dict()["schema"]})
    with pytest.raises(CheckpointError, match="not a sparselab History"):
        History.from_state_dict(["not", "a", "state"])


# ------------------------------------------------------------------------------------------------ latency
def _mixed_modes() -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    net.train()
    net[1].eval()  # a frozen norm inside a training model
    return net


def test_latency_ms_gives_every_submodule_its_mode_back():
    net = _mixed_modes()
    before = [m.training for m in net.modules()]
    latency_ms(net, (4,), batch_size=2, repeats=2, warmup=0)
    assert [m.training for m in net.modules()] == before


def test_latency_against_gives_every_submodule_its_mode_back():
    net, ref = _mixed_modes(), _mixed_modes()
    ref.eval()
    ref[2].train()
    before = [m.training for m in net.modules()], [m.training for m in ref.modules()]
    latency_against(net, ref, (4,), batch_size=2, repeats=2, warmup=0)
    assert ([m.training for m in net.modules()], [m.training for m in ref.modules()]) == before


def test_latency_ms_refuses_a_device_the_model_is_not_on():
    with pytest.raises(ConfigError, match="device must name a torch device"):
        latency_ms(nn.Linear(4, 4), (4,), repeats=1, device="gpu")
    with pytest.raises(ConfigError, match="parameters are on 'cpu'"):
        latency_ms(nn.Linear(4, 4), (4,), repeats=1, device="meta")
    with pytest.raises(ConfigError, match="nn.Module, got NoneType"):
        latency_ms(None, (4,))
    assert latency_ms(nn.ReLU(), (4,), repeats=1, device="cpu") > 0  # nothing to move: any device



def test_vit_summary_of_equal_kept_fractions_has_no_depth_rho_and_no_warning():
    import warnings

    import timm

    from sparselab.patterns import vit_pattern_summary

    model = timm.create_model("vit_nano_patch4_28", num_classes=10)
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in sl.structure.prunable_weights(model).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = vit_pattern_summary(model, masks)
    assert math.isnan(summary["depth_rho"]) and summary["attn_kept"] == summary["mlp_kept"] == 1.0
