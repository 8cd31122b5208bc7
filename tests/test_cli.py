from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import sparselab as sl
from sparselab.cli import main
from sparselab.experiments.provenance import code_version


def test_train_command_writes_history_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "28", "--epochs", "1",
               "--lr", "2e-3", "--out", str(out)])
    assert rc == 0
    history = sl.History.load(out / "history.jsonl.gz")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["acc"] == history.last("acc", "test") > 0.5
    assert history.meta["code"] == code_version()  # the code that trained it
    assert json.loads((out / "run.json").read_text()) == {"command": "train", "pretrained": None}
    assert (out / "checkpoint" / "last.pt").is_file()
    assert "history:" in capsys.readouterr().out
    # the training checkpoint is a weights file --pretrained reads (the first run's weights, loaded as they are)
    again = tmp_path / "again"
    assert main(["train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "28", "--epochs", "1",
                 "--lr", "1e-9", "--pretrained", str(out / "checkpoint" / "last.pt"), "--out", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text())["test"]["acc"] > 0.5


def test_errors_exit_with_code_2_and_a_message(tmp_path, capsys):
    rc = main(["train", "--model", "resnet23", "--data", "digits", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet23'" in err and "resnet32" in err


def test_listing_commands_run_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "sparselab", "datasets"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "fashion_mnist" in proc.stdout and "imagefolder" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "sparselab", "models"], capture_output=True, text=True,
                          timeout=120)
    assert "vit_mini_patch7_28" in proc.stdout and "resnet32_wide" in proc.stdout


def test_p3b_paper_preset_smoke_on_random_deit_tiny(tmp_path):
    """The paper preset's code path end to end (224 px, mixup/cutmix, conv probes, compaction, fine-tuning) on a
    randomly initialised deit_tiny_patch16_224 and a generated ImageFolder tree, for a few steps."""
    from conftest import write_image_folder

    tree = write_image_folder(tmp_path / "tree", classes=("a", "b", "c", "d"), per_class=4, size=32)
    out = tmp_path / "run"
    rc = main(["p3b", "--preset", "paper-deit-t-ifood", "--pretrained", "none", "--data", "imagefolder",
               "--data-root", str(tree), "--batch-size", "4", "--max-steps-per-epoch", "2", "--workers", "0",
               "--schedule", "0,1,1", "--finetune-epochs", "1", "--no-latency", "--probe-every", "16",
               "--probe-fraction", "0.25",
               "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert abs(result["achieved_ratio"] - 0.5) < 0.005
    assert result["patch_probe"] == "conv2" and result["code"] == code_version()
    assert result["probe_options"] == {"probe_every": 16, "probe_fraction": 0.25, "probe_lr": 5e-4,
                                       "probe_weight_decay": 0.05}
    history = sl.History.load(out / "history.jsonl.gz")
    assert {"keep_goal", "benefit_cls", "benefit_patch"} <= set(history.blocks.metric)
    compact = sl.structure.load_compact(out / "compact")
    assert sum(p.numel() for p in compact.parameters()) == result["params"]
    assert compact.patch_embed.img_size == (224, 224)


def test_p3b_command_prunes_whole_heads_with_qkv_unit_head(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["p3b", "--preset", "tiny", "--pretrained", "none", "--patch-probe", "none", "--no-latency",
               "--prune-ratio", "0.75", "--qkv-unit", "head", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["qkv_unit"] == "head" and abs(result["achieved_ratio"] - 0.75) < 0.02
    spec = json.loads((out / "compact" / "spec.json").read_text())
    assert spec["qkv_unit"] == "head"
    compact = sl.structure.load_compact(out / "compact")
    kept = [layer["kept"]["attn_qkv"] for layer in spec["layers"]]
    assert [getattr(b.attn, "num_heads", 0) for b in compact.blocks] == kept
    assert rc == 0 and main(["p3b", "--preset", "tiny", "--method", "dense", "--qkv-unit", "head",
                             "--out", str(tmp_path / "dense")]) == 2
    assert "--qkv-unit" in capsys.readouterr().err
    assert result["settings"]["finetune_epochs"] == 1 and result["patch_probe"] is None
    assert json.loads((out / "run.json").read_text()) == {"command": "p3b", "pretrained": False}
    # resumed without a fine-tune: the earlier fine-tune's History must not stand beside the new result
    assert (out / "finetune_history.jsonl.gz").is_file()
    assert main(["p3b", "--preset", "tiny", "--pretrained", "none", "--patch-probe", "none", "--no-latency",
                 "--prune-ratio", "0.75", "--qkv-unit", "head", "--out", str(out), "--resume",
                 "--finetune-epochs", "0"]) == 0
    again = json.loads((out / "result.json").read_text())
    assert not (out / "finetune_history.jsonl.gz").exists()
    assert again["settings"]["finetune_epochs"] == 0 and again["acc"] == again["acc_pruned"]


@pytest.mark.slow
def test_p3b_command_under_torchrun(tmp_path):
    import os

    from test_training import _free_port

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "sparselab", "p3b", "--preset", "tiny", "--pretrained", "none",
           "--patch-probe", "conv1", "--no-latency", "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert abs(result["achieved_ratio"] - 0.5) < 0.005
    assert sl.History.load(out / "history.jsonl.gz").events.shape[0] > 0


def test_art_command_runs_a_preset(tmp_path):
    out = tmp_path / "art"
    rc = main(["art", "--preset", "tiny", "--method", "hypersparse", "--sparsity", "0.9", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["nonzero_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert result["code"] == code_version()
    assert "acc_best" not in result  # the tiny preset has a validation split: the test split is seen once
    h = sl.History.load(out / "history.jsonl.gz")
    assert h.meta["art"]["regularizer"] == "hypersparse" and h.meta["profiles"]
    assert (out / "model.safetensors").is_file()
    assert main(["art", "--preset", "tiny", "--method", "l3", "--out", str(out)]) == 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by scripts/setup_env.sh")
def test_figures_command_writes_static_images(tmp_path):
    """Static export through kaleido and the system Chromium (installed by the setup script)."""
    model = sl.models.create("vit_nano_patch4_28", num_classes=10)
    pruner = sl.P3B(model, 0.5, schedule=sl.P3BSchedule(warmup=1, sparsify=2, finalize=3), patch_probe="linear")
    data = sl.data.load("digits", image_size=28, limit=256)
    history = sl.fit(model, data, epochs=3, batch_size=64, max_steps_per_epoch=3, pruner=pruner, progress=False)
    history.save(tmp_path / "h.jsonl.gz")
    rc = main(["figures", str(tmp_path / "h.jsonl.gz"), "--out", str(tmp_path / "figs"), "--format", "png", "svg"])
    assert rc == 0
    for name in ("block_benefit_heatmap", "block_benefit_profile", "keep_ratios", "reactivations"):
        png = (tmp_path / "figs" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert (tmp_path / "figs" / f"{name}.svg").read_text().lstrip().startswith("<svg")


def test_fast_probe_method_refuses_only_the_cadence_flags(capsys):
    assert main(["p3b", "--preset", "tiny", "--dry-run", "--probe-lr", "none"]) == 0  # None: the model's lr
    assert main(["p3b", "--preset", "tiny", "--dry-run", "--method", "p3b_fast_probes", "--momentum", "0.5"]) == 0
    assert main(["p3b", "--preset", "tiny", "--dry-run", "--method", "p3b_fast_probes", "--probe-every", "4"]) == 2
    assert "fixes its probes itself (patch_probe); leave out --probe-every" in capsys.readouterr().err


def test_a_diverged_run_is_told_what_the_command_line_can_change(monkeypatch, capsys):
    from sparselab import cli
    from sparselab.errors import DivergedError

    def diverge(args):
        raise DivergedError("non-finite loss at step 2 (epoch 1): training diverged. Lower the learning rate, or "
                            "pass nonfinite='skip' to drop such steps; checkpoints already written are left as they "
                            "were")

    monkeypatch.setattr(cli, "_cmd_train", diverge)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["train"].set_defaults(fn=diverge)
    assert main(["train", "--model", "lenet_300_100"]) == 2
    err = capsys.readouterr().err
    assert "nonfinite" not in err and "Lower the learning rate (or a step size such as --probe-weight-decay)" in err
