"""P3B experiment bookkeeping: preset options reach the runs they name, traces belong to their seed, and the
setting-selection summary counts the seeds its rule counted."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import p3b, selection
from sparselab.experiments.p3b import p3b_preset
from sparselab.history import History


@pytest.mark.parametrize("part,option", [("fit", "epochs"), ("fit", "seed"), ("finetune", "epochs"),
                                         ("finetune", "seed")])
def test_training_options_that_every_run_sets_itself_are_refused_where_the_preset_is_made(part, option):
    """``epochs`` and ``seed`` in a preset's fit/finetune options collide with what run_p3b passes (a TypeError
    only when that fit starts: for ``finetune``, after the whole pruning run)."""
    options = dict(getattr(p3b_preset("tiny"), part), **{option: 5})
    with pytest.raises(ConfigError, match=f"{part} options of preset 'tiny' set {option}"):
        p3b_preset("tiny", **{part: options})


class _Probes:
    made: list[dict] = []

    def __init__(self, model, **options):
        _Probes.made.append(options)

    def calibrate(self, data, steps, seed):
        pass

    def measure(self, data):
        return {}

    def record(self, history, values, step):
        pass


@pytest.mark.parametrize("fit,log_every", [
    (dict(lr=1e-3, batch_size=64, max_steps_per_epoch=4), 2),  # the tiny preset's own: unchanged
    (dict(lr=1e-3, batch_size=16, max_steps_per_epoch=4), 2),  # was 10: only the epoch ends were recorded
    (dict(lr=1e-3, batch_size=32, accumulate_steps=2), 2),  # was 5: 320 images are 5 steps of 64
    (dict(lr=1e-3, batch_size=16), 10),
])
def test_the_benefit_trace_records_twice_per_epoch_of_optimizer_steps(monkeypatch, fit, log_every):
    import sparselab.probes

    _Probes.made.clear()
    monkeypatch.setattr(sparselab.probes, "BlockBenefit", _Probes)
    monkeypatch.setattr(p3b, "fit", lambda *args, **kwargs: None)
    data = SimpleNamespace(train=list(range(320)), num_classes=10)
    p3b.benefit_trace(p3b_preset("tiny", fit=fit), data=data, model=object())
    assert _Probes.made[0]["log_every"] == log_every


def test_a_trace_of_another_seed_or_preset_is_not_taken_for_this_seed(monkeypatch):
    import sparselab.probes.convergence

    monkeypatch.setattr(sparselab.probes.convergence, "late_convergence", lambda history, metric: {"rho": 0.5})
    preset = p3b_preset("tiny")
    own = History(meta={"seed": 0, "preset": "tiny"})
    table = p3b.late_convergence_by_seed(preset, [0], data=object(), traces={0: own}, progress=False)
    assert table.loc[0, "cls"] == 0.5
    with pytest.raises(ConfigError, match="trace of seed 1 of preset 'tiny', not of seed 0"):
        p3b.late_convergence_by_seed(preset, [0], data=object(), traces={0: History(meta={"seed": 1,
                                                                                        "preset": "tiny"})})
    with pytest.raises(ConfigError, match="of preset 'cpu', not of seed 0 of preset 'tiny'"):
        p3b.late_convergence_by_seed(preset, [0], data=object(), traces={0: History(meta={"seed": 0,
                                                                                        "preset": "cpu"})})


def test_the_selection_summary_is_over_the_seeds_the_rule_counted(monkeypatch):
    """A seed whose uniform run measured nothing is left out of the loss; the summary's seed count and means
    must leave it out too, so that dense_mean − uniform_mean is the loss the rule judged."""
    accs = {"dense": [0.90, 0.901, 0.902, 0.90, 0.899, 0.901],
            "uniform": [0.85, 0.86, 0.84, 0.85, 0.86, float("nan")]}

    def fake_run(preset, method, ratio, seed, **_):
        return SimpleNamespace(prune_ratio=0.0 if method == "dense" else ratio, result={"acc": accs[method][seed]})

    monkeypatch.setattr(selection, "run_p3b", fake_run)
    monkeypatch.setattr(selection, "load_data", lambda preset: None)
    with pytest.warns(RuntimeWarning, match="not finite"):
        summary = selection.measure_candidate(p3b_preset("tiny"), seeds=range(6), progress=False)["summary"]
    assert summary["seeds"] == 5  # was 6: the seeds given, not those the rule counted
    assert summary["dense_mean"] - summary["uniform_mean"] == pytest.approx(summary["loss"])
    assert summary["qualifies"]
