"""P3B options in combinations that must either be honoured or refused: the History's per-block keep ratios of a
global selection, the budget of a frozen allocation without reactivation, and the options of a pruner built from
an allocation instance."""
from __future__ import annotations

import warnings

import pytest
import torch

import sparselab as sl
from sparselab.callbacks import TrainState
from sparselab.history import History

SCHED = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=256)


def nano():
    torch.manual_seed(0)
    return sl.models.create("vit_nano_patch4_28", num_classes=10)


def test_a_global_selection_logs_the_keep_ratios_it_leaves_in_each_block(digits):
    model = nano()
    pruner = sl.P3B(model, 0.6, schedule=SCHED, allocation="global", patch_probe=None)
    history = sl.fit(model, digits, epochs=3, batch_size=32, max_steps_per_epoch=6, lr=2e-3, pruner=pruner,
                     progress=False)
    blocks = history.blocks
    last = blocks[blocks.step == blocks.step.max()]
    applied = last[last.metric == "keep_applied"].set_index("block").value
    goal = last[last.metric == "keep_goal"].set_index("block").value
    s, masks = pruner.structure, pruner.hard_masks()
    reached = {b.name: s.linear_params(b, masks) / s.linear_params(b) for b in s.blocks}
    for name, value in reached.items():  # the final update is hard: the log is the gates' state
        assert applied[name] == pytest.approx(value, abs=1e-9)
        assert goal[name] == pytest.approx(value, abs=1e-9)
    assert max(reached.values()) - min(reached.values()) > 0.05  # a global ranking is not uniform per block
    kept_linear = sum(s.linear_params(b, masks) for b in s.blocks)
    assert kept_linear == pytest.approx(sum(goal[b.name] * s.linear_params(b) for b in s.blocks), rel=1e-9)


def _state(model, step: int) -> TrainState:
    return TrainState(model=model, optimizer=None, history=History(), device=torch.device("cpu"), epochs=3,
                      steps_per_epoch=6, step=step, epoch=step // 6)


def test_a_frozen_allocation_without_reactivation_still_meets_the_budget():
    model = nano()
    pruner = sl.P3B(model, 0.6, schedule=SCHED, allocation="uniform", criterion="l1", patch_probe=None,
                    reactivation=False, freeze_allocation_after=1)
    state = _state(model, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.on_fit_start(state)
    pruner.update(state)  # freezes the goal: the same keep ratio for every block
    # elements switched off at different updates add up: here most of the first MLP's hidden neurons are dead,
    # more than its frozen goal would prune
    dead = pruner._dead["L0_mlp_hid"]
    dead[: int(0.9 * len(dead))] = True
    caps = pruner._alive_caps()
    assert float(caps[1]) < float(pruner._frozen_kappa[1])
    state.step, state.epoch = 18, 2
    pruner.update(state, final=True)
    assert pruner.achieved_prune_ratio() == pytest.approx(0.6, abs=0.005)
    goal = state.history.blocks.query("metric == 'keep_goal' and step == 18").set_index("block").value
    s, masks = pruner.structure, pruner.hard_masks()
    for b in s.blocks:  # the logged goal is what each block keeps (within one element's parameters)
        assert goal[b.name] == pytest.approx(s.linear_params(b, masks) / s.linear_params(b), abs=0.02)


@pytest.mark.parametrize("make", [
    lambda: sl.pruners.allocators.BenefitAllocation(momentum=0.5, patch_probe="linear"),
    lambda: sl.pruners.allocators.FixedAllocation([1.0, 0.5] * 4),
], ids=["benefit", "fixed"])
def test_options_of_a_pruner_built_from_an_allocation_instance_rebuild_the_same_run(make):
    model = nano()
    allocation = make()
    pruner = sl.P3B(model, 0.5, allocation=allocation)
    rebuilt = sl.P3B.from_config(nano(), 0.5, pruner.options)
    assert rebuilt.config() == pruner.config()
    assert rebuilt.allocation.config() == allocation.config()
