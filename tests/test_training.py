from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.errors import CheckpointError, ConfigError, UnknownNameError
from sparselab.training.checkpoint import atomic_save, load_checkpoint

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8, augment="crop_flip")


def lenet(seed=0):
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", num_classes=10, image_size=8)


class Recorder(sl.Pruner):
    """Records every hook call, checks what each hook can see, and carries state through checkpoints."""

    def __init__(self, stop_at_epoch=None, interrupt_at_step=None, crash_at_step=None, sig=signal.SIGINT):
        self.sig = sig
        self.calls: list[tuple[str, int]] = []
        self.seen_steps = 0
        self.stop_at_epoch = stop_at_epoch
        self.interrupt_at_step = interrupt_at_step
        self.crash_at_step = crash_at_step
        self.extra = nn.Parameter(torch.zeros(1))

    def param_groups(self, groups):
        return groups + [{"params": [self.extra], "weight_decay": 0.0, "lr": 0.0}]

    def on_fit_start(self, state):
        self.calls.append(("on_fit_start", state.step))

    def extra_loss(self, state):
        assert state.outputs is not None and state.outputs.requires_grad
        self.calls.append(("extra_loss", state.step))
        return (self.extra * 0).sum() + 0.0 * state.outputs.sum()

    def after_backward(self, state):
        assert all(p.grad is not None for p in state.model.parameters())
        self.calls.append(("after_backward", state.step))

    def after_step(self, state):
        self.calls.append(("after_step", state.step))
        self.seen_steps += 1
        if self.interrupt_at_step == state.step:
            os.kill(os.getpid(), self.sig)
        if self.crash_at_step == state.step:
            raise RuntimeError("simulated crash")

    def on_epoch_end(self, state):
        assert "val_acc" in state.metrics
        self.calls.append(("on_epoch_end", state.step))
        if self.stop_at_epoch == state.epoch:
            state.should_stop = True

    def on_fit_end(self, state):
        self.calls.append(("on_fit_end", state.step))

    def state_dict(self):
        return {"seen_steps": self.seen_steps}

    def load_state_dict(self, state):
        self.seen_steps = state["seen_steps"]


def test_hooks_are_called_in_order(digits):
    rec = Recorder()
    sl.fit(lenet(), digits, epochs=2, batch_size=64, max_steps_per_epoch=3, progress=False, pruner=rec)
    names = [c[0] for c in rec.calls]
    per_step = ["extra_loss", "after_backward", "after_step"]
    expected = ["on_fit_start"] + (per_step * 3 + ["on_epoch_end"]) * 2 + ["on_fit_end"]
    assert names == expected
    # after_step sees the step already counted; extra_loss/after_backward see the steps done before
    assert [s for n, s in rec.calls if n == "after_step"] == [1, 2, 3, 4, 5, 6]
    assert [s for n, s in rec.calls if n == "extra_loss"] == [0, 1, 2, 3, 4, 5]


def test_callbacks_follow_the_pruner_and_should_stop_ends_training(digits):
    rec, cb = Recorder(stop_at_epoch=0), Recorder()
    h = sl.fit(lenet(), digits, epochs=5, batch_size=64, max_steps_per_epoch=2, progress=False, pruner=rec,
               callbacks=[cb])
    assert rec.calls == cb.calls
    assert [n for n, _ in rec.calls].count("on_epoch_end") == 1
    assert h.metrics.epoch.max() == 0


def test_training_learns_and_records_metrics():
    plain = sl.data.load("digits", image_size=8)
    h = sl.fit(lenet(), plain, epochs=3, batch_size=32, lr=2e-3, progress=False, log_every=5)
    m = h.metrics
    assert set(m.split) == {"train", "val", "test"}
    assert h.last("acc", "test") > 0.8
    losses = h.series("loss", "train")
    assert losses.iloc[-1] < losses.iloc[0]
    assert (losses.index.to_numpy() % 5 == 0).all()
    assert h.meta["data"] == "digits" and h.meta["config"]["lr"] == 2e-3


def test_extra_loss_reaches_the_gradients(digits):
    class GradProbe(sl.Pruner):
        def __init__(self, weight):
            self.weight, self.grads = weight, []

        def extra_loss(self, state):
            return self.weight * state.model.fc3.bias.sum() if self.weight else None

        def after_backward(self, state):
            self.grads.append(state.model.fc3.bias.grad.clone())

    opts = dict(epochs=1, batch_size=64, max_steps_per_epoch=1, progress=False)
    plain, extra = GradProbe(0.0), GradProbe(5.0)
    sl.fit(lenet(), digits, pruner=plain, **opts)
    sl.fit(lenet(), digits, pruner=extra, **opts)
    torch.testing.assert_close(extra.grads[0] - plain.grads[0], torch.full((10,), 5.0))


