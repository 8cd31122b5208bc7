"""The README's results section is what scripts/results_report.py writes from the committed result files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import report

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_results_section_is_generated_from_the_committed_files():
    readme = (ROOT / "README.md").read_text()
    assert report.replace_section(readme, report.results_markdown()) == readme
    section = readme.split(report.START, 1)[1].split(report.END, 1)[0]
    for figure in re.findall(r"\]\((docs/results/figures/[^)]+\.png)\)", section):
        assert (ROOT / figure).is_file(), figure


def test_the_section_follows_the_tables():
    tables = {
        "setting_selection": pd.DataFrame(),
        "p3b_cpu-full": pd.DataFrame({"method": ["dense"] * 2 + ["p3b"] * 2 + ["uniform"] * 2,
                                      "prune_ratio": [0.0, 0.0, 0.9, 0.9, 0.9, 0.9], "seed": [0, 1] * 3,
                                      "acc": [0.90, 0.92, 0.85, 0.87, 0.80, 0.81]}),
    }
    text = report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))
    assert "| P3B | 86.0 ± 12.7 |" in text  # mean 86.0, t(0.975, 1) · 1.414 / √2 = 12.7
    assert "| dense | 91.0 ± 12.7 |" in text
    assert "P3B − uniform at 90 %: +5.50 points" in text
    assert "ART" not in text.split("Findings")[0] and "art_accuracy" not in text
    with pytest.raises(ValueError, match="markers"):
        report.replace_section("no markers here", text)


@pytest.mark.parametrize("name", ["p3b_cpu-full", "art_cpu-full", "late_convergence", "p3b_cpu-full_diagnosis"])
def test_a_committed_table_is_of_one_code_version(name):
    """Paired differences within a table compare its rows with each other: rows of two versions would compare
    code changes along with the methods, so a committed table is run again whole, never in part."""
    from sparselab.experiments.committed import committed_results
    from sparselab.experiments.provenance import row_versions

    table = committed_results(name)
    if table.empty:
        pytest.skip(f"docs/results/{name}.csv is not committed")
    assert len(row_versions(table)) == 1, row_versions(table)


def test_a_diagnosis_of_other_code_than_the_p3b_table_is_not_paired_with_it():
    from sparselab.experiments.provenance import CODE_COLUMN

    seeds = [0, 1, 2]
    p3b = pd.DataFrame({"method": ["p3b"] * 3 + ["l1"] * 3, "prune_ratio": 0.9, "seed": seeds * 2,
                        "acc": [0.70, 0.71, 0.72, 0.80, 0.81, 0.82], CODE_COLUMN: "new"})
    diag = pd.DataFrame({"method": "p3b_long_windows", "prune_ratio": 0.9, "seed": seeds, "acc": [0.8, 0.81, 0.8],
                         "baseline": "l1", CODE_COLUMN: "old"})
    tables = {"p3b_cpu-full": p3b, "p3b_cpu-full_diagnosis": diag}
    text = report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))
    assert "P3B trails: l1 at 90 %" in text  # from the P3B table alone
    assert "the diagnosis holds rows of code the P3B table does not (old)" in text and "--fresh" in text
    assert "p3b_long_windows − p3b" not in text  # was: old variants paired with new P3B runs
    tables["p3b_cpu-full_diagnosis"] = diag.assign(**{CODE_COLUMN: "new"})
    text = report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))
    assert "p3b_long_windows − p3b at 90 %" in text and "holds rows of code" not in text


def test_the_selection_text_states_the_recorded_ratio_and_thresholds():
    row = {"candidate": "cpu-x", "data": "digits", "model": "m", "ratio": 0.75, "seeds": 5, "dense_mean": 0.9,
           "dense_std": 0.004, "uniform_mean": 0.85, "loss": 0.05, "loss_low": 0.03, "loss_high": 0.07,
           "qualifies": True, "min_loss": 0.02, "max_dense_std": 0.005}
    tables = {"setting_selection": pd.DataFrame([row])}
    text = report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))
    # was: "uniform allocation at 90 % must lose ≥ 3 points" whatever the rows recorded
    assert "uniform allocation at 75 % must lose ≥ 2 points" in text and "below 0.5 points" in text
    assert "| 85.00 at 75 % |" in text and "90 %" not in text


def test_the_text_alone_is_not_written_beside_figures_of_other_numbers(tmp_path):
    tables = {"p3b_cpu-full": pd.DataFrame({"method": ["p3b", "uniform"], "prune_ratio": 0.5, "seed": 0,
                                            "acc": [0.9, 0.8]})}
    results = lambda name: tables.get(name, pd.DataFrame())  # noqa: E731
    with pytest.raises(ConfigError, match="not drawn from the result tables p3b_cpu-full"):
        report.check_figures_current(tmp_path, results)  # no record of what the figures show
    (tmp_path / report.FIGURE_SOURCES).write_text(json.dumps(report.figure_sources(results)))
    report.check_figures_current(tmp_path, results)
    tables["p3b_cpu-full"] = tables["p3b_cpu-full"].assign(acc=[0.91, 0.8])
    with pytest.raises(ConfigError, match="p3b_cpu-full"):  # was: new text beside the old figures
        report.check_figures_current(tmp_path, results)


def test_a_paired_figure_is_linked_only_where_one_is_drawn():
    tables = {"p3b_cpu-full": pd.DataFrame({"method": "p3b", "prune_ratio": 0.5, "seed": [0, 1],
                                            "acc": [0.9, 0.8]})}
    text = report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))
    assert "p3b_accuracy.png" in text and "p3b_paired.png" not in text  # one method: no pair to draw
