"""What the command line is given reaches the run: a changed schedule keeps the rest of the preset's schedule, every
figure format asked for is written, and contradictory output flags are refused even where nothing is written."""
from __future__ import annotations

import pytest

from sparselab import cli
from sparselab.cli import main
from sparselab.experiments import p3b as p3b_exp
from sparselab.pruners import P3BSchedule


def test_schedule_flag_keeps_the_presets_update_rate_and_temperatures(monkeypatch):
    tiny = p3b_exp.PRESETS["tiny"]
    schedule = P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=5, tau=0.3, tau_min=0.05)
    monkeypatch.setitem(p3b_exp.PRESETS, "tiny", tiny.replace(schedule=schedule))
    seen = []
    monkeypatch.setattr(cli, "_dry_run", lambda preset: seen.append(preset) or 0)
    assert main(["p3b", "--preset", "tiny", "--schedule", "0,2,4", "--dry-run"]) == 0
    assert seen[0].schedule == P3BSchedule(warmup=0, sparsify=2, finalize=4, updates_per_epoch=5, tau=0.3,
                                           tau_min=0.05)


@pytest.mark.parametrize("flags, expected", [
    (["--format", "png", "--format", "svg"], ["png", "svg"]),
    (["--format", "pdf", "svg", "--format", "pdf"], ["pdf", "svg"]),
    (["--format", "svg"], ["svg"]),
    ([], ["png"]),
])
def test_figures_writes_every_format_given(flags, expected, tmp_path, monkeypatch):
    import sparselab.plots as plots
    from sparselab.history import History

    written = []
    monkeypatch.setattr(History, "load", lambda *_: object())
    monkeypatch.setattr(cli, "history_figures", lambda history, run=None: {"keep_ratios": None})
    monkeypatch.setattr(plots, "export_figures", lambda figures, out, formats: written.append(formats) or [])
    assert main(["figures", str(tmp_path / "h.jsonl.gz"), "--out", str(tmp_path / "figs"), *flags]) == 0
    assert written == [expected]


@pytest.mark.parametrize("command", [["p3b", "--preset", "tiny"], ["art", "--preset", "tiny"]])
def test_resume_with_overwrite_is_refused_in_a_dry_run_too(command, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_dry_run", lambda preset: pytest.fail("the recipe must not be shown"))
    assert main([*command, "--dry-run", "--resume", "--overwrite"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--resume continues the run in --out and --overwrite replaces it: pass only one" in captured.err
