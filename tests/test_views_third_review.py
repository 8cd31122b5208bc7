"""Statistics, figures and explorers, given awkward inputs (third part): lines and titles that state the confidence
their intervals were computed with, claims whose margin makes sense, values that are not numbers refused by name,
tables with an unknown layer drawn, log axes that name what they cannot draw, and a trace scrubber that a one-notch
move takes to the next update."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparselab as sl
from sparselab import stats
from sparselab.attribution import AttributionComparison
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots import (
    plot_art_keep_ratios,
    plot_attribution_comparison,
    plot_keep_ratios,
    plot_layer_keep_ratios,
    plot_paired_differences,
)
from sparselab.widgets import TraceScrubber

ACC = st.floats(0.0, 1.0, allow_nan=False)


def table(acc_a, acc_b, seeds_a, seeds_b) -> pd.DataFrame:
    return pd.DataFrame({"method": ["a"] * len(seeds_a) + ["b"] * len(seeds_b), "prune_ratio": 0.9,
                         "seed": list(seeds_a) + list(seeds_b), "acc": list(acc_a) + list(acc_b)})


# ------------------------------------------------------------------------------------------------ statistics
@settings(deadline=None, max_examples=60)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=10), st.floats(0.5, 0.999))
def test_mean_ci_is_scipys_student_t_interval_at_any_confidence_and_covers_the_mean(values, confidence):
    from scipy import stats as st_

    mean, low, high, n = stats.mean_ci(values, confidence)
    x = np.array(values)
    assert n == len(x) and low <= mean <= high
    if x.std() > 1e-9:
        lo, hi = st_.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=st_.sem(x))
        assert low == pytest.approx(lo, rel=1e-9, abs=1e-9) and high == pytest.approx(hi, rel=1e-9, abs=1e-9)


@settings(deadline=None, max_examples=60)
@given(st.dictionaries(st.integers(0, 9), ACC, min_size=1, max_size=8),
       st.dictionaries(st.integers(0, 9), ACC, min_size=1, max_size=8))
def test_paired_differences_are_the_interval_of_the_direct_per_seed_differences(a, b):
    common = sorted(set(a) & set(b))
    d = stats.paired_differences(table(a.values(), b.values(), a, b), "b", methods="a").iloc[0]
    assert int(d["n"]) == len(common)
    expected = stats.mean_ci([a[s] - b[s] for s in common])
    for got, want in zip((d["diff"], d["low"], d["high"]), expected[:3]):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)


@settings(deadline=None, max_examples=30)
@given(st.floats(0.5, 0.995))
def test_findings_and_the_figure_state_the_confidence_their_intervals_have(confidence):
    t = table([0.90, 0.92, 0.91], [0.88, 0.89, 0.885], [0, 1, 2], [0, 1, 2])
    diffs = stats.paired_differences(t, "b", confidence=confidence)
    label = stats.confidence_label(confidence)
    (line,) = stats.findings_from(diffs)
    low, high = diffs.loc[0, ["low", "high"]]
    assert f"{label} CI [{low * 100:+.2f}, {high * 100:+.2f}]" in line
    assert f"({label} intervals)" in plot_paired_differences(diffs).layout.title.text
    # a 95 % table still says 95 %, and a table made elsewhere (without the record) is taken to be one
    assert "95 % CI" in stats.findings_from(stats.paired_differences(t, "b"))[0]
    assert "95 % CI" in stats.findings_from(pd.DataFrame(diffs.to_dict("records")))[0]


def test_a_90_percent_interval_is_not_called_a_95_percent_one():
    t = table([0.90, 0.92, 0.91], [0.88, 0.89, 0.885], [0, 1, 2], [0, 1, 2])
    diffs = stats.paired_differences(t, "b", confidence=0.9)
    assert "90 % CI" in stats.findings_from(diffs)[0] and "95 %" not in stats.findings_from(diffs)[0]
    assert "90 % intervals" in plot_paired_differences(diffs).layout.title.text
    assert "99.5 % CI" in stats.finding("a − b", 0.01, 0.0, 0.02, 3, confidence=0.995)
    with pytest.raises(ConfigError, match="confidence"):
        stats.finding("a − b", 0.01, 0.0, 0.02, 3, confidence=95)


@pytest.mark.parametrize("margin", [math.nan, math.inf, -0.01, "0.01", True])
def test_noninferiority_refuses_a_margin_that_is_not_a_loss(margin):
    # a NaN margin made every claim inconclusive, a negative one called a gain a loss beyond the margin
    with pytest.raises(ConfigError, match="margin"):
        stats.noninferior(0.001, 0.002, margin)
    with pytest.raises(ConfigError, match="margin"):
        stats.finding("a − b", 0.0015, 0.001, 0.002, 3, margin=margin)


def test_noninferiority_with_a_margin_of_zero_or_a_numpy_number():
    assert stats.noninferior(0.001, 0.002, 0) == "supports"
    assert stats.noninferior(-0.03, -0.02, np.float64(0.01)) == "contradicts"


def test_values_that_are_not_numbers_are_refused_by_name_and_none_is_unmeasured():
    t = table([0.9, "x"], [0.8, 0.7], [0, 1], [0, 1])
    for call in (lambda: stats.summarize_ci(t), lambda: stats.paired_differences(t, "b")):
        with pytest.raises(ConfigError, match="'acc'.*'x'"):
            call()
    with pytest.raises(ConfigError, match="numbers"):
        stats.mean_ci([0.5, "0.6"])
    with pytest.warns(RuntimeWarning, match="1 of 3 values are not finite"):
        assert stats.mean_ci([0.5, None, 0.7])[::3] == (pytest.approx(0.6), 2)
    t = table([0.9, None, 0.8], [0.8, 0.7, 0.7], [0, 1, 2], [0, 1, 2]).astype({"acc": object})
    with pytest.warns(RuntimeWarning, match="not finite"):
        d = stats.paired_differences(t, "b").iloc[0]
    assert int(d["n"]) == 2 and d["diff"] == pytest.approx(0.1)


def test_paired_differences_take_one_method_given_as_a_string():
    t = table([0.9, 0.8], [0.85, 0.8], [0, 1], [0, 1]).replace({"method": {"a": "p3b", "b": "uniform"}})
    d = stats.paired_differences(t, "uniform", methods="p3b")  # not the methods 'p', '3' and 'b'
    assert d["method"].tolist() == ["p3b"] and d["diff"].iloc[0] == pytest.approx(0.025)


def test_a_finding_without_a_seed_in_common_says_so_instead_of_printing_nan():
    t = pd.DataFrame({"method": ["a", "a", "b", "b", "a"], "prune_ratio": [0.5, 0.5, 0.5, 0.5, 0.9],
                      "seed": [0, 1, 0, 1, 0], "acc": [0.9, 0.8, 0.85, 0.8, 0.7]})
    lines = stats.findings_from(stats.paired_differences(t, "b"))
    assert lines[1] == "a − b at 90 %: no difference measured (0 seeds) — inconclusive"
    assert "nan" not in " ".join(lines) and lines[0].startswith("a − b at 50 %: +2.50 points, 95 % CI")


# ---------------------------------------------------------------------------------------------------- figures
def test_layer_keep_ratios_draw_a_table_whose_layer_has_no_counts():
    # a NaN keep ratio shows no bar (as documented); its NaN counts crashed the hover and lowered the overall ratio
    t = pd.DataFrame({"layer": ["a.weight", "b.weight"], "keep_ratio": [0.5, np.nan], "kept": [5, np.nan],
                      "numel": [10, 20]})
    fig = plot_layer_keep_ratios(t)
    assert list(fig.data[0].y) == [0.5, None]
    assert fig.data[0].name == "keep ratio (overall 0.5)"
    assert fig.data[0].customdata[0].endswith("kept 5 of 10") and "kept ? of 20" in fig.data[0].customdata[1]


def art_history(second: tuple[float, float]) -> History:
    h = History(meta={"run": "hs"})
    for e, (a, b) in enumerate([(0.3, 0.1), second]):
        h.log_metrics({"art_epoch": e}, step=10 * e, epoch=e)
        h.log_blocks("keep_ratio", {"fc1.weight": a, "fc2.weight": b}, step=10 * e, epoch=e)
    return h


def test_art_keep_ratios_on_a_log_axis_name_the_ratios_of_zero_they_cannot_draw():
    h = art_history((0.2, 0.0))
    title = plot_art_keep_ratios(h, log=True).layout.title.text
    assert "1 value(s) not above 0" in title and "fc2.weight at ART epoch 1: 0" in title
    assert "not above 0" not in plot_art_keep_ratios(h).layout.title.text  # a linear axis draws them
    assert "not above 0" not in plot_art_keep_ratios(art_history((0.2, 0.05)), log=True).layout.title.text


def test_keep_ratios_refuse_a_metric_that_is_not_a_keep_ratio():
    # the axes run from 0 to 1.05 and the titles say "keep ratio": an importance of 3 was drawn off the axis
    h = History()
    h.log_blocks("importance", {"blocks.0.attn": 3.0, "blocks.0.mlp": 5.0}, step=1, epoch=0)
    h.log_blocks("keep_applied", {"blocks.0.attn": 0.3, "blocks.0.mlp": 0.5}, step=1, epoch=0)
    with pytest.raises(ConfigError, match="keep_applied' or 'keep_goal'.*'importance'"):
        plot_keep_ratios(h, metric="importance")
    assert [list(t.y) for t in plot_keep_ratios(h).data if t.type == "bar"] == [[0.3], [0.5]]


@pytest.mark.parametrize("labels", ["dense", ("dense",), ("a", "b", "c"), ("dense", 1)])
def test_attribution_plot_refuses_labels_that_are_not_two_names(labels):
    r = AttributionComparison(torch.rand(2, 4, 4), torch.rand(2, 4, 4), torch.tensor([1, 3]),
                              torch.tensor([0.9, 0.5]), "saliency")
    with pytest.raises(ConfigError, match="labels"):
        plot_attribution_comparison(r, torch.rand(2, 1, 4, 4), labels=labels)
    assert plot_attribution_comparison(r, torch.rand(2, 1, 4, 4), labels=["HS", "GMP"]) is not None


# -------------------------------------------------------------------------------------------------- explorers
def scrubber_history() -> History:
    h = History()
    for step, keep in ((0, 0.9), (3, 0.8), (9, 0.7), (10, 0.6)):  # irregular updates: the slider moves by 1
        h.log_blocks("keep_applied", {"blocks.0.attn": keep, "blocks.0.mlp": keep}, step=step, epoch=0)
    return h


def test_trace_scrubber_one_notch_move_reaches_the_next_update_either_way():
    s = TraceScrubber(scrubber_history())
    assert s.slider.step == 1 and s.step == 10
    s.slider.value = 9
    s.slider.value = 8  # one notch down from 9: the nearest update is 9 itself, which would undo the move
    assert (s.step, s.slider.value, list(s.keep.data[0].y)) == (3, 3, [0.8, 0.8])
    s.slider.value = 4  # one notch up from 3
    assert (s.step, s.slider.value, list(s.keep.data[0].y)) == (9, 9, [0.7, 0.7])
    s.slider.value = 2  # two notches down from 9 lands nearer 3 than 9: the nearest update
    assert (s.step, s.slider.value) == (3, 3)
    s.slider.value = 1  # one notch down from 3, nearer 0
    assert (s.step, s.slider.value) == (0, 0)
    for value, step in ((10, 10), (0, 0), (10, 10)):  # the ends of the range
        s.slider.value = value
        assert s.step == step and "at step <b>%d</b>" % step in s.info.value


def test_explorer_inputs_refuse_a_scale_that_is_not_a_name_before_any_work():
    from sparselab.experiments.explorers import prepare

    with pytest.raises(ConfigError, match="scale must be one of 'tiny', 'cpu'"):
        prepare(["tiny"])
    with pytest.raises(ConfigError, match="progress"):
        prepare("tiny", progress="no")


def test_export_figures_takes_one_format_given_as_a_string(tmp_path):
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    paths = sl.plots.export_figures({"line": fig}, tmp_path, formats="svg")
    assert [p.name for p in paths] == ["line.svg"] and b"<svg" in paths[0].read_bytes()[:500]


def test_a_one_seed_dense_reference_is_a_line_that_says_it_has_no_interval():
    from sparselab.plots.stats import plot_accuracy_ci

    t = pd.DataFrame({"method": ["dense"] + ["p3b"] * 3, "prune_ratio": [0.0, 0.5, 0.5, 0.5], "seed": [0, 0, 1, 2],
                      "acc": [0.95, 0.90, 0.91, 0.92]})
    layout = plot_accuracy_ci(t).layout
    assert not layout.shapes or all(s.type != "rect" for s in layout.shapes)  # no band of NaN bounds
    assert any("n=1, no interval" in a.text for a in layout.annotations)
    three = pd.concat([t, pd.DataFrame({"method": ["dense"] * 2, "prune_ratio": [0.0] * 2, "seed": [1, 2],
                                        "acc": [0.96, 0.955]})])
    layout = plot_accuracy_ci(three).layout
    assert sum(s.type == "rect" for s in layout.shapes) == 1
    assert any("(n=3)" in a.text for a in layout.annotations)
