"""The unstructured side speaks one vocabulary: scores, sparsity schedules and masks_from_scores; GMP and movement
pruning are a score on a schedule; ART's methods are a registry."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab.experiments import art
from sparselab.pruners.masking import GradualMagnitude, MovementPruning
from sparselab.pruners.schedules import CubicSparsity
from sparselab.structure.unstructured import magnitude_masks, masks_from_scores, num_pruned


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 7), st.integers(1, 9)), min_size=1, max_size=4),
       sparsity=st.floats(0.0, 0.99), scope=st.sampled_from(["global", "layer", "row"]), seed=st.integers(0, 999))
def test_masks_from_scores_remove_exactly_the_target_and_keep_the_highest(shapes, sparsity, scope, seed):
    g = torch.Generator().manual_seed(seed)
    scores = {f"w{i}": torch.randn(*s, generator=g) for i, s in enumerate(shapes)}
    masks = masks_from_scores(scores, sparsity, scope)
    groups = {"global": [torch.cat([v.flatten() for v in scores.values()])],
              "layer": [v.flatten() for v in scores.values()],
              "row": [row for v in scores.values() for row in v]}[scope]
    kept = {"global": [torch.cat([m.flatten() for m in masks.values()])],
            "layer": [m.flatten() for m in masks.values()],
            "row": [row for m in masks.values() for row in m]}[scope]
    for values, keep in zip(groups, kept):
        assert int((~keep).sum()) == num_pruned(values.numel(), sparsity)
        if keep.any() and (~keep).any():
            assert values[keep].min() >= values[~keep].max()


def test_magnitude_masks_are_masks_from_magnitudes():
    torch.manual_seed(0)
    model = sl.models.create("lenet_300_100", image_size=8)
    weights = {n: w.detach().abs() for n, w in sl.structure.unstructured.prunable_weights(model).items()}
    for scope in ("global", "layer"):
        a, b = magnitude_masks(model, 0.9, scope), masks_from_scores(weights, 0.9, scope)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_cubic_schedule_is_zhu_and_gupta():
    s = CubicSparsity(final=0.8, start=1, end=3, every=5, initial=0.1)
    spe = 10
    for step in (0, 9, 10, 15, 20, 29, 30, 40):
        t0, t1 = 10, 30
        expected = 0.0 if step < t0 else 0.8 + (0.1 - 0.8) * (1 - min(1.0, (step - t0) / (t1 - t0))) ** 3
        assert s.value(step, spe) == pytest.approx(expected)
    assert [t for t in range(45) if s.is_update(t, spe)] == [10, 15, 20, 25, 30]


def test_movement_pruning_keeps_the_weights_that_move_away_from_zero():
    torch.manual_seed(0)
    data = sl.data.load("digits", image_size=8, limit=256)
    model = sl.models.create("lenet_300_100", image_size=8)
    pruner = MovementPruning(model, 0.8, start_epoch=1, end_epoch=3, every=2)  # last update at the last step
    first = {n: w.detach().clone() for n, w in sl.structure.unstructured.prunable_weights(model).items()}
    sl.fit(model, data, epochs=3, batch_size=64, lr=1e-3, pruner=pruner, progress=False)
    assert pruner.sparsity() == pytest.approx(0.8, abs=1e-3)
    masks = masks_from_scores(pruner.movement, 0.8)
    assert all(torch.equal(masks[k].cpu(), pruner.masks[k].cpu()) for k in masks)  # the last update's ranking
    # a ranking of its own: not the magnitude ranking of the starting weights
    by_magnitude = masks_from_scores({k: v.abs() for k, v in first.items()}, 0.8)
    assert any(not torch.equal(by_magnitude[k].cpu(), pruner.masks[k].cpu()) for k in first)
    state = pruner.state_dict()
    again = MovementPruning(sl.models.create("lenet_300_100", image_size=8), 0.8, start_epoch=1, end_epoch=2)
    again.load_state_dict(state)
    assert all(torch.equal(again.movement[k], pruner.movement[k]) for k in first)


def test_gradual_magnitude_keeps_its_schedule_and_config():
    model = sl.models.create("lenet_300_100", image_size=8)
    gmp = GradualMagnitude(model, 0.9, start_epoch=0, end_epoch=4, every=3)
    assert gmp.target_at(0, 10) == 0.0 and gmp.target_at(40, 10) == pytest.approx(0.9)
    assert gmp.config() == {"sparsity": 0.9, "initial_sparsity": 0.0, "start_epoch": 0, "end_epoch": 4, "every": 3}
    with pytest.raises(sl.errors.ConfigError, match="start_epoch < end_epoch"):
        GradualMagnitude(model, 0.9, start_epoch=3, end_epoch=3)


def test_art_methods_are_a_registry_and_movement_runs_beside_gmp():
    assert set(art.ART_METHODS) | set(art.ART_ABLATIONS) == set(art.METHOD_REGISTRY)
    assert "movement" in art.art_preset("cpu").methods and "movement" in art.art_preset("tiny").methods
    preset = art.art_preset("tiny", methods=("gmp", "movement"), sparsities=(0.9,))
    table, runs = art.compare(preset, progress=False)
    assert set(table.method) == {"dense", "gmp", "movement"}
    for r in runs:
        assert r.result["nonzero_sparsity"] >= 0.9 - 1e-3
    with pytest.raises(sl.errors.UnknownNameError, match="movemnt"):
        art.run_art(preset, "movemnt", 0.9)
