"""Result records: the code a row names is the code the process started with, and dense fine-tuning is never a
method of a prune ratio."""
from __future__ import annotations

import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import p3b
from sparselab.experiments.provenance import code_version


def test_a_record_reads_the_code_version_before_any_run(tmp_path):
    code_version.cache_clear()
    assert p3b._read_record(tmp_path / "new.csv", p3b.p3b_preset("tiny")).empty
    # was: read when the first row was written, after its run (a commit meanwhile named code that did not run it)
    assert code_version.cache_info().currsize == 1


def test_dense_is_refused_as_a_method_of_a_comparison_or_a_preset(tmp_path, monkeypatch):
    def never(*_, **__):
        raise AssertionError("nothing may run")

    monkeypatch.setattr(p3b, "run_p3b", never)
    monkeypatch.setattr(p3b, "load_data", never)
    with pytest.raises(ConfigError, match="leave 'dense' out of methods"):
        # was: dense run once per prune ratio, every run recorded at ratio 0, and again on each later call
        p3b.compare(p3b.p3b_preset("tiny"), methods=["uniform", "dense"], record=tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(ConfigError, match="lists 'dense' among its methods"):
        p3b.p3b_preset("tiny", methods=("p3b", "dense"))


def test_an_art_record_is_not_continued_from_another_warm_up(tmp_path):
    import pandas as pd

    from sparselab.experiments import art

    preset = art.art_preset("tiny")
    record = tmp_path / "art.csv"
    art.compare(preset, methods=["gmp"], sparsities=[0.9], seeds=[0], record=record, progress=False)
    table = pd.read_csv(record)
    # as if seed 0's runs had come from another warm-up, with one of its runs still to do
    table.loc[table.method == "dense", "acc"] += 0.01
    table[table.method != "gmp"].to_csv(record, index=False)
    with pytest.raises(ConfigError, match="the warm-up of seed 0 reaches test accuracy"):
        art.compare(preset, methods=["gmp"], sparsities=[0.9], seeds=[0], record=record, progress=False)
    # the record as it was made continues
    table.loc[table.method == "dense", "acc"] -= 0.01
    table[table.method != "gmp"].to_csv(record, index=False)
    again, _ = art.compare(preset, methods=["gmp"], sparsities=[0.9], seeds=[0], record=record, progress=False)
    assert set(again.method) == {"dense", "gmp"}
