"""A stop that a hook requests during an epoch, and the metrics hooks see, survive a resume; mixup/cutmix on an odd
batch is refused before any step; normalisation statistics made non-finite by a skipped step never reach the
History or the returned model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.callbacks import Callback
from sparselab.errors import ConfigError, DivergedError

OPTS = dict(batch_size=32, progress=False)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8, limit=128)


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", num_classes=10, in_chans=1, image_size=8)


class NoStep(Callback):
    def after_step(self, state):
        raise AssertionError("a training step ran")


# ------------------------------------------------------------------------------------ hook state and resume
class StopDuringEpoch(Callback):
    """Asks to stop during epoch 1, records what it sees in ``state.metrics``, and may crash at a step."""

    def __init__(self, crash_at: int | None = None):
        self.crash_at = crash_at
        self.seen: list[tuple[int, float | None]] = []

    def after_step(self, state):
        self.seen.append((state.step, state.metrics.get("val_acc")))
        if state.step == 5:
            state.should_stop = True
        if state.step == self.crash_at:
            raise RuntimeError("simulated crash")


def test_a_stop_requested_during_an_epoch_and_the_metrics_survive_a_resume(digits, tmp_path):
    ref_cb = StopDuringEpoch()
    ref = sl.fit(lenet(), digits, epochs=4, callbacks=[ref_cb], **OPTS)
    assert ref.metrics.epoch.max() == 1  # stopped after epoch 1 (4 steps per epoch)

    opts = dict(epochs=4, checkpoint_dir=tmp_path, checkpoint_every=1, **OPTS)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(lenet(), digits, callbacks=[StopDuringEpoch(crash_at=6)], **opts)
    cb = StopDuringEpoch()
    resumed = sl.fit(lenet(), digits, callbacks=[cb], resume=True, **opts)
    assert resumed == ref
    assert cb.seen == ref_cb.seen[5:]  # the steps after the checkpoint, seeing epoch 0's metrics


# --------------------------------------------------------------------------------------------- mixup batches
@pytest.mark.parametrize("option", ["mixup", "cutmix"])
@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_mixup_on_an_odd_last_batch_is_refused_before_any_step(option, accumulate_steps):
    odd = sl.data.load("digits", image_size=8, limit=129)
    assert len(odd.train) % 2 == 1
    with pytest.raises(ConfigError, match=r"mixup/cutmix need an even number of images in every batch.*batch of 1"):
        sl.fit(lenet(), odd, epochs=1, drop_last=False, accumulate_steps=accumulate_steps, callbacks=[NoStep()],
               **{option: 0.2}, **OPTS)
    sl.fit(lenet(), odd, epochs=1, drop_last=True, **{option: 0.2}, **OPTS)  # whole batches only: trains


# ------------------------------------------------------------------------------- non-finite running statistics
class BatchNormNet(nn.Module):
    """A linear classifier behind batch norm; ``poison`` makes its next forward all NaN."""

    def __init__(self):
        super().__init__()
        self.poison = False
        self.bn = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        if self.poison:
            x = x * float("nan")
        return self.fc(self.bn(x))


class PoisonSecondStep(Callback):
    def __init__(self):
        self.evaluated = False

    def after_step(self, state):
        state.model.poison = state.step == 1

    def on_epoch_end(self, state):
        self.evaluated = True


def test_a_skipped_step_that_leaves_nan_running_statistics_does_not_end_normally(digits, tmp_path):
    torch.manual_seed(0)
    model, history, cb = BatchNormNet(), sl.History(), PoisonSecondStep()
    with pytest.raises(DivergedError, match=r"non-finite weights \(bn.running_mean, bn.running_var\) at step 4"):
        sl.fit(model, digits, epochs=1, nonfinite="skip", callbacks=[cb], history=history,
               checkpoint_dir=tmp_path, **OPTS)
    assert not cb.evaluated
    assert history.metrics.value.notna().all()  # no NaN evaluation was logged
    assert not (tmp_path / "last.pt").exists()


def test_finite_running_statistics_train_as_before(digits):
    torch.manual_seed(0)
    model = BatchNormNet()
    history = sl.fit(model, digits, epochs=1, nonfinite="skip", **OPTS)
    assert history.metrics.value.notna().all()
    assert torch.isfinite(model.bn.running_var).all()
