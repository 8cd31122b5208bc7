"""What experiments leave in their output folder: the table and every History, written atomically and complete."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import art
from sparselab.experiments.outputs import HISTORIES_FILE, TABLE_FILE, save_run_files
from sparselab.history import History


def _history(run, value, **meta):
    h = History(meta={"run": run, **meta})
    h.log_metrics({"acc": value}, step=1, epoch=0, split="test")
    return h


def test_one_history_is_saved_as_it_is_and_several_are_merged_by_name(tmp_path):
    table = pd.DataFrame({"method": ["a", "b"], "acc": [0.5, 0.25]})
    single = _history("only", 0.5)
    paths = save_run_files(tmp_path / "one", table, [single])
    assert pd.read_csv(paths["table"]).equals(table)
    assert History.load(paths["histories"]) == single
    merged = History.load(save_run_files(tmp_path / "two", None, [single, _history("other", 0.25)])["histories"])
    assert sorted(merged.metrics.run.unique()) == ["only", "other"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [HISTORIES_FILE]  # no table, no temporary files
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted([HISTORIES_FILE, TABLE_FILE])


def test_bad_output_folders_and_clashing_run_names_are_refused_before_anything_is_written(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        save_run_files(afile, pd.DataFrame({"a": [1]}))
    clash = [_history("same", 0.1), _history("same", 0.2)]
    with pytest.raises(ConfigError, match="distinct run name"):
        save_run_files(tmp_path / "clash", pd.DataFrame({"a": [1]}), clash)
    assert not (tmp_path / "clash").exists()


def test_art_results_keep_both_histories_of_every_run_and_presets_apart(tmp_path):
    """The same method, sparsity and seed on two models (notebook 04) must not collide, and the fine-tuning History
    is saved beside the sparsification one."""
    runs = [SimpleNamespace(method="hypersparse", sparsity=0.9, seed=0,
                            history=_history("hypersparse-0.9-s0", 0.8, preset=preset),
                            finetune_history=_history("hypersparse-0.9-s0-finetune", 0.9))
            for preset in ("cpu", "cpu-cnn")]
    paths = art.save_results(tmp_path, pd.DataFrame({"acc": [0.9, 0.9]}), runs)
    saved = History.load(paths["histories"])
    assert sorted(saved.metrics.run.unique()) == ["cpu-cnn/hypersparse-0.9-s0", "cpu-cnn/hypersparse-0.9-s0-finetune",
                                                  "cpu/hypersparse-0.9-s0", "cpu/hypersparse-0.9-s0-finetune"]
    finetune = saved.metrics[saved.metrics.run == "cpu/hypersparse-0.9-s0-finetune"]
    assert finetune.value.tolist() == [0.9]
