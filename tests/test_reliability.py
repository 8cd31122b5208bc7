"""No silent wrong results: a resume into another run is refused, non-finite values stop a run (or are skipped on
request) and never reach a checkpoint, damaged or orphaned checkpoint files are handled, unsupported models and
image sizes are rejected before the first step, and ART's long runs resume exactly."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import nano_vit as nano

import sparselab as sl
from sparselab.errors import CheckpointError, ConfigError, DivergedError
from sparselab.experiments import art as art_exp
from sparselab.training.checkpoint import atomic_save, load_checkpoint

SCHED = sl.P3BSchedule(warmup=1, sparsify=2, finalize=3, updates_per_epoch=2)


@pytest.fixture(scope="module")
def digits28():
    return sl.data.load("digits", image_size=28, limit=320)


@pytest.fixture(scope="module")
def digits8():
    return sl.data.load("digits", image_size=8)


def lenet(seed=0):
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", num_classes=10, image_size=8)


class Crash(sl.Pruner):
    def __init__(self, at):
        self.at = at

    def after_step(self, state):
        if state.step == self.at:
            raise RuntimeError("simulated crash")


def _crashed_p3b_run(data, ratio, folder):
    model = nano()
    pruner = sl.P3B(model, ratio, schedule=SCHED, patch_probe=None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(model, data, epochs=3, batch_size=32, max_steps_per_epoch=4, pruner=pruner, callbacks=[Crash(6)],
               checkpoint_dir=folder, checkpoint_every=2, progress=False)


# ------------------------------------------------------------------------------------- resume identity
def test_resume_with_another_prune_ratio_is_refused(digits28, tmp_path):
    _crashed_p3b_run(digits28, 0.5, tmp_path)
    model = nano()
    pruner = sl.P3B(model, 0.75, schedule=SCHED, patch_probe=None)
    with pytest.raises(CheckpointError, match=r"P3B settings differ \(prune_ratio: 0.5 in the checkpoint, 0.75 now"):
        sl.fit(model, digits28, epochs=3, batch_size=32, max_steps_per_epoch=4, pruner=pruner,
               callbacks=[Crash(-1)], checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("other", [dict(limit=160), dict(classes=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]),
                                   dict(seed=1)], ids=["smaller-limit", "permuted-classes", "other-split"])
def test_resume_on_other_data_of_the_same_shape_is_refused(tmp_path, other):
    data = sl.data.load("digits", image_size=8, limit=320)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(lenet(), data, epochs=2, batch_size=32, callbacks=[Crash(3)], checkpoint_dir=tmp_path,
               checkpoint_every=1, progress=False)
    changed = sl.data.load("digits", image_size=8, **{"limit": 320, **other})
    with pytest.raises(CheckpointError, match="belongs to another run: its data differ"):
        sl.fit(lenet(), changed, epochs=2, batch_size=32, callbacks=[Crash(-1)], checkpoint_dir=tmp_path,
               resume=True, progress=False)
    # the same data resumes
    sl.fit(lenet(), data, epochs=2, batch_size=32, callbacks=[Crash(-1)], checkpoint_dir=tmp_path, resume=True,
           progress=False)


def test_the_cli_refuses_to_resume_a_p3b_run_with_another_ratio(tmp_path, capsys, monkeypatch):
    from sparselab import cli
    from sparselab.experiments import p3b as p3b_exp

    real = p3b_exp.fit
    calls = {"n": 0}

    def crash_first(*args, **kwargs):  # the first pruning run dies after checkpointing its first epoch
        calls["n"] += 1
        kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + [Crash(5 if calls["n"] == 1 else -1)]
        return real(*args, **kwargs)

    monkeypatch.setattr(p3b_exp, "fit", crash_first)
    args = ["p3b", "--preset", "tiny", "--pretrained", "none", "--patch-probe", "none", "--no-latency",
            "--out", str(tmp_path / "run")]
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args + ["--prune-ratio", "0.5"])
    assert cli.main(args + ["--prune-ratio", "0.75", "--resume"]) == 2
    assert "prune_ratio: 0.5 in the checkpoint, 0.75 now" in capsys.readouterr().err
    assert not (tmp_path / "run" / "result.json").exists()


# ------------------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("option", ["lr", "weight_decay", "momentum", "min_lr", "mixup", "grad_clip", "lr_gamma"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_every_float_training_option_must_be_finite(option, value):
    with pytest.raises(ConfigError, match=option):
        sl.TrainConfig(**{option: value})


@pytest.mark.parametrize("make", [
    lambda m: sl.P3B(m, 0.5, allocation="fixed", keep_ratios=[float("nan"), 1.0] * 2),
    lambda m: sl.P3B(m, 0.5, momentum=float("nan")),
    lambda m: sl.P3B(m, 0.5, benefit_scale=float("inf")),
    lambda m: sl.P3B(m, 0.5, gate_factors={"attn_out": float("nan")}),
    lambda m: sl.P3B(m, float("nan")),
    lambda m: sl.P3BSchedule(tau=float("nan")),
], ids=["keep-ratios", "momentum", "benefit-scale", "gate-factor", "prune-ratio", "tau"])
def test_p3b_rejects_non_finite_options(make):
    with pytest.raises(ConfigError):
        make(nano())


@pytest.mark.parametrize("option", ["eta", "lam_init"])
def test_art_rejects_non_finite_options(option, digits8):
    with pytest.raises(ConfigError, match=option):
        sl.ART(lenet(), 0.9, **{option: float("nan")})
    with pytest.raises(ConfigError, match=option):
        art_exp.art_preset("tiny", **{option: float("nan")})


def test_a_diverging_fit_stops_and_keeps_the_last_good_checkpoint(digits8, tmp_path):
    opts = dict(batch_size=64, max_steps_per_epoch=5, progress=False, checkpoint_dir=tmp_path, optimizer="sgd",
                momentum=0.0)
    model = lenet()
    sl.fit(model, digits8, epochs=1, lr=0.01, **opts)
    good = load_checkpoint(tmp_path / "last.pt")
    with pytest.raises(DivergedError, match="non-finite"):
        sl.fit(lenet(), digits8, epochs=1, lr=1e30, **opts)
    after = load_checkpoint(tmp_path / "last.pt")
    for k, v in good["model"].items():
        assert torch.equal(after["model"][k], v)
    assert all(torch.isfinite(v).all() for v in after["model"].values())


def test_nonfinite_skip_drops_the_bad_step_and_counts_it(digits8):
    class Poison(sl.Pruner):
        def extra_loss(self, state):
            if state.step == 2:
                return state.outputs.sum() * float("nan")

    model = lenet()
    h = sl.fit(model, digits8, epochs=1, batch_size=64, max_steps_per_epoch=5, progress=False, nonfinite="skip",
               callbacks=[Poison()])
    assert h.last("skipped_steps", "train") == 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(h.last("acc", "test"))
    with pytest.raises(DivergedError):
        sl.fit(lenet(), digits8, epochs=1, batch_size=64, max_steps_per_epoch=5, progress=False,
               callbacks=[Poison()])


def test_art_never_reports_a_diverged_model(digits8):
    class NaNWeight(sl.Pruner):  # a weight turns NaN; with nonfinite="skip" training goes on around it
        def after_step(self, state):
            if state.step == 2:
                with torch.no_grad():
                    state.model.fc1.weight[0, 0] = float("nan")

    model = lenet()
    art = sl.ART(model, 0.9, warmup_epochs=0, lam_init=1e-4, eta=2.0, max_art_epochs=3)
    with pytest.raises(DivergedError, match="ART diverged in ART epoch 0"):
        sl.fit(model, digits8, epochs=art.max_epochs, pruner=art, batch_size=64, max_steps_per_epoch=3,
               progress=False, nonfinite="skip", callbacks=[NaNWeight()])
    assert art.candidate is None and not art.terminated


# ------------------------------------------------------------------------------------- checkpoint files
def test_a_corrupted_checkpoint_is_refused_and_an_orphaned_temporary_file_removed(digits8, tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 3, "weights": torch.arange(100.0)}, path)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)
    orphan = tmp_path / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    path.unlink()
    sl.fit(lenet(), digits8, epochs=1, batch_size=64, max_steps_per_epoch=2, progress=False, checkpoint_dir=tmp_path)
    assert not orphan.exists() and load_checkpoint(path)["step"] == 2


# ------------------------------------------------------------------------------------- checked before work
def test_unsupported_vit_blocks_are_rejected_when_p3b_is_built():
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    glu = VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                            mlp_layer=SwiGLUPacked, mlp_ratio=2)
    with pytest.raises(ConfigError, match="GluMlp"):
        sl.P3B(glu, 0.5)
    diff = VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                             attn_layer="diff")
    with pytest.raises(ConfigError, match="DiffAttention"):
        sl.P3B(diff, 0.5)


def test_an_image_size_the_model_does_not_take_fails_before_training(digits8, digits28):
    with pytest.raises(ConfigError, match="takes 28x28 images .* loaded at 8x8"):
        sl.fit(nano(), digits8, epochs=1, progress=False)
    big = sl.models.create("lenet_300_100", num_classes=10, image_size=28)
    with pytest.raises(ConfigError, match="image_size=8"):
        sl.fit(big, digits8, epochs=1, progress=False)


# ------------------------------------------------------------------------------------- ART resumes
def test_art_run_resumes_exactly_after_a_crash_in_each_phase(tmp_path, monkeypatch):
    preset = art_exp.art_preset("tiny", warmup_epochs=1, max_art_epochs=3, finetune_epochs=2)
    data = art_exp.load_data(preset)
    reference = art_exp.run_art(preset, "hypersparse", 0.9, 0, data=data, progress=False)
    real = art_exp.fit
    for phase in ("warmup", "sparsify", "finetune"):
        folder = tmp_path / phase
        crashed = {"done": False}

        def crashing(*args, phase=phase, crashed=crashed, **kwargs):
            # every fit of the phase carries a Crash callback (so that the resumed run has the same plug-ins);
            # only the first one fires, at step 3, after step checkpoints
            if str(kwargs.get("checkpoint_dir", "")).endswith(phase):
                kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + [Crash(-1 if crashed["done"] else 3)]
                kwargs["checkpoint_every"] = 1
                crashed["done"] = True
            return real(*args, **kwargs)

        monkeypatch.setattr(art_exp, "fit", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            art_exp.run_art(preset, "hypersparse", 0.9, 0, data=data, progress=False, checkpoint_dir=str(folder))
        resumed = art_exp.run_art(preset, "hypersparse", 0.9, 0, data=data, progress=False,
                                  checkpoint_dir=str(folder), resume=True)
        for (k, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), (phase, k)
        assert resumed.result == reference.result
