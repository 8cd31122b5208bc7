"""scripts/run_statistics.py: --fresh moves the records a call would continue out of the way, so a new run
records one code version; a late-convergence file of other code says so instead of being taken as done."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_statistics.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("run_statistics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_moves_only_the_records_of_the_parts_run(script, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    for name in ("p3b_cpu-full.csv", "p3b_cpu-full.csv.settings.json", "art_cpu-full.csv", "late_convergence.csv",
                 "setting_selection.csv"):
        (out / name).write_text(name)
    paths = script.record_files(["p3b", "late"], out, "cpu-full", "cpu-full")
    moved = script.archive(paths, tmp_path / "previous")
    assert sorted(p.name for p in moved) == ["late_convergence.csv", "p3b_cpu-full.csv",
                                             "p3b_cpu-full.csv.settings.json"]
    assert all(p.read_text() == p.name for p in moved)  # moved whole, not rewritten
    assert sorted(p.name for p in out.iterdir()) == ["art_cpu-full.csv", "setting_selection.csv"]
    assert script.archive(paths, tmp_path / "again") == [] and not (tmp_path / "again").exists()


def test_every_part_names_its_record(script, tmp_path):
    names = {p.name for p in script.record_files(script.PARTS, tmp_path, "cpu-full", "cpu")}
    assert {"p3b_cpu-full.csv", "art_cpu.csv", "late_convergence.csv", "p3b_cpu-full_diagnosis.csv"} <= names


def test_late_convergence_of_other_code_warns_and_runs_nothing(script, tmp_path, monkeypatch):
    path = tmp_path / "late_convergence.csv"
    pd.DataFrame({"preset": ["cpu"], "seed": [0], "cls": [0.1], "patch": [0.2], "code": ["0123456789ab"]}).to_csv(
        path, index=False)

    def must_not_run(*_, **__):
        raise AssertionError("a recorded preset ran again")

    monkeypatch.setattr(script.p3b, "late_convergence_by_seed", must_not_run)
    with pytest.warns(RuntimeWarning, match=r"other code than this .*0123456789ab \(1 rows\).*--fresh"):
        script.late_convergence(path, presets=("cpu",))
