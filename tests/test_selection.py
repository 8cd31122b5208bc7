"""The setting-selection rule: decided by dense fine-tuning and the uniform baseline alone, first candidate that
qualifies wins."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparselab.experiments import selection
from sparselab.experiments.p3b import p3b_preset


def _scripted(accs):
    def fake_run(preset, method, ratio, seed, **_):
        return SimpleNamespace(prune_ratio=0.0 if method == "dense" else ratio,
                               result={"acc": accs[preset.name][method][seed]})
    return fake_run


def test_the_first_qualifying_candidate_is_chosen_and_only_dense_and_uniform_run(monkeypatch):
    easy = p3b_preset("tiny").replace(name="easy")
    hard = p3b_preset("tiny").replace(name="hard")
    noisy = p3b_preset("tiny").replace(name="noisy")
    accs = {
        "easy": {"dense": [0.96, 0.961, 0.962, 0.96, 0.961], "uniform": [0.95, 0.951, 0.95, 0.952, 0.95]},
        "hard": {"dense": [0.90, 0.901, 0.902, 0.90, 0.899], "uniform": [0.85, 0.86, 0.84, 0.85, 0.86]},
        "noisy": {"dense": [0.90, 0.95, 0.85, 0.92, 0.88], "uniform": [0.5] * 5},
    }
    monkeypatch.setattr(selection, "run_p3b", _scripted(accs))
    monkeypatch.setattr(selection, "load_data", lambda preset: None)
    summary, runs = selection.select_setting([easy, noisy, hard, easy], progress=False)
    assert summary.candidate.tolist() == ["easy", "noisy", "hard"]  # stops at the first that qualifies
    assert summary.qualifies.tolist() == [False, False, True]
    assert set(runs.method) == {"dense", "uniform"}
    assert summary.loss.iloc[2] == pytest.approx(0.0484)
    one = selection.measure_candidate(hard, seeds=(0, 1, 2), progress=False)["summary"]
    assert not one["qualifies"]  # fewer seeds than the rule asks for


def test_the_committed_candidates_follow_the_rule():
    table = selection.committed_selection()
    assert len(table) >= 1
    for _, row in table.iterrows():
        expected = (row.seeds >= selection.RULE.min_seeds and row.loss >= row.min_loss
                    and row.dense_std < row.max_dense_std)
        assert bool(row.qualifies) == bool(expected)
        assert row.loss_low <= row.loss <= row.loss_high


def test_the_class_split_candidate_separates_source_and_target_classes():
    from sparselab.models.pretrained import RECIPES, SourceRecipe

    assert RECIPES["split04"].classes == (0, 1, 2, 3, 4)
    assert SourceRecipe().key() == RECIPES["default"].key()  # recipes without a split keep their cache key
    assert SourceRecipe(classes=(0, 1)).key() != SourceRecipe().key()
    preset = p3b_preset("cpu-split")
    target = set(preset.data_options["classes"])
    assert target.isdisjoint(RECIPES[preset.recipe].classes) and preset.data == "fashion_mnist"


def test_a_seed_without_a_measured_accuracy_does_not_count_towards_the_rule(monkeypatch):
    """min_seeds counts the seeds whose dense-minus-uniform loss was measured: a diverged (NaN) run is left out of
    the interval, so it must not make up the seed count either."""
    hard = p3b_preset("tiny").replace(name="hard")
    dense = [0.90, 0.901, 0.902, 0.90, float("nan")]
    accs = {"hard": {"dense": dense, "uniform": [0.85, 0.86, 0.84, 0.85, 0.86]}}
    monkeypatch.setattr(selection, "run_p3b", _scripted(accs))
    monkeypatch.setattr(selection, "load_data", lambda preset: None)
    with pytest.warns(RuntimeWarning, match="not finite"):
        summary = selection.measure_candidate(hard, seeds=(0, 1, 2, 3, 4), progress=False)["summary"]
    assert not summary["qualifies"]
    accs["hard"]["dense"] = dense[:4] + [0.899]
    assert selection.measure_candidate(hard, seeds=(0, 1, 2, 3, 4), progress=False)["summary"]["qualifies"]
