"""Figures and statistics say what they show: the compared value on the axis, its unit and scale, the confidence
of the intervals; and History.last / History.series follow the step, not the order rows were logged in."""
import math

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.plots.stats import plot_accuracy_ci, plot_paired_differences
from sparselab.stats import findings_from, mean_ci, paired_against_all, paired_differences


def _table(value: str, a: list[float], b: list[float]) -> pd.DataFrame:
    n = len(a)
    return pd.DataFrame({"method": ["a"] * n + ["b"] * n, "prune_ratio": 0.5, "seed": list(range(n)) * 2,
                         value: a + b})


# ------------------------------------------------------------------ the paired-difference figure names its value
def test_a_loss_difference_is_drawn_as_a_loss_not_in_accuracy_points():
    diffs = paired_differences(_table("loss", [0.5, 0.7, 0.6], [0.3, 0.4, 0.35]), "b", value="loss")
    fig = plot_paired_differences(diffs, expect="negative")
    assert fig.layout.xaxis.title.text == "difference in loss"
    assert "accuracy" not in fig.layout.title.text and "loss" in fig.layout.title.text
    assert fig.data[0].x[0] == pytest.approx(0.25)  # the difference itself, not times 100
    assert "points" not in fig.data[0].hovertemplate


def test_an_accuracy_difference_keeps_accuracy_points():
    diffs = paired_differences(_table("acc", [0.9, 0.92, 0.91], [0.88, 0.89, 0.885]), "b")
    fig = plot_paired_differences(diffs)
    assert fig.layout.xaxis.title.text == "difference (accuracy points)"
    assert fig.data[0].x[0] == pytest.approx(2.5)
    assert "points" in fig.data[0].hovertemplate


def test_a_share_other_than_accuracy_reads_in_percentage_points():
    diffs = paired_differences(_table("achieved_ratio", [0.5, 0.52], [0.45, 0.47]), "b", value="achieved_ratio")
    fig = plot_paired_differences(diffs)
    assert fig.layout.xaxis.title.text == "difference in achieved_ratio (percentage points)"
    assert fig.data[0].x[0] == pytest.approx(5.0)


def test_the_value_and_its_scale_can_be_given_for_a_table_without_attrs():
    diffs = paired_differences(_table("loss", [0.5, 0.7], [0.3, 0.4]), "b", value="loss")
    bare = pd.DataFrame(diffs.to_dict("list"))  # a table read back from a file has no attrs
    assert plot_paired_differences(bare, value="loss").layout.xaxis.title.text == "difference in loss"
    forced = plot_paired_differences(bare, value="loss", percent=True)
    assert forced.data[0].x[0] == pytest.approx(25.0)
    with pytest.raises(ConfigError, match=r"holds differences of 'loss'.*leave value out"):
        plot_paired_differences(diffs, value="acc")
    with pytest.raises(ConfigError, match=r"percent must be True or False"):
        plot_paired_differences(diffs, percent="yes")


def test_paired_against_all_records_the_value_and_passes_the_confidence_through():
    t = pd.concat([_table("loss", [0.5, 0.7, 0.6], [0.3, 0.4, 0.35]),
                   _table("loss", [0.5, 0.7, 0.6], [0.2, 0.5, 0.3]).replace({"b": "c"}).query("method == 'c'")])
    wide = paired_against_all(t, "a", value="loss")
    narrow = paired_against_all(t, "a", value="loss", confidence=0.8)
    assert narrow.attrs == {"confidence": 0.8, "value": "loss"}
    assert ((narrow.high - narrow.low) < (wide.high - wide.low)).all()
    fig = plot_paired_differences(narrow, expect="negative")
    assert "80 %" in fig.layout.title.text and fig.layout.xaxis.title.text == "difference in loss"
    assert paired_against_all(t, "missing", value="loss", confidence=0.8).attrs["confidence"] == 0.8


def test_findings_of_a_loss_state_the_loss_not_points():
    lines = findings_from(paired_differences(_table("loss", [0.5, 0.7], [0.3, 0.4]), "b", value="loss"))
    assert lines[0].startswith("a − b at 50 %: +0.25 loss, 95 % CI")
    acc = findings_from(paired_differences(_table("acc", [0.9, 0.92], [0.88, 0.89]), "b"))
    assert acc[0].startswith("a − b at 50 %: +2.50 points")


def test_a_row_without_a_difference_keeps_its_line_and_says_why():
    t = pd.DataFrame({"method": ["a", "a", "b", "b"], "prune_ratio": [0.5, 0.9, 0.5, 0.9], "seed": [0, 0, 0, 1],
                      "acc": [0.9, 0.8, 0.85, 0.7]})
    diffs = paired_differences(t, "b")  # at 90 %: a ran seed 0, b seed 1
    fig = plot_paired_differences(diffs)
    labels = [tr.y[0] for tr in fig.data]
    assert labels == ["a − b @ 50 %", "a − b @ 90 % (no difference measured, 0 seeds)"]
    assert list(fig.layout.yaxis.categoryarray) == labels
    assert "1 seed, no interval" in fig.data[0].hovertemplate


