"""P3B's ablations: without reactivation a pruned element never returns; with a frozen allocation the goal keep
ratios never move after the first update; both still meet the budget."""
from __future__ import annotations

import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.experiments.p3b import METHODS

SCHED = sl.P3BSchedule(warmup=1, sparsify=3, finalize=4, updates_per_epoch=3)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=320)


def run(data, **options):
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    pruner = sl.P3B(model, 0.6, schedule=SCHED, patch_probe="linear", **options)
    history = sl.fit(model, data, epochs=4, batch_size=32, max_steps_per_epoch=6, lr=2e-3, pruner=pruner,
                     progress=False)
    return pruner, history


def test_without_reactivation_no_pruned_element_comes_back(digits):
    pruner, history = run(digits, reactivation=False)
    events = history.events
    assert len(events.query("new == 0")) > 0
    assert len(events.query("old == 0 and new == 1")) == 0
    assert abs(pruner.achieved_prune_ratio() - 0.6) < 0.01  # caps in the water-filling keep the budget
    # and the pruned set only grows from update to update
    dead = {k: v.clone() for k, v in pruner._dead.items()}
    masks = pruner.hard_masks()
    for layer, gates in masks.items():
        for g, keep in gates.items():
            assert torch.equal(~keep.cpu(), dead[sl.structure.gates.Gates.key(layer, g)])


def test_with_a_frozen_allocation_the_goal_never_moves(digits):
    pruner, history = run(digits, freeze_allocation_after=1)
    goal = history.blocks.query("metric == 'keep_goal'").pivot_table(index="step", columns="block", values="value")
    assert len(goal) >= 4
    assert (goal.sub(goal.iloc[0], axis=1).abs().to_numpy() < 1e-12).all()
    assert abs(pruner.achieved_prune_ratio() - 0.6) < 0.01
    moving, moving_history = run(digits)
    moving_goal = moving_history.blocks.query("metric == 'keep_goal'").pivot_table(index="step", columns="block",
                                                                                   values="value")
    assert (moving_goal.sub(moving_goal.iloc[0], axis=1).abs().to_numpy() > 1e-6).any()  # the method re-allocates


def test_ablation_options_are_checked_and_recorded():
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    with pytest.raises(ConfigError, match="freeze_allocation_after"):
        sl.P3B(model, 0.5, freeze_allocation_after=0)
    pruner = sl.P3B(model, 0.5, reactivation=False, freeze_allocation_after=2)
    assert pruner.config()["reactivation"] is False and pruner.config()["freeze_allocation_after"] == 2
    assert {"p3b_no_reactivation", "p3b_frozen_benefit", "p3b_fast_probes"} <= set(METHODS)


@pytest.mark.parametrize("seed", range(5))
def test_water_filling_respects_caps_and_still_meets_the_budget(seed):
    from sparselab.pruners.allocation import water_fill

    g = torch.Generator().manual_seed(seed)
    imp, dense = torch.rand(8, generator=g), torch.rand(8, generator=g) * 100 + 10
    cap = torch.rand(8, generator=g) * 0.7 + 0.3
    budget = 0.5 * float((cap * dense).sum())
    kappa = water_fill(imp, dense, budget, upper=cap)
    assert (kappa <= cap + 1e-12).all() and (kappa >= 0).all()
    assert abs(float((kappa * dense).sum()) - budget) < 1e-6 * budget
    # more than the caps hold: every block keeps all it can
    assert torch.equal(water_fill(imp, dense, float((cap * dense).sum()) * 1.01, upper=cap), cap.double())
