"""The command line under interruption, reruns and help: Ctrl-C/SIGTERM end in one line and exit status 130 with a
checkpoint to resume from; an --out that holds a run is resumed or replaced, never mixed; the options that used
to be dropped reach the library; ``--help`` does not load torch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sparselab as sl
from sparselab import cli
from sparselab.cli import main

REPO = Path(__file__).resolve().parents[1]
TRAIN_8PX = ["train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "8", "--epochs", "1"]


def test_train_passes_the_image_size_to_lenet(tmp_path, monkeypatch):
    seen = {}
    real = sl.models.create

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(sl.models, "create", spy)
    assert main([*TRAIN_8PX, "--out", str(tmp_path / "run")]) == 0
    assert seen["image_size"] == 8
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test"]["acc"] > 0.3


def test_train_loads_the_data_at_the_models_input_size(tmp_path, monkeypatch):
    seen = {}

    def spy(name, **kwargs):
        seen.update(kwargs)
        raise sl.ConfigError("stop here")

    monkeypatch.setattr(sl.data, "load", spy)
    assert main(["train", "--model", "vit_micro_patch4_32", "--out", str(tmp_path / "run")]) == 2
    assert seen["image_size"] == 32


# ------------------------------------------------------------------------------------------------ interruption
def _interrupting(monkeypatch, command: str, seen: dict | None = None):
    """Make ``sparselab <command>`` stop as the training loop does on Ctrl-C."""

    def fn(args):
        if seen is not None:
            seen["sigterm"] = signal.getsignal(signal.SIGTERM)
        raise KeyboardInterrupt("interrupted at step 7; checkpoint saved to x/last.pt")

    monkeypatch.setattr(cli, f"_cmd_{command}", fn)


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGTERM)
    seen: dict = {}
    _interrupting(monkeypatch, "train", seen)
    assert main([*TRAIN_8PX, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == ("sparselab: interrupted at step 7; checkpoint saved to x/last.pt; resume with the same "
                           "command and --resume")
    assert seen["sigterm"] is cli._sigterm_as_interrupt  # SIGTERM acts like Ctrl-C while the command runs
    assert signal.getsignal(signal.SIGTERM) is before  # and the previous handler is back afterwards


def test_ctrl_c_in_a_command_without_resume(tmp_path, monkeypatch, capsys):
    _interrupting(monkeypatch, "figures")
    assert main(["figures", str(tmp_path / "h.jsonl.gz")]) == 130
    assert capsys.readouterr().err.strip() == "sparselab: interrupted at step 7; checkpoint saved to x/last.pt"


def test_sigterm_without_a_training_loop_raises_keyboard_interrupt():
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job: SIGTERM must still stop it
        with pytest.raises(KeyboardInterrupt):
            cli._sigterm_as_interrupt(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_stops_training_with_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparselab", "train", "--model", "lenet_300_100", "--data", "digits",
           "--image-size", "8", "--limit", "400", "--batch-size", "1", "--epochs", "4", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = [s for s in err.replace("\r", "\n").splitlines() if s.strip()][-1]
    assert last.startswith("sparselab: interrupted at step ") and last.endswith(
        "; resume with the same command and --resume"), last
    assert not (out / "summary.json").exists()
    # the same command again refuses to mix a new run into the old one ...
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "already holds a run (checkpoint)" in again.stderr
    # ... and with --resume it finishes the interrupted run
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    history = sl.History.load(out / "history.jsonl.gz")
    assert sorted(history.metrics.query("split == 'val' and name == 'acc'").epoch) == [0, 1, 2, 3]


def test_overwrite_replaces_the_run_and_leaves_other_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"old": true}')
    (out / "finetune_history.jsonl.gz").write_text("stale")
    (out / "notes.txt").write_text("mine")
    assert main([*TRAIN_8PX, "--out", str(out), "--overwrite"]) == 0
    assert "old" not in json.loads((out / "summary.json").read_text())
    assert not (out / "finetune_history.jsonl.gz").exists()  # a stale output of the old run is gone
    assert (out / "notes.txt").read_text() == "mine"


def test_art_checkpoints_and_resumes(tmp_path, capsys):
    out = tmp_path / "art"
    argv = ["art", "--preset", "tiny", "--method", "hypersparse", "--sparsity", "0.9", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "result.json").read_text())
    assert (out / "checkpoint").is_dir() and any((out / "checkpoint").rglob("last.pt"))
    assert main(argv) == 2 and "already holds a run" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # every phase is finished: the same result again, without training
    assert json.loads((out / "result.json").read_text()) == first


def test_an_interrupted_pretraining_resumes_to_the_same_weights(fmnist_files, monkeypatch):
    from sparselab.models import pretrained as pre
    from sparselab.training import loop

    path = pre.pretrain("vit_nano_patch4_28", recipe="quick", progress=False)
    reference = path.read_bytes()
    assert not pre.resume_dir("vit_nano_patch4_28", recipe="quick").exists()  # removed once the weights exist

    real, steps = loop._train_step, []

    def interrupt_after_three(*args, **kwargs):
        out = real(*args, **kwargs)
        steps.append(1)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: the loop stops at this step's end, checkpointed
        return out

    monkeypatch.setattr(loop, "_train_step", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        pre.pretrain("vit_nano_patch4_28", recipe="quick", force=True, progress=False)
    monkeypatch.setattr(loop, "_train_step", real)
    assert (pre.resume_dir("vit_nano_patch4_28", recipe="quick") / "last.pt").is_file()
    assert main(["pretrain", "--model", "vit_nano_patch4_28", "--recipe", "quick", "--force", "--resume"]) == 0
    assert path.read_bytes() == reference


def test_a_source_model_continues_its_interrupted_pretraining(fmnist_files, monkeypatch):
    """What ``--pretrained fashion_mnist`` does when its pretraining was cut short: it goes on from the checkpoint
    (so "resume with the same command" holds) and ends with the same weights."""
    from sparselab.models import pretrained as pre
    from sparselab.training import loop

    real, steps = loop._train_step, []

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        steps.append(1)
        if len(steps) == 3 and interrupt:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(loop, "_train_step", counted)
    interrupt = False
    path = pre.pretrain("vit_nano_patch4_28", recipe="quick", force=True, progress=False)
    reference, total = path.read_bytes(), len(steps)
    path.unlink()
    steps.clear()
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        pre.source_pretrained("vit_nano_patch4_28", "fashion_mnist", recipe="quick", progress=False)
    steps.clear()
    interrupt = False
    pre.source_pretrained("vit_nano_patch4_28", "fashion_mnist", recipe="quick", progress=False)
    assert len(steps) == total - 3 and path.read_bytes() == reference


def test_pretrain_preset_pretrains_only_what_the_scale_needs(fmnist_files, capsys):
    from sparselab.models import pretrained as pre

    assert main(["pretrain", "--preset", "paper-deit-s-ifood"]) == 0
    assert "needs no source model" in capsys.readouterr().out
    assert not (fmnist_files.parent / "checkpoints").exists()
    assert main(["pretrain", "--preset", "tiny"]) == 0
    assert pre.checkpoint_path("vit_nano_patch4_28", recipe="quick").is_file()
    assert not pre.checkpoint_path("vit_mini_patch7_28", recipe="default").exists()


def test_main_sh_pretrains_what_the_scale_needs():
    script = (REPO / "scripts" / "main.sh").read_text()
    assert 'sparselab pretrain --preset "$SCALE"' in script
    assert "pretrain --model vit_mini_patch7_28" not in script


# ------------------------------------------------------------------------------------------------ figures
def test_figures_draws_an_art_run(tmp_path, monkeypatch):
    """The History that `sparselab art` writes: gradient profile, exchange and keep ratios per layer."""
    data = sl.data.load("digits", image_size=8, limit=256)
    model = sl.models.create("lenet_300_100", num_classes=10, image_size=8)
    art = sl.ART(model, 0.9, lam_init=1e-3, eta=1.5, warmup_epochs=1, max_art_epochs=2)
    history = sl.History(meta={"run": "hypersparse-0.9-s0"})
    sl.fit(model, data, epochs=art.max_epochs, pruner=art, history=history, batch_size=64, max_steps_per_epoch=2,
           progress=False)
    history.save(tmp_path / "history.jsonl.gz")
    exported = {}

    def fake_export(figures, out, formats=("png",)):
        exported.update(figures)
        return [Path(out) / f"{name}.{formats[0]}" for name in figures]

    monkeypatch.setattr(sl.plots, "export_figures", fake_export)
    assert main(["figures", str(tmp_path / "history.jsonl.gz"), "--out", str(tmp_path / "figs")]) == 0
    assert set(exported) == {"gradient_profile", "exchange", "art_keep_ratios"}
    layers = {t.name for t in exported["art_keep_ratios"].data}
    assert layers == set(history.blocks.query("metric == 'keep_ratio'").block)
    assert all(list(t.x) == [0, 1][: len(t.x)] for t in exported["art_keep_ratios"].data)


# ------------------------------------------------------------------------------------------------ help
def test_the_cli_does_not_import_torch():
    code = "import sys, sparselab.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_help_is_quick_and_shows_defaults():
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sparselab", "train", "--help"], capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0
    assert "(default: 10)" in proc.stdout and "(default: runs/train)" in proc.stdout
    assert elapsed < 3.0, f"sparselab train --help took {elapsed:.1f} s"


def test_import_sparselab_still_registers_the_small_vits_with_timm():
    code = "import sparselab, timm; print(timm.is_model('vit_nano_patch4_28'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr
