"""Saved Histories, result folders, the README's results section and `sparselab figures` on less usual inputs."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from sparselab import plots
from sparselab.cli import FIGURE_NAMES, history_figures
from sparselab.errors import CheckpointError, ConfigError
from sparselab.experiments import report
from sparselab.experiments.outputs import HISTORIES_FILE, TABLE_FILE, save_run_files
from sparselab.history import SCHEMA, History


# ------------------------------------------------------------------------------------------------ History files
def _write(path, *rows):
    lines = [{"schema": SCHEMA, "meta": {"run": "r"}}, *rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_a_saved_history_with_text_where_a_number_belongs_is_refused(tmp_path):
    row = {"table": "metrics", "step": 3, "epoch": 0, "split": "test", "name": "acc", "value": "0.9"}
    with pytest.raises(CheckpointError, match=r"line 2: .*'value' must be a number, got '0.9'"):
        History.load(_write(tmp_path / "a.jsonl", row))
    with pytest.raises(CheckpointError, match=r"line 2: .*'step' must be a whole number"):
        History.load(_write(tmp_path / "b.jsonl", {**row, "value": 0.9, "step": "3"}))
    with pytest.raises(CheckpointError, match=r"'split' must be one of"):
        History.load(_write(tmp_path / "c.jsonl", {**row, "value": 0.9, "split": "validation"}))
    event = {"table": "events", "step": 1, "epoch": 0, "block": "b", "gate": "g", "element": 2, "old": 0, "new": 5}
    with pytest.raises(CheckpointError, match=r"'new' must be 0 or 1"):
        History.load(_write(tmp_path / "d.jsonl", event))


def test_saved_history_round_trips_odd_names_nan_and_run_names(tmp_path):
    h = History(meta={"run": "x"})
    h.log_metrics({'a b/ü"x': float("nan"), "inf": float("inf"), "acc": 1}, step=3, epoch=0, split="val")
    loaded = History.load(h.save(tmp_path / "h.jsonl.gz"))
    assert loaded == h and math.isnan(loaded.last('a b/ü"x')) and loaded.last("inf") == math.inf
    # a run name written as a number reads back as the string concat gives every run name
    row = {"table": "metrics", "step": 1, "epoch": 0, "split": "val", "name": "acc", "value": 1.0, "run": 7}
    merged = History.load(_write(tmp_path / "m.jsonl", row))
    assert merged.metrics.run.tolist() == ["7"]


# ------------------------------------------------------------------------------------------------ result folders
def test_save_run_files_leaves_no_file_of_an_earlier_call(tmp_path):
    save_run_files(tmp_path, pd.DataFrame({"acc": [0.5]}), [History(meta={"run": "old"})])
    paths = save_run_files(tmp_path, pd.DataFrame({"acc": [0.9]}))
    assert set(paths) == {"table"} and not (tmp_path / HISTORIES_FILE).exists()
    save_run_files(tmp_path, None, [History(meta={"run": "new"})])
    assert not (tmp_path / TABLE_FILE).exists()
    assert History.load(tmp_path / HISTORIES_FILE).meta["run"] == "new"


def test_p3b_save_results_removes_compact_models_of_an_earlier_call(tmp_path):
    from sparselab.experiments.p3b import save_results

    stale = tmp_path / "compact" / "l1-50"
    stale.mkdir(parents=True)
    (stale / "spec.json").write_text("{}")
    (tmp_path / "compact" / "notes").mkdir()  # not a compact model: left alone
    run = SimpleNamespace(history=History(meta={"run": "dense-s0"}), pruner=None, seed=0, method="dense",
                          prune_ratio=0.0)
    save_results(tmp_path, pd.DataFrame({"method": ["dense"], "acc": [0.9]}), [run])
    assert not stale.exists() and (tmp_path / "compact" / "notes").is_dir()


# ------------------------------------------------------------------------------------------------ results section
def _p3b_table(**acc):
    rows = [{"method": m, "prune_ratio": 0.0 if m == "dense" else 0.9, "seed": s, "acc": a}
            for m, values in acc.items() for s, a in enumerate(values)]
    return pd.DataFrame(rows)


def test_a_cell_whose_runs_measured_nothing_says_so():
    table = _p3b_table(dense=[0.9, 0.92], p3b=[0.85, 0.87], uniform=[math.nan, math.nan])
    with pytest.warns(RuntimeWarning):
        text = report._matrix(table, "prune_ratio")
    assert "| uniform | not measured |" in text and "nan" not in text and "(1 seed)" not in text


def test_a_result_file_missing_a_column_is_named():
    table = _p3b_table(dense=[0.9, 0.92], p3b=[0.85, 0.87]).drop(columns="seed")
    with pytest.raises(ConfigError, match=r"'p3b_cpu-full' has no column\(s\) 'seed'"):
        report.results_markdown(lambda name: table if name == "p3b_cpu-full" else pd.DataFrame())
    art = pd.DataFrame({"method": ["hypersparse"], "seed": [0], "acc": [0.9]})
    with pytest.raises(ConfigError, match=r"'art_cpu-full' has no column\(s\) 'sparsity'"):
        report.results_markdown(lambda name: art if name == "art_cpu-full" else pd.DataFrame())


def test_markers_in_the_wrong_order_are_named():
    with pytest.raises(ValueError, match="comes before"):
        report.replace_section(f"a {report.END} b {report.START} c", "x")


# ------------------------------------------------------------------------------------------------ figures
def _pruned(run: str, benefit: bool) -> History:
    h = History(meta={"run": run})
    for step in (1, 2):
        values = {"blocks.0.attn": 0.5, "blocks.0.mlp": 0.6}
        h.log_blocks("keep_goal", values, step=step, epoch=0)
        h.log_blocks("keep_applied", values, step=step, epoch=0)
        if benefit:
            h.log_blocks("benefit_cls", values, step=step, epoch=0)
            h.log_blocks("benefit_patch", values, step=step, epoch=0)
    return h


@pytest.fixture
def drawn(monkeypatch):
    """The plots stubbed to record which run each figure would draw."""
    calls = []

    def stub(name):
        return lambda history, view=None, run=None, **_: calls.append((name, view, run)) or name

    for name in ("plot_block_benefit", "plot_keep_ratios", "plot_reactivations", "plot_gradient_profile",
                 "plot_exchange", "plot_art_keep_ratios"):
        monkeypatch.setattr(plots, name, stub(name))
    return calls


def test_figures_of_a_pruning_run_without_probes(drawn):
    assert set(history_figures(_pruned("uniform-50-s0", benefit=False))) == {"keep_ratios", "reactivations"}


def test_figures_of_a_merged_history_draw_the_run_with_block_traces(drawn):
    dense = History(meta={"run": "dense-s0"})
    dense.log_metrics({"acc": 0.9}, step=1, epoch=0, split="test")
    merged = History.concat([dense, _pruned("uniform-50-s0", benefit=False), _pruned("l1-50-s0", benefit=False)])
    assert set(history_figures(merged)) == {"keep_ratios", "reactivations"}
    assert {run for _, _, run in drawn} == {"uniform-50-s0"}
    with pytest.raises(ConfigError, match="'p3b-50-s0' is not a run of this History; it holds: dense-s0"):
        history_figures(merged, run="p3b-50-s0")


def test_figures_of_one_p3b_run_beside_an_art_run(drawn):
    art = History(meta={"run": "hypersparse-0.9-s0", "profiles": [{"epoch": 0}]})
    art.log_blocks("keep_ratio", {"fc1": 0.1}, step=1, epoch=0)
    merged = History.concat([_pruned("p3b-50-s0", benefit=True), art])
    assert set(history_figures(merged, run="p3b-50-s0")) == {
        "block_benefit_heatmap", "block_benefit_profile", "keep_ratios", "reactivations"}
    drawn.clear()
    assert set(history_figures(merged, run="hypersparse-0.9-s0")) == {"gradient_profile", "exchange",
                                                                       "art_keep_ratios"}
    assert {run for name, _, run in drawn if name != "plot_exchange"} == {"hypersparse-0.9-s0"}


def test_every_figure_drawn_bears_a_name_the_figures_folder_knows(drawn):
    """`sparselab figures` tells apart a folder's stale figures by these names (cli.FIGURE_NAMES)."""
    art = History(meta={"run": "hypersparse-0.9-s0", "profiles": [{"epoch": 0}]})
    art.log_blocks("keep_ratio", {"fc1": 0.1}, step=1, epoch=0)
    merged = History.concat([_pruned("p3b-50-s0", benefit=True), art])
    drawn_names = set(history_figures(merged, run="p3b-50-s0")) | set(history_figures(merged, run=art.meta["run"]))
    assert drawn_names == set(FIGURE_NAMES)


