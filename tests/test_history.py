from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparselab import History
from sparselab.errors import CheckpointError, ConfigError


def sample() -> History:
    h = History(meta={"run": "a", "config": {"lr": 0.1}})
    h.log_metrics({"loss": 1.5, "acc": 0.25}, step=10, epoch=0, split="train")
    h.log_metric("acc", 0.5, step=10, epoch=0, split="val")
    h.log_blocks("benefit", {"blocks.0.attn": 0.1, "blocks.0.mlp": -0.2}, step=10, epoch=0)
    h.log_events(step=10, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[1, 4], old=1, new=0)
    h.log_events(step=20, epoch=1, block="blocks.0.mlp", gate="mlp_hid", elements=[4], old=0, new=1)
    return h


def test_tables_have_the_documented_columns():
    tables = sample().to_pandas()
    assert list(tables["metrics"].columns) == ["step", "epoch", "split", "name", "value"]
    assert list(tables["blocks"].columns) == ["step", "epoch", "block", "metric", "value"]
    assert list(tables["events"].columns) == ["step", "epoch", "block", "gate", "element", "old", "new"]
    ev = tables["events"]
    assert ev[(ev.old == 0) & (ev.new == 1)].element.tolist() == [4]


def test_last_and_series():
    h = sample()
    h.log_metric("acc", 0.75, step=20, epoch=1, split="val")
    assert h.last("acc", "val") == 0.75 and h.last("acc", "train") == 0.25
    assert h.series("acc", "val").to_dict() == {10: 0.5, 20: 0.75}


@pytest.mark.parametrize("name", ["h.jsonl", "h.jsonl.gz"])
def test_save_load_round_trip(tmp_path, name):
    h = sample()
    h.save(tmp_path / name)
    back = History.load(tmp_path / name)
    assert back == h
    assert back.to_pandas()["events"].equals(h.to_pandas()["events"])


def test_concat_adds_a_run_column_and_round_trips(tmp_path):
    a, b = sample(), sample()
    b.meta["run"] = "b"
    b.log_metric("acc", 0.9, step=30, epoch=2, split="val")
    both = History.concat([a, b])
    m = both.metrics
    assert list(m.columns)[0] == "run"
    assert set(m.run) == {"a", "b"} and len(m) == len(a.metrics) + len(b.metrics)
    assert both.meta["runs"]["b"]["run"] == "b"
    both.save(tmp_path / "both.jsonl")
    assert History.load(tmp_path / "both.jsonl") == both
    # merging merged histories keeps their run names
    again = History.concat([both, History(meta={"run": "c"})])
    assert set(again.metrics.run) == {"a", "b"}


def test_bad_input():
    h = History()
    with pytest.raises(ConfigError, match="split"):
        h.log_metric("acc", 1.0, step=0, epoch=0, split="validation")
    with pytest.raises(ConfigError, match="table"):
        h.table("weights")
    with pytest.raises(ConfigError, match="distinct"):
        History.concat([h, h], runs=["x", "x"])


def test_loading_wrong_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="empty"):
        History.load(tmp_path / "empty.jsonl")
    (tmp_path / "other.jsonl").write_text(json.dumps({"schema": "something/else"}) + "\n")
    with pytest.raises(CheckpointError, match="not a sparselab History"):
        History.load(tmp_path / "other.jsonl")


rows = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 500), st.sampled_from(["train", "val", "test"]),
                          st.text(min_size=1, max_size=8),
                          st.floats(allow_nan=False, allow_infinity=False, width=64)), max_size=30)


@settings(max_examples=30, deadline=None)
@given(rows=rows)
def test_round_trip_property(tmp_path_factory, rows):
    h = History(meta={"x": 1})
    for step, epoch, split, name, value in rows:
        h.log_metric(name, value, step=step, epoch=epoch, split=split)
    path = tmp_path_factory.mktemp("h") / "h.jsonl.gz"
    h.save(path)
    assert History.load(path) == h
    assert History.from_state_dict(h.state_dict()) == h


def test_round_trip_is_exact_for_nan_values_numpy_meta_and_empty_merges(tmp_path):
    import numpy as np

    h = History(meta={"seed": np.int64(3), "ratios": (0.5, 0.9)})
    h.log_metric("kept_entered", float("nan"), step=1, epoch=0)  # what ART logs at its first epoch
    back = History.load(h.save(tmp_path / "a.jsonl.gz"))
    assert back == h and back.meta == {"seed": 3, "ratios": [0.5, 0.9]}
    h.log_metric("kept_entered", 1.0, step=2, epoch=1)
    assert back != h  # NaN-aware equality still tells Histories apart
    merged = History.concat([History(), History()], runs=["a", "b"])
    again = History.load(merged.save(tmp_path / "m.jsonl"))
    assert again == merged and "run" in again.metrics.columns


def test_meta_that_json_would_change_is_refused_and_run_names_are_strings(tmp_path):
    with pytest.raises(ConfigError, match=r"meta\['keep'\] has the key 0, which is not a string"):
        History(meta={"keep": {0: 0.5}}).save(tmp_path / "b.jsonl")
    with pytest.raises(ConfigError, match=r"meta\['model'\] is a object"):
        History(meta={"model": object()}).save(tmp_path / "c.jsonl")
    merged = History.concat([History(), History()], runs=[1, 2])
    assert set(merged.meta["runs"]) == {"1", "2"}
    assert History.load(merged.save(tmp_path / "d.jsonl")) == merged


def test_a_merged_history_keeps_its_own_copy_of_each_runs_meta():
    a, b = History(meta={"run": "a", "profiles": [1]}), History(meta={"run": "b"})
    merged = History.concat([a, b])
    a.meta["profiles"].append(2)
    b.meta["note"] = "changed later"
    assert merged.meta["runs"]["a"]["profiles"] == [1] and "note" not in merged.meta["runs"]["b"]
