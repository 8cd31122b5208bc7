"""What users look at, given awkward inputs: figures that must show the data they are given (non-finite values,
depth order, runs of a merged History) and explorers / attributions that refuse what they cannot show with a
ConfigError instead of a traceback or a stale figure."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.attribution import attribute, block_attributions, compare_attributions
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots import (
    plot_accuracy_ci,
    plot_attribution_comparison,
    plot_block_benefit,
    plot_block_criteria,
    plot_block_scores,
    plot_exchange,
    plot_gradient_profile,
    plot_keep_ratios,
    plot_paired_differences,
)
from sparselab.widgets import BudgetExplorer, SparsityExplorer, TraceScrubber

VIT_BLOCKS = [f"blocks.{i}.{k}" for i in range(4) for k in ("attn", "mlp")]
PROFILE = {"art_epoch": 0, "relative_index": [0.7, 1.0], "abs_w": [0.1, 0.5], "grad": [2.0, 0.1], "sparsity": 0.9}


# ---------------------------------------------------------------------------------------------- block figures
def test_block_scores_with_a_nan_first_block_keep_the_other_bars():
    fig = plot_block_scores({"a": {"blocks.0.attn": math.nan, "blocks.0.mlp": 2.0, "blocks.1.attn": 1.0}})
    assert list(fig.data[0].y) == [None, 1.0, 0.5]
    assert "attn 0 (a): nan" in fig.layout.title.text


def test_block_scores_axis_is_in_depth_order_over_all_series():
    fig = plot_block_scores({"late": {"blocks.1.attn": 1.0}, "all": {"blocks.0.attn": 1.0, "blocks.1.attn": 2.0}})
    assert list(fig.layout.xaxis.categoryarray) == ["attn 0", "attn 1"]


def test_block_criteria_panels_list_the_same_blocks_in_depth_order():
    h = History()
    h.log_blocks("crit_abs_w", {"blocks.1.attn": 1.0, "blocks.1.mlp": 2.0}, step=0, epoch=0)
    h.log_blocks("crit_taylor", {"blocks.0.attn": 1.0, "blocks.1.attn": 2.0, "blocks.1.mlp": 3.0}, step=0, epoch=0)
    fig = plot_block_criteria(h, metrics=["crit_abs_w", "crit_taylor"])
    assert [list(t.y) for t in fig.data] == [["attn 0", "attn 1", "mlp 1"]] * 2
    assert np.isnan(fig.data[0].z[0, 0]) and fig.data[0].z[1:, 0].tolist() == [0.5, 1.0]
    with pytest.raises(ConfigError, match="at least one"):
        plot_block_criteria(h, metrics=[])


def benefit_with_nonfinite() -> History:
    h = History()
    h.log_blocks("benefit_cls", {"blocks.0.attn": math.inf, "blocks.0.mlp": 0.3, "blocks.1.attn": math.nan,
                                 "blocks.1.mlp": -0.2}, step=0, epoch=0)
    h.log_blocks("benefit_cls", {"blocks.0.attn": 0.1, "blocks.0.mlp": 0.4, "blocks.1.attn": 0.5,
                                 "blocks.1.mlp": -0.2}, step=10, epoch=0)
    return h


def test_block_benefit_heatmap_normalises_by_finite_values_and_names_the_others():
    fig = plot_block_benefit(benefit_with_nonfinite(), variant="cls", normalize=True)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 0]) and np.isnan(z[2, 0])  # inf and NaN blank, not a colour
    np.testing.assert_allclose(z[[1, 3], 0], [1.0, -0.2 / 0.3])  # not 0 because an inf shared the step
    assert "attn 0 at step 0: inf" in fig.layout.title.text and "attn 1 at step 0: nan" in fig.layout.title.text


def test_block_benefit_profile_names_values_it_does_not_draw():
    fig = plot_block_benefit(benefit_with_nonfinite(), variant="cls", view="profile")
    assert "2 value(s) not finite" in fig.layout.title.text
    assert all(np.isfinite(np.asarray(t.y, dtype=float)).all() for t in fig.data)


def test_block_benefit_keeps_a_step_whose_values_are_all_nan():
    h = History()
    h.log_blocks("benefit_cls", {"blocks.0.attn": math.nan, "blocks.0.mlp": math.nan}, step=0, epoch=0)
    h.log_blocks("benefit_cls", {"blocks.0.attn": 0.2, "blocks.0.mlp": 0.1}, step=10, epoch=0)
    fig = plot_block_benefit(h, variant="cls")
    assert list(fig.data[0].x) == [0, 10]
    assert "not finite" in fig.layout.title.text


@pytest.mark.parametrize("moments", [5, ["a"], "10"])
def test_block_benefit_profile_refuses_moments_that_are_not_steps(moments):
    with pytest.raises(ConfigError, match="moments must be a list of steps"):
        plot_block_benefit(benefit_with_nonfinite(), variant="cls", view="profile", moments=moments)


def test_keep_ratios_name_a_nan_final_value():
    h = History()
    h.log_blocks("keep_applied", {"blocks.0.attn": 0.5, "blocks.0.mlp": 0.6}, step=1, epoch=0)
    h.log_blocks("keep_applied", {"blocks.0.attn": math.nan, "blocks.0.mlp": 0.4}, step=2, epoch=0)
    fig = plot_keep_ratios(h)
    assert "attn 0 at step 2: nan" in fig.layout.title.text


# ---------------------------------------------------------------------------------------------- ART figures
def test_gradient_profile_refuses_a_run_the_history_does_not_hold():
    h = History(meta={"run": "hs", "profiles": [PROFILE]})
    assert len(plot_gradient_profile(h, run="hs").data) == 3
    with pytest.raises(ConfigError, match="run='l1'"):
        plot_gradient_profile(h, run="l1")


def test_gradient_profile_finds_a_run_given_by_number():
    merged = History.concat([History(meta={"profiles": [PROFILE]}), History()], runs=[0, 1])
    assert plot_gradient_profile(merged, run=0).data[0].name == "ART epoch 0"


def art_history(run: str) -> History:
    h = History(meta={"run": run})
    for e in range(3):
        h.log_metrics({"art_epoch": e, "kept_entered": 0.1, "kept_left": 0.1, "overlap_final": 0.5}, step=e, epoch=e)
    return h


def test_exchange_refuses_runs_the_history_does_not_hold():
    with pytest.raises(ConfigError, match="unknown runs"):
        plot_exchange(art_history("hs"), runs=["l1"])
    merged = History.concat([art_history("hs"), art_history("l1")])
    with pytest.raises(ConfigError, match="at least one run"):
        plot_exchange(merged, runs=[])
    assert {t.name for t in plot_exchange(merged, runs="l1").data} == {"l1: entered", "l1: left", "l1: overlap"}


# ---------------------------------------------------------------------------------------------- result figures
def result_table() -> pd.DataFrame:
    return pd.DataFrame({"method": ["p3b", "p3b", "uniform", "uniform"], "prune_ratio": 0.5, "seed": [0, 1] * 2,
                         "acc": [0.9, 0.92, 0.88, 0.9]})


def test_accuracy_ci_refuses_unknown_methods_and_empty_tables():
    with pytest.raises(ConfigError, match="unifrom"):
        plot_accuracy_ci(result_table(), methods=["p3b", "unifrom"])
    with pytest.raises(ConfigError, match="no rows"):
        plot_accuracy_ci(result_table().iloc[:0])


def test_paired_differences_refuses_a_table_without_its_columns():
    with pytest.raises(ConfigError, match="no column"):
        plot_paired_differences(result_table())


# ---------------------------------------------------------------------------------------------- explorers
@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8)


def test_sparsity_explorer_checkpoint_named_model_leaves_the_own_weights(digits):
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100", image_size=8)
    other = sl.models.create("lenet_300_100", image_size=8)
    explorer = SparsityExplorer(model, digits, checkpoints={"model": other.state_dict()}, max_eval=20)
    explorer.slider.value = 0.9
    name = next(iter(explorer.masks))
    shown = dict(explorer.model.named_parameters())[name]
    torch.testing.assert_close(shown, dict(model.named_parameters())[name].detach() * explorer.masks[name])
    explorer.method.value = "model"
    torch.testing.assert_close(dict(explorer.model.named_parameters())[name],
                               dict(other.named_parameters())[name].detach() * explorer.masks[name])


@pytest.mark.parametrize("shape", [(1, 28, 28), (8, 8), (1, 8, 0)])
def test_sparsity_explorer_refuses_an_image_shape_the_first_layer_does_not_read(digits, shape):
    with pytest.raises(ConfigError, match="image_shape"):
        SparsityExplorer(sl.models.create("lenet_300_100", image_size=8), digits, image_shape=shape, max_eval=20)


def test_sparsity_explorer_refuses_data_that_is_not_image_label_pairs():
    with pytest.raises(ConfigError, match=r"\(image, label\) pairs"):
        SparsityExplorer(sl.models.create("lenet_300_100", image_size=8), [1, 2, 3], max_eval=2)


def keep_goal_history() -> History:
    h = History()
    h.log_blocks("keep_goal", {n: 0.5 for n in VIT_BLOCKS}, step=1, epoch=0)
    return h


def test_budget_explorer_out_of_reach_ratio_clears_the_previous_one():
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=1000)  # a large head: 0.95 is out of reach
    explorer = BudgetExplorer(keep_goal_history(), model, measure_latency=False)
    explorer.slider.value = 0.5
    assert explorer.params > 0 and all(v is not None for v in explorer.bars.data[0].y)
    explorer.slider.value = 0.95
    assert "out of reach" in explorer.info.value
    assert math.isnan(explorer.achieved_ratio) and explorer.compact is None and explorer.params == 0
    assert all(v is None for t in explorer.bars.data for v in t.y)
    assert torch.isnan(explorer.keep_goal).all()


def test_budget_explorer_refuses_importance_that_is_not_finite_or_lacks_blocks():
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    h = keep_goal_history()
    h.log_blocks("importance", {n: (math.nan if i == 0 else 1.0) for i, n in enumerate(VIT_BLOCKS)}, step=1,
                 epoch=0)
    with pytest.raises(ConfigError, match="not finite for blocks.0.attn"):
        BudgetExplorer(h, model, measure_latency=False)
    h = keep_goal_history()
    h.log_blocks("importance", {n: 1.0 for n in VIT_BLOCKS}, step=1, epoch=0)
    h.log_blocks("importance", {n: 2.0 for n in VIT_BLOCKS[:2]}, step=5, epoch=0)
    with pytest.raises(ConfigError, match="lacks the blocks blocks.1.attn"):
        BudgetExplorer(h, model, measure_latency=False)


def test_p3b_explorers_take_a_saved_history_and_refuse_other_objects(tmp_path):
    h = History()
    h.log_blocks("keep_applied", {"blocks.0.attn": 0.8, "blocks.0.mlp": 0.6}, step=4, epoch=0)
    path = h.save(tmp_path / "history.jsonl.gz")
    assert TraceScrubber(path).steps == [4]
    with pytest.raises(ConfigError, match="TraceScrubber takes a sparselab History"):
        TraceScrubber(42)
    with pytest.raises(ConfigError, match="BudgetExplorer takes a sparselab History"):
        BudgetExplorer({"keep_goal": 0.5}, sl.models.create("vit_nano_patch4_28", num_classes=10))


# ---------------------------------------------------------------------------------------------- attributions
def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("shape", [(3, 16), (1, 4, 4), (0, 1, 4, 4)])
def test_attribution_refuses_images_that_are_not_a_batch_of_images(shape):
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        attribute(linear_model(), torch.randn(*shape), method="saliency")
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        compare_attributions(linear_model(), linear_model(), torch.randn(*shape), method="saliency")


def test_attribution_refuses_bad_targets_and_steps():
    x = torch.randn(3, 1, 4, 4)
    with pytest.raises(ConfigError, match="one integer class per image"):
        attribute(linear_model(), x, target=torch.tensor([0, 1]), method="saliency")
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        attribute(linear_model(), x, target=torch.tensor([0, 1, 7]), method="saliency")
    with pytest.raises(ConfigError, match="n_steps"):
        attribute(linear_model(), x, n_steps=0)
    maps = attribute(linear_model(), x, target=2, method="saliency")  # one class for every image
    assert maps.shape == (3, 4, 4)


def test_attribution_leaves_the_model_in_its_mode_when_it_fails():
    model = linear_model().train()
    with pytest.raises(ConfigError, match="cannot read images"):
        attribute(model, torch.randn(2, 1, 5, 5), method="saliency")
    assert model.training


def test_block_attributions_refuse_images_of_another_size():
    model = sl.models.create("vit_nano_patch4_28", num_classes=10).train()
    with pytest.raises(ConfigError, match=r"cannot read images of shape \(2, 1, 8, 8\)"):
        block_attributions(model, torch.randn(2, 1, 8, 8), n_steps=2)
    assert model.training


def test_attribution_plot_refuses_images_that_are_not_those_of_the_maps():
    x = torch.randn(3, 1, 4, 4)
    result = compare_attributions(linear_model(), linear_model(), x, method="saliency")
    for images in (x[:2], x.flatten(1), torch.randn(3, 1, 5, 5)):
        with pytest.raises(ConfigError, match="images must be the 3 images"):
            plot_attribution_comparison(result, images)
    fig = plot_attribution_comparison(result, x[:, 0])  # (N, H, W) is one channel
    np.testing.assert_allclose(np.asarray(fig.data[0].z), x[0, 0].numpy(), rtol=1e-6)
