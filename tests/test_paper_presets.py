"""The paper presets' data and training paths, exercised at tiny size: TinyImageNet at 64 px with crop(pad 4),
one optimizer from warm-up through ART, the best and last accuracy, a torchrun run with repeated augmentation and
accumulation, and the GPU smoke benchmark skipping cleanly without CUDA."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision import transforms as T

import sparselab as sl
from sparselab.data.folders import TINYIMAGENET_MEAN, TINYIMAGENET_STD
from sparselab.experiments import art as art_exp
from sparselab.experiments.presets import load_data
from sparselab.training import OptimizerHandoff

HERE = Path(__file__).parent


def test_tinyimagenet_preset_loads_64_px_with_crop_padding_4(tmp_path, isolated_data_dir):
    from conftest import write_image_folder

    write_image_folder(isolated_data_dir / "tiny-imagenet-200", classes=("a", "b"), per_class=3, size=64)
    for name in ("paper-resnet32-tinyimagenet", "paper-vgg19-tinyimagenet"):
        data = load_data(art_exp.art_preset(name))
        assert data.image_size == 64 and data.val is None and len(data.test) == 6  # val/ is the test set
        steps = data.train.transform.transforms
        inner = [t for t in steps if isinstance(t, T.Compose)] or [data.train.transform]
        flat = [t for c in inner for t in c.transforms]
        crop = [t for t in flat if isinstance(t, T.RandomCrop)]
        assert len(crop) == 1 and crop[0].size == (64, 64) and crop[0].padding == 4
        assert any(isinstance(t, T.RandomHorizontalFlip) for t in flat)
        assert not any(isinstance(t, T.Resize) and t.size not in (64, [64], (64, 64)) for t in flat)
        norm = [t for t in flat if isinstance(t, T.Normalize)][0]
        assert tuple(norm.mean) == TINYIMAGENET_MEAN and tuple(norm.std) == TINYIMAGENET_STD
        assert data.train[0][0].shape == (3, 64, 64)


@pytest.fixture(scope="module")
def sgd_preset():
    # no validation split, as the paper presets: the test split is evaluated every epoch, so a best one exists
    tiny = art_exp.art_preset("tiny")
    sgd = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, weight_decay_on="all", batch_size=64)
    return tiny.replace(fit=sgd, max_art_epochs=2, data_options={**tiny.data_options, "val_fraction": 0.0})


def test_art_continues_the_warm_up_optimizer_and_fine_tunes_with_a_fresh_one(sgd_preset, monkeypatch):
    data = load_data(sgd_preset)
    warm = art_exp.warm_start(sgd_preset, 0, data, progress=False)
    buffers = [s["momentum_buffer"] for s in warm.optimizer.saved["state"].values()]
    assert buffers and all(b.abs().sum() > 0 for b in buffers)
    calls = []
    real_fit = art_exp.fit

    def spy(model, data, *args, **kwargs):
        start = {}

        class Look(sl.Pruner):
            def on_fit_start(self, state):
                start.update({i: s["momentum_buffer"].clone() for i, s in enumerate(state.optimizer.state.values())})

        kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + [Look()]
        history = real_fit(model, data, *args, **kwargs)
        calls.append((kwargs.get("pruner"), start))
        return history

    monkeypatch.setattr(art_exp, "fit", spy)
    for method in ("hypersparse", "gmp"):
        calls.clear()
        run = art_exp.run_art(sgd_preset, method, 0.9, 0, data=data, warm=warm, progress=False)
        (_, sparsify_start), (finetune_pruner, finetune_start) = calls
        assert len(sparsify_start) == len(buffers)
        for a, b in zip(sparsify_start.values(), buffers):
            assert torch.equal(a, b)  # the warm-up's momentum, not a fresh optimizer
        assert isinstance(finetune_pruner, sl.FixedMask) and finetune_start == {}  # fine-tuning starts fresh
        assert 0 <= run.result["acc"] <= run.result["acc_best"] <= 1
    assert isinstance(warm.optimizer, OptimizerHandoff)
    model, history = warm  # still unpacks like the old (model, history) pair
    assert history.last("acc", "test") > 0


def test_compare_reports_best_and_last_accuracy(sgd_preset):
    table, _ = art_exp.compare(sgd_preset, methods=["oneshot"], sparsities=[0.9], seeds=[0], progress=False)
    assert {"acc", "acc_best"} <= set(table.columns) and not table[["acc", "acc_best"]].isna().any().any()
    summary = art_exp.summarize(table)
    assert "best acc %" in summary.columns


@pytest.mark.slow
def test_repeated_augmentation_with_accumulation_under_torchrun(tmp_path):
    from test_training import run_two_processes

    r0, r1 = run_two_processes("repeat", tmp_path)
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    assert r0["history"] == r1["history"]
    steps = sl.History.from_state_dict(r0["history"]).metrics.step.max()
    assert steps == 2 * 3  # 2 epochs of 3 optimizer steps (max_steps_per_epoch), each over 2 micro-batches


def test_gpu_smoke_skips_cleanly_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the smoke test would run for real")
    proc = subprocess.run([sys.executable, str(HERE.parent / "benchmarks" / "gpu_smoke.py"), "--out",
                           str(tmp_path / "gpu")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: no CUDA device" in proc.stdout
    assert not (tmp_path / "gpu").exists()
