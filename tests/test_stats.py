"""Statistics over seeds and the late-convergence measure, checked against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparselab import stats
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.probes import half_benefit_moments, late_convergence


@settings(deadline=None)  # the first call imports scipy.stats
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12))
def test_mean_ci_is_the_student_t_interval(values):
    from scipy import stats as st_

    mean, low, high, n = stats.mean_ci(values)
    x = np.array(values)
    assert n == len(x) and math.isclose(mean, x.mean(), abs_tol=1e-12)
    if x.std() > 1e-9:
        lo, hi = st_.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st_.sem(x))
        assert math.isclose(low, lo, rel_tol=1e-9, abs_tol=1e-9) and math.isclose(high, hi, rel_tol=1e-9,
                                                                                    abs_tol=1e-9)


def test_paired_differences_pair_by_seed_and_give_verdicts():
    t = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 4 + ["c"] * 3, "prune_ratio": 0.9,
                      "seed": [0, 1, 2, 3] * 2 + [0, 1, 2],
                      "acc": [0.80, 0.85, 0.90, 0.95, 0.79, 0.84, 0.89, 0.94, 0.85, 0.91, 0.955]})
    d = stats.paired_differences(t, "a").set_index("method")
    # b is 1 point below a on every seed: the pairing sees a zero-spread difference the seed spread would hide
    assert math.isclose(d.loc["b", "diff"], -0.01) and d.loc["b", "n"] == 4
    assert stats.verdict(d.loc["c", "low"], d.loc["c", "high"]) == "supports"
    assert d.loc["c", "n"] == 3  # seed 3 has no c
    lines = stats.findings_from(stats.paired_differences(t, "a", methods=["c"]))
    assert lines[0].startswith("c − a at 90 %: +") and lines[0].endswith("3 seeds — supports")
    assert stats.verdict(-0.02, -0.01) == "contradicts" and stats.verdict(-0.01, 0.02) == "inconclusive"
    assert stats.verdict(*stats.mean_ci([0.5])[1:3]) == "inconclusive"  # one seed decides nothing
    with pytest.raises(ConfigError, match="baseline"):
        stats.paired_differences(t, "zzz")
    with pytest.raises(ConfigError, match="no column"):
        stats.paired_differences(t.drop(columns="seed"), "a")


def _history(profiles):
    h = History()
    names = [f"blocks.{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(len(profiles[0]))]
    for step, values in enumerate(profiles, start=1):
        h.log_blocks("benefit_cls", dict(zip(names, values)), step=step, epoch=step - 1)
    return h


def test_late_convergence_ranks_arrival_against_depth():
    late = _history([[1.0, 0.2, 0.0, 0.0], [1.0, 0.8, 0.3, 0.0], [1.0, 0.9, 0.9, 0.2], [1.0, 1.0, 1.0, 0.9]])
    table = half_benefit_moments(late)
    assert table.moment.tolist() == [1, 2, 3, 4] and table.depth.tolist() == [0, 1, 2, 3]
    assert late_convergence(late)["rho"] == pytest.approx(1.0)
    early = _history([[0.1, 0.2, 0.5, 1.0], [0.5, 0.9, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert late_convergence(early)["rho"] < 0
    # the profile is normalised by each moment's maximum before comparing with the final value
    scaled = _history([[2.0, 1.0, 0.0], [4.0, 2.0, 2.0]])
    assert half_benefit_moments(scaled).moment.tolist() == [1, 1, 2]
    with pytest.raises(ConfigError, match="benefit_patch"):
        late_convergence(late, metric="benefit_patch")


def test_figures_show_intervals_and_verdicts():
    from sparselab.plots.stats import plot_accuracy_ci, plot_paired_differences

    t = pd.DataFrame({"method": ["dense"] * 3 + ["p3b"] * 6 + ["uniform"] * 6,
                      "prune_ratio": [0.0] * 3 + [0.5, 0.5, 0.5, 0.9, 0.9, 0.9] * 2, "seed": [0, 1, 2] * 5,
                      "acc": [0.95, 0.96, 0.955, 0.94, 0.945, 0.95, 0.90, 0.91, 0.92,
                              0.93, 0.935, 0.94, 0.85, 0.86, 0.87]})
    fig = plot_accuracy_ci(t)
    assert [tr.name for tr in fig.data] == ["p3b", "uniform"]  # dense is the reference band
    p3b = fig.data[0]
    mean, low, high, n = stats.mean_ci([0.90, 0.91, 0.92])
    assert p3b.y[1] == pytest.approx(mean * 100) and p3b.error_y.array[1] == pytest.approx((high - mean) * 100)
    diffs = stats.paired_differences(t[t.method != "dense"], "uniform")
    fig = plot_paired_differences(diffs)
    assert len(fig.data) == 2 and all(tr.marker.color == "#2ca02c" for tr in fig.data)


def test_a_seed_twice_a_bad_confidence_and_a_diverged_seed_are_not_silent():
    t = pd.DataFrame({"method": ["p3b"] * 3 + ["uniform"] * 3, "prune_ratio": 0.9, "seed": [0, 1, 2] * 2,
                      "acc": [0.90, 0.92, 0.91, 0.88, 0.89, 0.885]})
    rerun = pd.DataFrame({"method": ["uniform"], "prune_ratio": [0.9], "seed": [0], "acc": [0.70]})
    with pytest.raises(ConfigError, match=r"repeat a \(method, prune_ratio, seed\): e.g. 'uniform' at "
                                          r"prune_ratio=0.9, seed 0"):
        stats.paired_differences(pd.concat([t, rerun]), "uniform")
    with pytest.raises(ConfigError, match="holds seeds \\[0\\] more than once"):
        stats.paired_mean_ci(pd.Series([0.9, 0.8], index=[0, 0]), pd.Series([0.5], index=[0]))
    for bad in (95, -1, 0, 1):
        with pytest.raises(ConfigError, match="confidence must be a number in \\(0, 1\\)"):
            stats.mean_ci([0.9, 0.91, 0.92], confidence=bad)
    with pytest.warns(RuntimeWarning, match="1 of 3 values are not finite"):
        assert stats.mean_ci([0.90, 0.91, float("nan")])[3] == 2
