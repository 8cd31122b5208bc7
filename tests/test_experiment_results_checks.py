"""Result tables and report text say only what was measured, and runs use what they are given."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import art, diagnosis, report


# ====================================================================== diagnosis conclusions
def _one_seed() -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.DataFrame({"method": ["p3b", "uniform"], "prune_ratio": [0.5, 0.5], "seed": [0, 0],
                          "acc": [0.70, 0.80]})
    names = ["uniform_allocation_static", "p3b_allocation_static", "p3b_long_windows", "p3b_2x_schedule",
             "uniform_2x_schedule"]
    diag = pd.DataFrame({"method": names, "prune_ratio": [0.5] * 5, "seed": [0] * 5,
                         "acc": [0.79, 0.71, 0.72, 0.73, 0.81], "baseline": ["uniform"] * 5})
    return table, diag


def test_diagnosis_conclusions_of_one_seed_draw_no_conclusion():
    table, diag = _one_seed()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lines = diagnosis.diagnosis_conclusions(table, diag, "uniform", 0.5)
    assert len(lines) == 5
    for line in lines:
        assert "nan" not in line.lower()  # no interval to print
        assert "no interval (1 seed)" in line and "no conclusion" in line
        assert "seed noise" not in line and "interval covers 0" not in line  # nothing was tested against noise
    assert lines[0].startswith("P3B − uniform at 50 %: -10.00 points, no interval (1 seed)")


def test_diagnosis_conclusions_without_a_common_seed_measure_no_difference():
    table, diag = _one_seed()
    diag = diag.assign(seed=3)  # the variants ran for a seed the comparison does not hold
    lines = diagnosis.diagnosis_conclusions(table, diag, "uniform", 0.5)
    assert all("no difference measured (0 seeds)" in line for line in lines[1:4])
    assert "-8.00 points, no interval (1 seed)" in lines[4]  # both 2x schedules ran for seed 3
    assert not any("nan" in line.lower() for line in lines)


def test_diagnosis_conclusions_with_an_interval_keep_their_rules():
    seeds = range(4)
    table = pd.DataFrame([{"method": m, "prune_ratio": 0.5, "seed": s, "acc": acc + 0.001 * s}
                          for m, acc in (("p3b", 0.70), ("uniform", 0.80)) for s in seeds])
    lines = diagnosis.diagnosis_conclusions(table, pd.DataFrame(
        [{"method": "p3b_long_windows", "prune_ratio": 0.5, "seed": s, "acc": 0.70 + 0.002 * s,
          "baseline": "uniform"} for s in seeds]), "uniform", 0.5)
    assert lines[0].endswith("4 seeds: P3B trails the baseline.")
    assert "no conclusion" not in lines[1]


# ====================================================================== results section
def _selection(**changes) -> pd.DataFrame:
    row = {"candidate": "cpu-split", "data": "fashion_mnist", "dense_mean": 0.9, "dense_std": 0.002,
           "uniform_mean": 0.87, "loss": 0.03, "loss_low": 0.02, "loss_high": 0.04, "qualifies": False}
    return pd.DataFrame([{**row, **changes}])


def _section(selection: pd.DataFrame) -> str:
    return report.results_markdown(lambda name: selection if name == "setting_selection" else pd.DataFrame())


def test_the_selection_table_names_unmeasured_values_instead_of_printing_nan():
    text = _section(_selection(dense_std=float("nan"), uniform_mean=float("nan"), loss=float("nan"),
                               loss_low=float("nan"), loss_high=float("inf")))
    row = next(line for line in text.splitlines() if line.startswith("| `cpu-split`"))
    assert "nan" not in row.lower() and "inf" not in row.lower()
    assert row == "| `cpu-split` | fashion_mnist | 90.00 (no std) | not measured | not measured | no |"


def test_the_selection_table_of_one_seed_gives_the_loss_without_an_interval():
    text = _section(_selection(loss_low=float("nan"), loss_high=float("nan")))
    assert "| 90.00 ± 0.20 | 87.00 | 3.0 (no interval) | no |" in text
    assert "| 90.00 ± 0.20 | 87.00 | 3.0 [2.0, 4.0] | no |" in _section(_selection())


def test_write_report_links_the_figures_where_it_writes_them(tmp_path, monkeypatch):
    import sparselab.plots

    written = {}
    monkeypatch.setattr(report, "result_figures", lambda: {})
    monkeypatch.setattr(sparselab.plots, "export_figures",
                        lambda figures, folder, formats: written.setdefault("folder", folder))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{report.START}\nold\n{report.END}\n")
    report.write_report(readme, tmp_path / "out" / "figures")
    text = readme.read_text()
    assert written["folder"] == tmp_path / "out" / "figures"
    assert "](out/figures/p3b_accuracy.png)" in text and "docs/results/figures" not in text
    report.write_report(readme, None)  # no figures written: the committed ones are linked
    assert f"]({report.FIGURES}/p3b_accuracy.png)" in readme.read_text()


# ====================================================================== ART runs
def test_run_art_refuses_the_warm_start_of_another_seed():
    preset = art.art_preset("tiny", warmup_epochs=0)
    data = art.load_data(preset)
    warm = art.warm_start(preset, 0, data, progress=False)
    with pytest.raises(ConfigError, match="warm-up of seed 0, but this run is seed 1"):
        art.run_art(preset, "oneshot", 0.9, seed=1, data=data, warm=warm, progress=False)
    run = art.run_art(preset, "oneshot", 0.9, seed=0, data=data, warm=warm, progress=False)
    assert run.history.meta["seed"] == 0