def test_p3b_save_results_keeps_the_compact_fine_tune_histories(tmp_path):
    from sparselab.experiments.outputs import HISTORIES_FILE
    from sparselab.experiments.p3b import save_results

    pruning, finetune = History(meta={"run": "uniform-50-s0"}), History()
    pruning.log_metrics({"acc": 0.8}, step=1, epoch=0, split="test")
    finetune.log_metrics({"acc": 0.9}, step=1, epoch=0, split="test")
    run = SimpleNamespace(history=pruning, finetune_history=finetune, pruner=None, seed=0, method="uniform",
                          prune_ratio=0.5)
    dense = SimpleNamespace(history=History(meta={"run": "dense-s0"}), finetune_history=None, pruner=None, seed=0,
                            method="dense", prune_ratio=0.0)
    dense.history.log_metrics({"acc": 0.95}, step=1, epoch=0, split="test")
    save_results(tmp_path, pd.DataFrame({"method": ["uniform"], "acc": [0.9]}), [dense, run])
    saved = History.load(tmp_path / HISTORIES_FILE).metrics
    # was: the pruning Histories only, not the fine-tune the table's acc comes from
    assert set(saved.run) == {"dense-s0", "uniform-50-s0", "uniform-50-s0-finetune"}
    assert saved[saved.run == "uniform-50-s0-finetune"].value.tolist() == [0.9]
