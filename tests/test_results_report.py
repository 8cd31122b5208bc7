"""The README's results section is what scripts/results_report.py writes from the committed result files."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

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