def test_two_rows_for_one_line_of_the_figure_are_refused():
    diffs = paired_differences(_table("acc", [0.9, 0.92], [0.88, 0.89]), "b")
    twice = pd.concat([diffs, diffs], ignore_index=True)
    with pytest.raises(ConfigError, match=r"'a − b @ 50 %' more than once"):
        plot_paired_differences(twice)


# ------------------------------------------------------------------ the accuracy figure: confidence and scale
def test_the_accuracy_figure_uses_the_confidence_it_names():
    t = _table("acc", [0.90, 0.92, 0.91], [0.88, 0.89, 0.885])
    fig = plot_accuracy_ci(t, confidence=0.8)
    assert "80 % interval" in fig.layout.title.text
    mean, low, high, _ = mean_ci([0.90, 0.92, 0.91], 0.8)
    assert fig.data[0].error_y.array[0] == pytest.approx((high - mean) * 100)
    assert "95 %" in plot_accuracy_ci(t).layout.title.text


def test_the_accuracy_figure_draws_a_loss_as_it_is():
    fig = plot_accuracy_ci(_table("loss", [0.5, 0.7], [0.3, 0.4]), value="loss")
    assert fig.layout.yaxis.title.text == "loss"
    assert fig.data[0].y[0] == pytest.approx(0.6)
    acc = plot_accuracy_ci(_table("acc", [0.9, 0.92], [0.88, 0.89]))
    assert acc.layout.yaxis.title.text == "acc (%)" and acc.data[0].y[0] == pytest.approx(91.0)


def _epochs_table() -> pd.DataFrame:
    """Accuracies against a setting that is a count, not a share of the weights."""
    return pd.DataFrame({"method": ["a"] * 4 + ["b"] * 4, "epochs": [2, 2, 4, 4] * 2, "seed": [0, 1] * 4,
                         "acc": [0.90, 0.91, 0.92, 0.93, 0.88, 0.89, 0.90, 0.90]})


def test_a_setting_that_is_not_a_share_is_drawn_as_it_is():
    fig = plot_accuracy_ci(_epochs_table(), setting="epochs")
    assert sorted(fig.data[0].x) == [2, 4]  # epochs, not 200 and 400
    assert fig.layout.xaxis.title.text == "epochs"
    assert "epochs %{x:g}<br>" in fig.data[0].hovertemplate
    diffs = paired_differences(_epochs_table(), "b", setting="epochs")
    labels = [tr.y[0] for tr in plot_paired_differences(diffs, setting="epochs").data]
    assert labels == ["a − b @ epochs 2", "a − b @ epochs 4"]


def test_the_prune_ratio_stays_in_percent():
    table = _table("acc", [0.9, 0.92], [0.88, 0.9])
    fig = plot_accuracy_ci(table)
    assert list(fig.data[0].x) == [50.0] and fig.layout.xaxis.title.text == "prune_ratio (%)"
    assert plot_paired_differences(paired_differences(table, "b")).data[0].y[0] == "a − b @ 50 %"


# ------------------------------------------------------------------ History.last / series follow the step
def _out_of_order() -> History:
    h = History(meta={"run": "r"})
    h.log_metric("acc", 0.9, step=30, epoch=2, split="test")
    h.log_metric("acc", 0.5, step=10, epoch=0, split="test")  # logged late, for an earlier step
    h.log_metric("acc", 0.7, step=20, epoch=1, split="test")
    return h


def test_last_and_series_follow_the_step_of_rows_logged_out_of_order():
    h = _out_of_order()
    assert h.last("acc", "test") == 0.9
    s = h.series("acc", "test")
    assert s.index.tolist() == [10, 20, 30] and s.tolist() == [0.5, 0.7, 0.9]


def test_of_rows_at_one_step_the_later_logged_wins():
    h = History()
    h.log_metric("acc", 0.4, step=10, epoch=0, split="test")
    h.log_metric("acc", 0.6, step=10, epoch=0, split="test")
    h.log_metric("acc", 0.1, step=5, epoch=0, split="test")
    assert h.last("acc", "test") == 0.6
    assert h.series("acc", "test").tolist() == [0.1, 0.4, 0.6]


def test_rows_logged_in_step_order_read_as_before():
    h = History()
    for step, v in [(0, 1.0), (10, 0.5), (10, 0.4), (20, math.nan)]:
        h.log_metric("loss", v, step=step, epoch=0)
    assert math.isnan(h.last("loss", "train"))
    s = h.series("loss", "train")
    assert s.index.tolist() == [0, 10, 10, 20] and s.tolist()[:3] == [1.0, 0.5, 0.4]
    assert h.last("loss", "val", default=-1.0) == -1.0


def test_a_merged_history_of_one_run_and_a_saved_one_follow_the_step(tmp_path):
    merged = History.concat([_out_of_order()])
    assert merged.last("acc", "test") == 0.9
    assert merged.series("acc", "test").index.tolist() == [10, 20, 30]
    loaded = History.load(merged.save(tmp_path / "h.jsonl"))
    assert loaded.last("acc", "test") == 0.9
