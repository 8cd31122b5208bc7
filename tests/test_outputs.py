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


def _recorded(path, preset, setting="prune_ratio"):
    from sparselab.experiments.p3b import _write_record

    table = pd.DataFrame({"preset": preset.name, "method": ["dense", "uniform"], setting: [0.0, 0.5], "seed": 0,
                          "acc": [0.9, 0.8]})
    _write_record(path, table, preset)
    return table


def test_a_record_is_resumed_only_into_the_settings_it_was_run_with(tmp_path, monkeypatch):
    """Rows of a comparison record are reused instead of run: a record of the same preset name with other
    settings (another learning rate, schedule, model) must not pass for runs of this one."""
    from sparselab.experiments import p3b
    from sparselab.experiments.p3b import p3b_preset, settings_path

    def must_not_run(*_, **__):
        raise AssertionError("a recorded run ran again")

    monkeypatch.setattr(p3b, "run_p3b", must_not_run)
    preset = p3b_preset("tiny", pretrained=False, recipe=None, seeds=(0,))
    path = tmp_path / "rec.csv"
    _recorded(path, preset)
    assert settings_path(path).is_file()
    table, runs = p3b.compare(preset, methods=["uniform"], prune_ratios=[0.5], record=path, progress=False)
    assert runs == [] and table.method.tolist() == ["dense", "uniform"]
    # more seeds, methods or ratios only pick more rows: the same record
    p3b._read_record(path, preset.replace(seeds=(0, 1, 2), prune_ratios=(0.5, 0.9)))
    other = preset.replace(fit={**preset.fit, "lr": 2e-3})
    with pytest.raises(ConfigError, match=r"other settings of preset 'tiny' \(they differ in fit\)"):
        p3b.compare(other, methods=["uniform"], prune_ratios=[0.5], record=path, progress=False)


def test_an_art_record_checks_its_settings_too_and_an_old_record_warns(tmp_path):
    from sparselab.experiments.p3b import _read_record, settings_path

    preset = art.art_preset("tiny")
    path = tmp_path / "art.csv"
    _recorded(path, preset, setting="sparsity")
    with pytest.raises(ConfigError, match="differ in finetune_epochs"):
        art.compare(preset.replace(finetune_epochs=preset.finetune_epochs + 1), methods=["l1"],
                    sparsities=[0.5], seeds=[0], record=path, progress=False)
    settings_path(path).unlink()  # a record written before settings were kept beside it
    with pytest.warns(UserWarning, match="holds no record of the settings"):
        assert len(_read_record(path, preset, setting="sparsity")) == 2
    settings_path(path).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        _read_record(path, preset, setting="sparsity")
