"""P3B options at their edges: keep-ratio profiles that are not numbers or hold no positive ratio, a frozen
allocation that no update would use (or that a global selection has no place for), and more mask updates per
epoch than an epoch has steps."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import nano_vit as nano
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.pruners.allocation import water_fill
from sparselab.structure import ViTStructure

FIT = dict(batch_size=64, lr=1e-3, progress=False, max_steps_per_epoch=4)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=320)


# ---------------------------------------------------------------- keep_ratios of allocation='fixed'
@pytest.mark.parametrize("keep_ratios", [["a"] * 8, 0.5, [1.0, None] * 4, [True] * 8, "11111111",
                                         [1.0, float("nan")] * 4, [1.0, -0.5] * 4])
def test_a_keep_ratio_profile_that_is_not_numbers_is_a_config_error(keep_ratios):
    """Strings, a scalar or None inside the profile crashed with a bare ValueError/TypeError from a float()
    conversion before the profile's own check ran."""
    with pytest.raises(ConfigError, match="keep_ratios"):
        sl.P3B(nano(), 0.5, allocation="fixed", keep_ratios=keep_ratios, patch_probe=None)


@pytest.mark.parametrize("zeros", [[0] * 8, [0.0] * 8, np.zeros(8), torch.zeros(8)])
def test_an_all_zero_keep_ratio_profile_is_refused(zeros):
    """An all-zero profile has nothing to rescale: the water-filling fell back to the same keep ratio for every
    block, a uniform allocation under the name 'fixed'."""
    with pytest.raises(ConfigError, match="keep_ratios are all 0"):
        sl.P3B(nano(), 0.5, allocation="fixed", keep_ratios=zeros, patch_probe=None)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=8, max_size=8).filter(lambda v: max(v) > 0))
def test_a_fixed_profile_is_water_filled_in_its_own_shape(profile):
    """Any profile with a positive ratio is accepted as given (numpy and tensor profiles too), recorded as floats,
    and its blocks that are neither pinned at 0 nor at 1 keep ratios proportional to the profile."""
    pruner = sl.P3B(nano(), 0.4, allocation="fixed", keep_ratios=np.array(profile), patch_probe=None)
    assert pruner.options.keep_ratios == tuple(map(float, profile))
    kappa = water_fill(torch.tensor(profile, dtype=torch.float64), pruner.dense_linear, pruner.linear_budget)
    assert float((kappa * pruner.dense_linear).sum()) == pytest.approx(pruner.linear_budget, rel=1e-9)
    free = (kappa > 1e-12) & (kappa < 1 - 1e-12)
    if int(free.sum()) >= 2:
        ratio = kappa[free] / torch.tensor(profile, dtype=torch.float64)[free]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9)


# ---------------------------------------------------------------- freeze_allocation_after
def test_freeze_allocation_after_with_a_global_selection_is_refused():
    """A global selection has no per-block keep ratios: the frozen ratios were never used, the option ignored."""
    with pytest.raises(ConfigError, match="freeze_allocation_after"):
        sl.P3B(nano(), 0.5, allocation="global", patch_probe=None, freeze_allocation_after=1)
    sl.P3B(nano(), 0.5, allocation="uniform", patch_probe=None, freeze_allocation_after=1)  # per-block: accepted


def test_freeze_allocation_after_beyond_the_schedules_updates_warns(digits):
    """warm-up 1, sparsify 2, finalize 3 epochs of 4 steps, 2 updates per epoch: updates at steps 6, 8, 10 and
    the final one, four in all. Freezing after the 4th (or a later) update changes nothing."""
    schedule = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2)
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=schedule, allocation="uniform", patch_probe=None,
                    freeze_allocation_after=4)
    with pytest.warns(UserWarning, match="freeze_allocation_after=4.*4 mask updates"):
        sl.fit(model, digits, pruner=pruner, epochs=3, **FIT)
    assert pruner.updates == 4 and pruner._frozen_kappa is not None  # frozen only at the last update

    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=schedule, allocation="uniform", patch_probe=None,
                    freeze_allocation_after=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.fit(model, digits, pruner=pruner, epochs=3, **FIT)
    assert pruner.updates == 4


# ---------------------------------------------------------------- updates_per_epoch
def test_more_updates_per_epoch_than_steps_warns_and_updates_every_step(digits):
    schedule = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=10)
    model = nano()
    pruner = sl.P3B(model, 0.5, schedule=schedule, allocation="uniform", patch_probe=None)
    with pytest.warns(UserWarning, match="updates_per_epoch=10 exceeds the 4 optimizer steps"):
        sl.fit(model, digits, pruner=pruner, epochs=3, **FIT)
    assert pruner.updates == len(range(5, 12)) + 1  # every step in (4, 12), then the final update
    assert abs(pruner.achieved_prune_ratio() - 0.5) < 0.005


# ---------------------------------------------------------------- a model of one block
def test_p3b_on_a_model_with_one_block_meets_its_target(digits):
    model = nano(depth=1)
    assert len(ViTStructure(model).blocks) == 2
    pruner = sl.P3B(model, 0.4, schedule=sl.P3BSchedule(1, 2, 3, 2), patch_probe="linear")
    sl.fit(model, digits, pruner=pruner, epochs=3, **FIT)
    assert abs(pruner.achieved_prune_ratio() - 0.4) < 0.005
