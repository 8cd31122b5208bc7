"""What users look at, given awkward inputs (continued): hovers and colour bars that state the logged numbers,
non-finite values named instead of dropped in silence, runs of merged Histories found, and explorers / plots that
refuse malformed arguments with a ConfigError naming them instead of a traceback."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots import (
    plot_accuracy_ci,
    plot_art_keep_ratios,
    plot_block_benefit,
    plot_block_criteria,
    plot_block_scores,
    plot_gradient_profile,
    plot_keep_ratios,
)
from sparselab.widgets import BudgetExplorer, SparsityExplorer

VIT_BLOCKS = [f"blocks.{i}.{k}" for i in range(4) for k in ("attn", "mlp")]
PROFILE = {"art_epoch": 0, "relative_index": [0.7, 1.0], "abs_w": [0.1, 0.5], "grad": [2.0, 0.1], "sparsity": 0.9,
           "regularizer": "l1"}


# ---------------------------------------------------------------------------------------------- P3B figures
def benefit_history() -> History:
    h = History()
    for step in (0, 10):
        h.log_blocks("benefit_cls", {"blocks.0.attn": 0.2, "blocks.0.mlp": 0.4, "blocks.1.attn": -0.1}, step=step,
                     epoch=0)
    return h


def test_normalised_benefit_heatmap_hover_gives_the_logged_value():
    trace = plot_block_benefit(benefit_history(), variant="cls", normalize=True).data[0]
    assert trace.z[1, 0] == pytest.approx(1.0)  # the colour is normalised ...
    assert list(trace.customdata[1, 0]) == ["blocks.0.mlp", pytest.approx(0.4)]  # ... the hover is not
    assert "%{customdata[1]:.4g}" in trace.hovertemplate and "normalised %{z" in trace.hovertemplate
    raw = plot_block_benefit(benefit_history(), variant="cls").data[0]
    assert raw.customdata[1, 0] == "blocks.0.mlp" and "%{z:.4g}" in raw.hovertemplate


@pytest.mark.parametrize("normalize", ["False", 1, "yes"])
def test_block_benefit_refuses_a_normalize_that_is_not_a_flag(normalize):
    with pytest.raises(ConfigError, match="normalize must be True or False"):
        plot_block_benefit(benefit_history(), variant="cls", normalize=normalize)


def test_keep_ratios_leave_out_and_name_a_goal_that_is_not_finite():
    h = History()
    h.log_blocks("keep_applied", {"blocks.0.attn": 0.5, "blocks.0.mlp": 0.6}, step=1, epoch=0)
    h.log_blocks("keep_goal", {"blocks.0.attn": 0.4, "blocks.0.mlp": math.inf}, step=1, epoch=0)
    fig = plot_keep_ratios(h)
    goal = next(t for t in fig.data if t.name == "goal κ")
    assert list(goal.y) == [0.4]
    assert "goal κ of mlp 0 at step 1: inf" in fig.layout.title.text


# ---------------------------------------------------------------------------------------------- criteria
def criteria_history() -> History:
    h = History()
    for step in (0, 10):
        h.log_blocks("crit_abs_w", {"blocks.0.attn": 1.0 + step, "blocks.0.mlp": 2.0}, step=step, epoch=0)
        h.log_blocks("crit_taylor", {"blocks.0.attn": 1e-9, "blocks.0.mlp": 3e-9}, step=step, epoch=0)
    return h


def test_normalised_criteria_hover_gives_the_logged_value():
    fig = plot_block_criteria(criteria_history(), metrics=["crit_abs_w", "crit_taylor"])
    taylor = fig.data[1]
    assert taylor.z[1, 0] == pytest.approx(1.0)
    assert taylor.customdata[1, 0] == pytest.approx(3e-9)  # shown with .4g, not as 0.000
    assert "%{customdata:.4g}" in taylor.hovertemplate


def test_raw_criteria_panels_each_have_their_own_named_colour_scale():
    fig = plot_block_criteria(criteria_history(), metrics=["crit_abs_w", "crit_taylor"], normalize=False)
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis2"]
    assert fig.layout.coloraxis.colorbar.title.text == "mean |w|"
    assert fig.layout.coloraxis2.colorbar.title.text == "mean (w·∂L/∂w)²"
    assert fig.data[1].z[1, 0] == pytest.approx(3e-9) and "%{z:.4g}" in fig.data[1].hovertemplate
    shared = plot_block_criteria(criteria_history(), metrics=["crit_abs_w", "crit_taylor"])
    assert [t.coloraxis for t in shared.data] == ["coloraxis", "coloraxis"]  # normalised panels share one scale


@pytest.mark.parametrize("scores, match", [
    ([1.0, 2.0], "scores must map a name"),
    ({"a": [1.0]}, r"scores\['a'\] must map a block name"),
    ({"a": {"blocks.0.attn": "high"}}, r"scores\['a'\]\['blocks.0.attn'\] must be a number"),
    ({"a": {"blocks.0.attn": None}}, "must be a number"),
])
def test_block_scores_refuse_what_is_not_numbers_per_block(scores, match):
    with pytest.raises(ConfigError, match=match):
        plot_block_scores(scores)


def test_block_scores_take_series_and_tensors():
    series = pd.Series({"blocks.0.attn": 2.0, "blocks.0.mlp": 1.0})
    assert list(plot_block_scores({"a": series}).data[0].y) == [1.0, 0.5]
    assert list(plot_block_scores(pd.DataFrame({"a": series})).data[0].y) == [1.0, 0.5]
    assert list(plot_block_scores({"a": {"blocks.0.attn": torch.tensor(2.0)}}).data[0].y) == [1.0]


# ---------------------------------------------------------------------------------------------- ART figures
@pytest.mark.parametrize("epochs", [0, "0", [0.5], [True], [None]])
def test_gradient_profile_refuses_epochs_that_are_not_a_list_of_epochs(epochs):
    with pytest.raises(ConfigError, match="epochs must be a list of ART epochs"):
        plot_gradient_profile(History(meta={"profiles": [PROFILE]}), epochs=epochs)


def test_gradient_profile_takes_epochs_as_whole_numbers_of_any_kind():
    h = History(meta={"profiles": [PROFILE, dict(PROFILE, art_epoch=3)]})
    for epochs in ([3], (3,), np.array([3]), [3.0]):
        assert [t.name for t in plot_gradient_profile(h, epochs=epochs).data][:2] == ["ART epoch 3"] * 2


def test_gradient_profile_finds_a_run_of_a_history_merged_twice():
    a = History(meta={"run": "a", "profiles": [PROFILE]})
    b = History(meta={"run": "b", "profiles": [dict(PROFILE, art_epoch=3)]})
    merged = History.concat([History.concat([a, b]), History(meta={"run": "c"})], runs=["ab", "c"])
    assert plot_gradient_profile(merged, run="b").data[0].name == "ART epoch 3"
    with pytest.raises(ConfigError, match=r"merges 3 runs \(a, b, c\)"):
        plot_gradient_profile(merged)


def test_art_keep_ratios_refuse_a_log_that_is_not_a_flag():
    h = History()
    h.log_blocks("keep_ratio", {"fc1.weight": 0.3}, step=0, epoch=0)
    assert plot_art_keep_ratios(h, log=True).layout.yaxis.type == "log"
    with pytest.raises(ConfigError, match="log must be True or False"):
        plot_art_keep_ratios(h, log="no")


# ---------------------------------------------------------------------------------------------- result figures
def test_accuracy_ci_takes_one_method_given_as_a_string():
    t = pd.DataFrame({"method": ["p3b", "p3b", "uniform", "uniform"], "prune_ratio": 0.5, "seed": [0, 1] * 2,
                      "acc": [0.9, 0.92, 0.88, 0.9]})
    assert [tr.name for tr in plot_accuracy_ci(t, methods="uniform").data] == ["uniform"]


# ---------------------------------------------------------------------------------------------- explorers
@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8)


def test_sparsity_explorer_refuses_checkpoints_that_are_not_named_state_dicts(digits):
    model = sl.models.create("lenet_300_100", image_size=8)
    with pytest.raises(ConfigError, match="one state_dict itself"):
        SparsityExplorer(model, digits, checkpoints=model.state_dict(), max_eval=10)
    with pytest.raises(ConfigError, match=r"checkpoint 'hs' is a model .*state_dict\(\)"):
        SparsityExplorer(model, digits, checkpoints={"hs": model}, max_eval=10)
    with pytest.raises(ConfigError, match="checkpoints must map a name to a state_dict"):
        SparsityExplorer(model, digits, checkpoints="hs.pt", max_eval=10)
    pairs = SparsityExplorer(model, digits, checkpoints=[("hs", model.state_dict())], max_eval=10)
    assert pairs.method.options[-1] == "hs"


@pytest.mark.parametrize("max_eval", ["100", 10.5])
def test_sparsity_explorer_refuses_a_max_eval_that_is_not_a_count(digits, max_eval):
    with pytest.raises(ConfigError, match="max_eval must be an integer >= 1"):
        SparsityExplorer(sl.models.create("lenet_300_100", image_size=8), digits, max_eval=max_eval)


def keep_goal_history() -> History:
    h = History()
    h.log_blocks("keep_goal", {n: 0.5 for n in VIT_BLOCKS}, step=1, epoch=0)
    return h


@pytest.mark.parametrize("flag", ["blocks_only", "measure_latency"])
def test_budget_explorer_refuses_flags_that_are_not_bools(flag):
    with pytest.raises(ConfigError, match=f"{flag} must be True or False"):
        BudgetExplorer(keep_goal_history(), sl.models.create("vit_nano_patch4_28", num_classes=10),
                       **{flag: "False"})


def test_budget_explorer_measures_a_ratio_seen_without_latency_once_latency_is_on():
    torch.manual_seed(0)
    explorer = BudgetExplorer(keep_goal_history(), sl.models.create("vit_nano_patch4_28", num_classes=10),
                              measure_latency=False)
    assert math.isnan(explorer.latency)
    explorer.measure_latency = True
    explorer.update()
    assert explorer.latency > 0 and "nan ms" not in explorer.info.value


@pytest.mark.parametrize("blocks_only", [False, True])
def test_budget_explorer_says_what_its_achieved_ratio_refers_to(blocks_only):
    """The parameter count shown is the whole compact model's; the ratio is of the blocks with blocks_only."""
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    explorer = BudgetExplorer(keep_goal_history(), model, blocks_only=blocks_only, measure_latency=False)
    s = explorer.structure
    ratio = s.prune_ratio(explorer.masks, blocks_only=blocks_only)
    assert explorer.achieved_ratio == ratio
    assert abs(ratio - explorer.slider.value) < 0.02
    assert f"achieved ratio {ratio:.4f} of the {'blocks' if blocks_only else 'model'}'s parameters" in \
        explorer.info.value


def test_block_benefit_heatmap_refuses_moments_it_would_ignore():
    h = History()
    h.log_blocks("benefit_cls", {"blocks.0.attn": 0.2, "blocks.0.mlp": 0.3}, step=0, epoch=0)
    with pytest.raises(ConfigError, match="moments picks the steps of view='profile'"):
        sl.plot_block_benefit(h, view="heatmap", variant="cls", moments=[0])
    assert sl.plot_block_benefit(h, view="profile", variant="cls", moments=[0]).data
