"""Seed counts say what was measured: the report's headings, a diagnosis read back from its record, and the run names
given to the output folder."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import diagnosis, report
from sparselab.experiments.outputs import HISTORIES_FILE, TABLE_FILE, save_run_files
from sparselab.history import History

NAN = math.nan


def _p3b(acc_p3b):
    return pd.DataFrame({"method": ["dense"] * 3 + ["p3b"] * 3 + ["uniform"] * 3,
                         "prune_ratio": [0.0] * 3 + [0.9] * 6, "seed": [0, 1, 2] * 3,
                         "acc": [0.90, 0.92, 0.91, *acc_p3b, 0.80, 0.81, 0.82]})


def _markdown(p3b=None, art=None):
    tables = {"p3b_cpu-full": p3b, "art_cpu-full": art}
    return report.results_markdown(lambda name: tables.get(name) if tables.get(name) is not None
                                   else pd.DataFrame())


@pytest.mark.filterwarnings("ignore:mean_ci:RuntimeWarning")
def test_a_heading_counts_only_the_seeds_whose_runs_were_measured():
    assert "; 3 seeds; `docs/results/p3b_cpu-full.csv`" in _markdown(_p3b([0.85, 0.87, 0.86]))
    text = _markdown(_p3b([0.85, 0.87, NAN]))  # seed 2 of P3B diverged: P3B's numbers stand on 2 seeds
    assert "; 2–3 seeds (up to 1 more not measured); `docs/results/p3b_cpu-full.csv`" in text
    art = pd.DataFrame({"method": ["l1"] * 3 + ["hypersparse"] * 3, "sparsity": [0.9] * 6, "seed": [0, 1, 2] * 2,
                        "acc": [0.8, NAN, 0.82, 0.85, 0.86, NAN]})
    assert "images; 2 seeds (1 more not measured); `hypersparse_fast`" in _markdown(art=art)


def test_a_seed_measured_at_one_setting_only_is_not_counted_as_measured():
    table = pd.DataFrame({"method": ["a"] * 6, "sparsity": [0.5, 0.9] * 3, "seed": [0, 0, 1, 1, 2, 2],
                          "acc": [0.8, 0.7, 0.8, 0.7, 0.8, NAN]})
    assert report._seeds(table) == "2 seeds (1 more not measured)"
    assert report._seeds(table.fillna(0.6)) == "3 seeds"


def _diagnosis_inputs(tmp_path, seeds):
    from sparselab.experiments.p3b import _write_record, p3b_preset

    preset = p3b_preset("tiny", pretrained=False, recipe=None, seeds=(0,))
    keep = json.dumps({"blocks.0": 0.5, "blocks.1": 0.5})
    table = pd.DataFrame([{"preset": preset.name, "method": m, "prune_ratio": 0.5, "seed": s, "acc": 0.8,
                           "keep_ratios": keep} for m in ("p3b", "l1") for s in seeds])
    names = diagnosis.variants(preset, table, "l1", 0.5, seeds[0])
    record = tmp_path / "diag.csv"
    _write_record(record, pd.DataFrame([{"preset": preset.name, "method": name, "prune_ratio": 0.5, "seed": s,
                                         "acc": 0.8, "baseline": "l1"} for s in seeds for name in names]), preset)
    return preset, table, record, len(names)


def test_a_diagnosis_read_from_its_record_gives_only_the_seeds_asked_for(tmp_path, monkeypatch):
    preset, table, record, n_variants = _diagnosis_inputs(tmp_path, seeds=[0, 1, 2])

    def must_not_run(*_, **__):
        raise AssertionError("a recorded diagnostic run ran again")

    monkeypatch.setattr(diagnosis, "run_p3b", must_not_run)
    diag = diagnosis.diagnose(preset, table, "l1", 0.5, seeds=[0, 2], record=record, progress=False)
    assert sorted(set(diag.seed)) == [0, 2] and len(diag) == 2 * n_variants
    assert sorted(set(pd.read_csv(record).seed)) == [0, 1, 2]  # the record keeps every seed
    assert sorted(set(diagnosis.diagnose(preset, table, "l1", 0.5, record=record, progress=False).seed)) == [0, 1, 2]


def test_run_names_without_histories_are_refused_before_anything_changes(tmp_path):
    earlier = save_run_files(tmp_path, pd.DataFrame({"acc": [0.5]}), [History(meta={"run": "old"})])
    with pytest.raises(ConfigError, match=r"runs gives 2 run name\(s\) \('a', 'b'\) but no History"):
        save_run_files(tmp_path, pd.DataFrame({"acc": [0.9]}), [], runs=["a", "b"])
    assert History.load(earlier["histories"]).meta["run"] == "old"
    assert pd.read_csv(earlier["table"]).acc.tolist() == [0.5]
    # no names for no Histories is consistent: the table alone is written
    assert sorted(save_run_files(tmp_path, pd.DataFrame({"acc": [0.9]}), [], runs=[])) == ["table"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [TABLE_FILE]
    assert HISTORIES_FILE not in {p.name for p in tmp_path.iterdir()}


def test_a_diagnosis_read_from_its_record_gives_only_this_baseline_s_variants(tmp_path, monkeypatch):
    """A record holding an l1 diagnosis at the same ratio: diagnosing uniform reuses P3B's shared variants (now
    labelled uniform) and leaves l1's own variants out, so that diagnosed_pairs lists only the pair asked for."""
    from sparselab.experiments.p3b import _write_record

    preset, table, record, _ = _diagnosis_inputs(tmp_path, seeds=[0])
    table = pd.concat([table, table[table.method == "l1"].assign(method="uniform")], ignore_index=True)
    uniform_own = [name for name in diagnosis.variants(preset, table, "uniform", 0.5, 0) if name.startswith("uniform")]
    recorded = pd.read_csv(record)
    _write_record(record, pd.concat([recorded, pd.DataFrame([
        {"preset": preset.name, "method": name, "prune_ratio": 0.5, "seed": 0, "acc": 0.7, "baseline": "uniform"}
        for name in uniform_own])], ignore_index=True), preset)
    monkeypatch.setattr(diagnosis, "run_p3b", lambda *_, **__: (_ for _ in ()).throw(AssertionError("ran again")))
    diag = diagnosis.diagnose(preset, table, "uniform", 0.5, record=record, progress=False)
    assert sorted(diag.method) == sorted(set(diagnosis.variants(preset, table, "uniform", 0.5, 0)))
    assert not diag.method.str.startswith("l1").any() and "p3b_l1_selection" not in set(diag.method)
    assert set(diag.baseline) == {"uniform"} and diagnosis.diagnosed_pairs(diag) == [("uniform", 0.5)]
