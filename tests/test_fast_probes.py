"""FAST_PROBES: the class-token probes alone, wherever it is used (P3B, the p3b_fast_probes method, recipes)."""
from __future__ import annotations

import pytest
import torch

import sparselab as sl
from sparselab.experiments.p3b import METHODS, p3b_preset
from sparselab.experiments.recipes import method_patch_probe, method_probe_options


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=128)


def test_fast_probes_train_no_patch_probe_and_still_allocate(digits):
    torch.manual_seed(0)
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    schedule = sl.P3BSchedule(warmup=0, sparsify=1, finalize=2, updates_per_epoch=2)
    pruner = sl.P3B(model, 0.5, schedule=schedule, num_classes=10, **sl.probes.FAST_PROBES)
    assert pruner.probes.patch_probe is None and all(pair.patch is None for pair in pruner.probes.probes)
    history = sl.fit(model, digits, epochs=2, batch_size=32, pruner=pruner, progress=False, seed=0)
    metrics = set(history.blocks.metric)
    assert "benefit_cls" in metrics and "benefit_patch" not in metrics
    goal = history.blocks[history.blocks.metric == "keep_goal"]
    first, last = (goal[goal.step == step].value.to_numpy() for step in (goal.step.min(), goal.step.max()))
    assert not (first == first[0]).all() or not (last == last[0]).all()  # the benefit sets a non-uniform profile
    assert pruner.achieved_prune_ratio() == pytest.approx(0.5, abs=0.01)


def test_the_fast_probes_method_runs_what_fast_probes_says():
    preset = p3b_preset("tiny")
    assert {k: METHODS["p3b_fast_probes"][k] for k in sl.probes.FAST_PROBES} == sl.probes.FAST_PROBES
    assert method_patch_probe(preset, "p3b_fast_probes") is None
    assert method_patch_probe(preset, "p3b") == preset.patch_probe == "conv2"
    # the preset's other probe options still apply (the probes' own learning rate, weight decay)
    changed = preset.replace(probe_options={"probe_lr": 1e-3})
    assert method_probe_options(changed, "p3b_fast_probes") == {"probe_lr": 1e-3}