def _weights_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


OPTS = dict(epochs=3, batch_size=64, max_steps_per_epoch=7, lr=2e-3, log_every=2, progress=False, seed=5,
            lr_schedule="cosine", warmup_steps=3)


def test_resume_after_crash_is_exact(digits, tmp_path):
    ref_model, ref_rec = lenet(), Recorder()
    ref = sl.fit(ref_model, digits, pruner=ref_rec, **OPTS)

    model = lenet()
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(model, digits, pruner=Recorder(crash_at_step=12), checkpoint_dir=tmp_path,
               checkpoint_every=4, **OPTS)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8  # mid-epoch checkpoint (7 steps per epoch)
    resumed_model, rec = lenet(seed=99), Recorder()  # different init: everything must come from the checkpoint
    resumed = sl.fit(resumed_model, digits, pruner=rec, checkpoint_dir=tmp_path, resume=True,
                     checkpoint_every=4, **OPTS)
    assert _weights_equal(resumed_model, ref_model)
    assert resumed == ref
    assert rec.seen_steps == ref_rec.seen_steps == 21


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_checkpoints_the_current_step_and_resumes_exactly(digits, tmp_path, sig):
    ref_model = lenet()
    ref = sl.fit(ref_model, digits, **OPTS)
    with pytest.raises(KeyboardInterrupt):
        sl.fit(lenet(), digits, pruner=Recorder(interrupt_at_step=10, sig=sig), checkpoint_dir=tmp_path, **OPTS)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 10  # nothing lost
    model = lenet(seed=7)
    resumed = sl.fit(model, digits, pruner=Recorder(), checkpoint_dir=tmp_path, resume=True, **OPTS)
    assert _weights_equal(model, ref_model)
    assert resumed.to_pandas()["metrics"].equals(ref.to_pandas()["metrics"])
    # resuming a finished run changes nothing
    again = sl.fit(model, digits, pruner=Recorder(), checkpoint_dir=tmp_path, resume=True, **OPTS)
    assert again == resumed and _weights_equal(model, ref_model)


def test_resume_refuses_other_settings_and_bad_files(digits, tmp_path):
    sl.fit(lenet(), digits, checkpoint_dir=tmp_path, **{**OPTS, "epochs": 1})
    with pytest.raises(CheckpointError, match="other settings"):
        sl.fit(lenet(), digits, checkpoint_dir=tmp_path, resume=True, **{**OPTS, "lr": 1.0})
    with pytest.raises(CheckpointError, match="pruner/callbacks"):
        sl.fit(lenet(), digits, pruner=Recorder(), checkpoint_dir=tmp_path, resume=True, **{**OPTS, "epochs": 1})
    with pytest.raises(CheckpointError, match="does not fit this model"):
        sl.fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, checkpoint_dir=tmp_path, resume=True,
               **{**OPTS, "epochs": 1})
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        sl.fit(lenet(), digits, checkpoint_dir=tmp_path, resume=True, **OPTS)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        sl.fit(lenet(), digits, resume=True, **OPTS)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_mismatched_model_and_bad_options_are_clear_errors(digits):
    with pytest.raises(ConfigError, match="num_classes=10"):
        sl.fit(sl.models.create("lenet_300_100", num_classes=3, image_size=8), digits, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="in_chans=1"):
        sl.fit(sl.models.create("resnet20", num_classes=10, in_chans=3), digits, epochs=1, progress=False)
    with pytest.raises(UnknownNameError, match="Did you mean 'batch_size'"):
        sl.fit(lenet(), digits, batch_sise=3)
    with pytest.raises(ConfigError, match="exceeds"):
        sl.fit(lenet(), digits, epochs=1, batch_size=100_000, progress=False)
    with pytest.raises(ConfigError, match="label_smoothing"):
        sl.fit(lenet(), digits, label_smoothing=1.0)
    with pytest.raises(UnknownNameError, match="optimizer"):
        sl.fit(lenet(), digits, optimizer="adamw2")
    with pytest.raises(ConfigError, match="DataBundle"):
        sl.fit(lenet(), digits.train)


