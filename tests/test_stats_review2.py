"""Intervals and verdicts refuse rows that do not belong together and name only what the numbers show."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sparselab import stats
from sparselab.errors import ConfigError
from sparselab.experiments import diagnosis, findings, report


def test_a_late_convergence_seed_given_twice_is_refused_not_counted_as_two():
    rho = pd.DataFrame({"cls": [0.3, 0.3, 0.4]}, index=pd.Index([0, 0, 1], name="seed"))
    with pytest.raises(ConfigError, match=r"seeds \[0\] more than once"):
        findings.late_convergence_findings(rho)  # was: "3 seeds — supports" from two seeds
    once = findings.late_convergence_findings(rho.iloc[1:])[0]
    assert "2 seeds" in once and once.endswith("inconclusive")


def test_an_unpaired_seed_does_not_lift_the_both_at_chance_guard():
    t = pd.DataFrame({"method": ["hypersparse"] * 3 + ["layerwise"] * 2, "sparsity": 0.995,
                      "seed": [0, 1, 2, 0, 1], "acc": [0.1031, 0.1032, 0.80, 0.1, 0.1], "chance_acc": 0.1})
    # seeds 0 and 1 pair, both sides at chance in each; seed 2 has no layerwise run and pairs with nothing
    assert findings.art_findings(t)[0] == ("hypersparse − layerwise at 99.5 %: both methods at chance in every "
                                           "seed (2) — no comparison")
    # seed 2's layerwise run measured nothing: it pairs with nothing either
    diverged = pd.concat([t, pd.DataFrame({"method": ["layerwise"], "sparsity": [0.995], "seed": [2],
                                                  "acc": [math.nan], "chance_acc": [0.1]})], ignore_index=True)
    with pytest.warns(RuntimeWarning, match="not finite"):
        lines = findings.art_findings(diverged)
    assert lines[0].endswith("both methods at chance in every seed (2) — no comparison")


def test_a_summary_over_seeds_refuses_a_seed_recorded_twice():
    t = pd.DataFrame({"method": ["a"] * 3, "prune_ratio": 0.5, "seed": [0, 0, 1], "acc": [0.9, 0.9, 0.8]})
    with pytest.raises(ConfigError, match="repeat a"):
        stats.summarize_ci(t)  # was: n = 3 and a narrower interval
    row = stats.summarize_ci(t.iloc[1:]).iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.85)
    assert stats.summarize_ci(t.drop(columns="seed"))["n"].iloc[0] == 3  # without seeds: runs as they are


def test_values_without_a_seed_do_not_pair_with_each_other():
    a = pd.Series([0.9, 0.8, 0.7], index=[0, 1, np.nan])
    b = pd.Series([0.5, 0.6, 0.4], index=[0, 1, np.nan])
    with pytest.raises(ConfigError, match="without a seed"):
        stats.paired_mean_ci(a, b)  # was: 3 seeds, the two seedless values paired
    t = pd.DataFrame({"method": ["p3b"] * 3 + ["dense"] * 3, "prune_ratio": [0.5] * 3 + [0.0] * 3,
                      "seed": [0, 1, np.nan] * 2, "acc": [0.9, 0.91, 0.5, 0.9, 0.9, 0.9]})
    with pytest.raises(ConfigError, match="without a seed"):
        findings.p3b_findings(t)


def _pair_tables(p3b, l1, static):
    seeds = list(range(len(p3b)))
    table = pd.DataFrame({"method": ["p3b"] * len(seeds) + ["l1"] * len(seeds), "prune_ratio": 0.5,
                          "seed": seeds * 2, "acc": list(p3b) + list(l1)})
    diag = pd.DataFrame({"method": "l1_allocation_static", "prune_ratio": 0.5, "seed": seeds, "acc": list(static),
                         "baseline": "l1"})
    return table, diag


def test_a_mixed_allocation_verdict_names_only_the_method_it_differs_from():
    p3b = [0.80, 0.81, 0.82, 0.80, 0.81]
    l1 = [0.70, 0.75, 0.72, 0.78, 0.71]
    static = [0.74, 0.71, 0.76, 0.73, 0.75]  # about l1, clearly below P3B
    line = next(x for x in diagnosis.diagnosis_conclusions(*_pair_tables(p3b, l1, static))
                if x.startswith("allocation or selection"))
    assert "differ from P3B but cannot be told apart from l1" in line and "differ from both" not in line
    static = [0.86, 0.84, 0.88, 0.85, 0.87]
    p3b = [0.84, 0.88, 0.85, 0.89, 0.84]  # static about P3B, clearly above l1
    line = next(x for x in diagnosis.diagnosis_conclusions(*_pair_tables(p3b, l1, static))
                if x.startswith("allocation or selection"))
    assert "differ from l1 but cannot be told apart from P3B" in line


def test_two_runs_of_one_diagnostic_variant_and_seed_are_refused_one_run_listed_twice_is_not():
    table, _ = _pair_tables([0.8, 0.81, 0.82], [0.7, 0.75, 0.72], [0.0] * 3)
    diag = pd.DataFrame({"method": "p3b_long_windows", "prune_ratio": 0.5, "seed": [0, 1, 2, 0, 1, 2],
                         "acc": [0.81, 0.80, 0.83, 0.81, 0.80, 0.83], "baseline": ["l1"] * 3 + ["uniform"] * 3})
    shared = diagnosis.diagnosis_findings(table, diag, "l1", 0.5)
    assert any(line.startswith("p3b_long_windows − p3b at 50 %") and "3 seeds" in line for line in shared)
    other = diag.assign(acc=[0.81, 0.80, 0.83, 0.70, 0.80, 0.83])
    with pytest.raises(ConfigError, match="p3b_long_windows at 0.5, seed 0 more than once"):
        diagnosis.diagnosis_findings(table, other, "l1", 0.5)  # was: the first row kept without a word
    with pytest.raises(ConfigError, match="more than once"):
        diagnosis.diagnosis_conclusions(table, other, "l1", 0.5)


def test_the_results_section_refuses_a_dense_seed_recorded_twice():
    art = pd.DataFrame({"method": ["dense"] * 3 + ["gmp"] * 2, "sparsity": [0.0, 0.0, 0.0, 0.9, 0.9],
                        "seed": [0, 0, 1, 0, 1], "acc": [0.90, 0.90, 0.88, 0.85, 0.86]})
    tables = {"art_cpu-full": art}
    with pytest.raises(ConfigError, match=r"repeat a \(method, seed\): e.g. 'dense', seed 0"):
        report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))  # was: dense over 3 "seeds"
    tables["art_cpu-full"] = art.drop(index=1)
    assert "| dense | 89.0 ± 12.7 |" in report.results_markdown(lambda name: tables.get(name, pd.DataFrame()))


def test_p3b_against_its_own_variant_in_the_diagnosis_reads_higher_or_lower_not_a_verdict():
    p3b, wanda = [0.80, 0.81, 0.82, 0.80, 0.81], [0.84, 0.86, 0.85, 0.87, 0.85]
    table, diag = _pair_tables(p3b, wanda, [0.83] * 5)
    table = table.replace("l1", "p3b_wanda")
    diag = diag.assign(method="p3b_wanda_allocation_static", baseline="p3b_wanda")
    first = diagnosis.diagnosis_findings(table, diag, "p3b_wanda", 0.5)[0]
    # the paper claims nothing about sparselab's Wanda variant: as in p3b_findings, a direction, not "contradicts"
    assert first.startswith("P3B − p3b_wanda at 50 %") and first.endswith("lower")
    table, diag = _pair_tables(p3b, wanda, [0.83] * 5)
    assert diagnosis.diagnosis_findings(table, diag, "l1", 0.5)[0].endswith("contradicts")