def test_lr_schedules():
    from sparselab.training.config import TrainConfig
    from sparselab.training.optim import lr_factor

    cos = TrainConfig(epochs=2, lr_schedule="cosine", warmup_steps=2)
    assert [round(lr_factor(s, cos, 5), 3) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(10, cos, 5) == pytest.approx(0.0, abs=1e-9)
    step = TrainConfig(epochs=200, lr_schedule="step", lr_milestones=(80, 120))
    assert [lr_factor(e * 10, step, 10) for e in (79, 80, 119, 120)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_dataloader_path_for_photo_datasets(tmp_path):
    from conftest import write_image_folder

    data = sl.data.load("imagefolder", root=write_image_folder(tmp_path / "t"), image_size=16, augment="none")
    model = sl.models.create("resnet20", num_classes=3, in_chans=3)
    h = sl.fit(model, data, epochs=1, batch_size=6, progress=False, device="cpu")
    assert len(h.series("epoch_loss", "train")) == 1
    # train/ + val/ without test/: val/ is the test set, evaluated every epoch and at the end
    assert 0 <= h.last("acc", "test") <= 1
    assert h.last("acc", "val", default=-1) == -1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(mode: str, out: Path) -> tuple[dict, dict]:
    """Launch tests/ddp_worker.py with torchrun (2 CPU processes, gloo) and load each rank's result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(HERE / "ddp_worker.py"), mode, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    return r0, r1


def single_process(mode: str) -> dict:
    sys.path.insert(0, str(HERE))
    import ddp_worker

    return ddp_worker.run(mode)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    r0, r1 = run_two_processes("plain", tmp_path)
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k  # ranks identical, bit for bit
    assert r0["history"] == r1["history"]
    single = single_process("plain")
    for k, v in single["model"].items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-4, atol=1e-5)
    multi = sl.History.from_state_dict(r0["history"]).metrics
    one = sl.History.from_state_dict(single["history"]).metrics
    assert multi[["step", "epoch", "split", "name"]].equals(one[["step", "epoch", "split", "name"]])
    assert (multi.value - one.value).abs().max() < 1e-4


@pytest.mark.slow
def test_a_two_process_run_resumed_mid_epoch_logs_what_the_uninterrupted_run_logs(tmp_path):
    """The epoch's running sums are each process's own: the checkpoint keeps all of them (was: process 0's,
    restored into every process, so the epoch's loss and accuracy counted process 0's images twice)."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "resume").mkdir()
    plain, _ = run_two_processes("plain", tmp_path / "plain")
    resumed, _ = run_two_processes("resume", tmp_path / "resume")
    for k, v in plain["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    a = sl.History.from_state_dict(plain["history"]).metrics
    b = sl.History.from_state_dict(resumed["history"]).metrics
    assert a[["step", "epoch", "split", "name"]].equals(b[["step", "epoch", "split", "name"]])
    assert ((a.value - b.value).abs() <= 1e-12 * a.value.abs().clip(lower=1)).all(), (a.value - b.value).abs().max()


def test_mixup_and_cutmix_train_and_resume_exactly(digits, tmp_path):
    opts = dict(epochs=2, batch_size=64, max_steps_per_epoch=3, progress=False, mixup=0.8, cutmix=1.0,
                label_smoothing=0.1)
    ref_model = lenet()
    ref = sl.fit(ref_model, digits, **opts)
    assert ref.last("epoch_loss", "train") > 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(lenet(), digits, pruner=Recorder(crash_at_step=5), checkpoint_dir=tmp_path, checkpoint_every=2,
               **opts)
    model = lenet(seed=3)
    sl.fit(model, digits, pruner=Recorder(), checkpoint_dir=tmp_path, resume=True, checkpoint_every=2, **opts)
    assert _weights_equal(model, ref_model)
    with pytest.raises(ConfigError, match="even batch_size"):
        sl.fit(lenet(), digits, batch_size=63, mixup=0.8)


def test_optimizers_run_fused_only_where_every_parameter_allows():
    from sparselab.training.config import TrainConfig
    from sparselab.training.optim import build_optimizer, fused_supported, param_groups

    for name in ("sgd", "adam", "adamw"):
        cfg = TrainConfig(optimizer=name, lr=1e-3)
        assert build_optimizer(param_groups(torch.nn.Linear(3, 2), cfg), cfg).defaults["fused"] is True
        meta = torch.nn.Linear(3, 2, device="meta")  # a device without fused kernels: torch's default path
        assert not fused_supported(param_groups(meta, cfg))
        assert not build_optimizer(param_groups(meta, cfg), cfg).defaults["fused"]
    assert not fused_supported([{"params": []}])
