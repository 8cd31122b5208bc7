"""Evaluations inside fit autocast in the run's amp dtype; the final test adds no second row for the model the
last epoch's test evaluation already measured; the micro-batches of a skipped step leave the epoch's train metrics
alone; under torchrun on CUDA the process group can all-reduce CPU tensors."""
from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
from conftest import outlier_logits
from torch import nn
from torch.distributed.distributed_c10d import BackendConfig

import sparselab as sl
import sparselab.evaluation as evaluation
import sparselab.training.loop as loop
from sparselab import runtime
from sparselab.callbacks import Callback
from sparselab.data import TensorImages
from sparselab.data.datasets import DataBundle
from sparselab.errors import ConfigError
from sparselab.training.checkpoint import atomic_save, load_checkpoint

OPTS = dict(batch_size=32, progress=False)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8, limit=128)


@pytest.fixture(scope="module")
def no_val(digits):
    """The test split is the per-epoch evaluation split."""
    return dataclasses.replace(digits, val=None)


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", num_classes=10, in_chans=1, image_size=8)


# ------------------------------------------------------------------------------------ amp dtype of evaluations
class AutocastProbe(nn.Module):
    """Records whether autocast is on for the CPU, and in which dtype, at each forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_evaluate_autocasts_in_the_dtype_it_is_given(digits, dtype):
    model = AutocastProbe()
    sl.evaluate(model, digits.test, batch_size=128, device="cpu", amp=True, amp_dtype=dtype)
    assert model.seen and set(model.seen) == {(True, dtype)}


@pytest.mark.parametrize("dtype", [torch.float32, "float16"])
def test_evaluate_refuses_an_amp_dtype_it_cannot_autocast_to(digits, dtype):
    with pytest.raises(ConfigError, match=r"amp_dtype must be one of torch.bfloat16, torch.float16 or None"):
        sl.evaluate(lenet(), digits.test, amp=True, amp_dtype=dtype)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_fit_evaluates_in_the_amp_dtype_it_trains_in(digits, monkeypatch, name):
    """Every evaluation of the run (each epoch's and the final test) gets the dtype the training steps get."""
    calls: dict[str, list[torch.dtype | None]] = {"train": [], "eval": []}

    def recorder(kind):
        def autocast(device, enabled, dtype=None):
            calls[kind].append(dtype)
            return contextlib.nullcontext()
        return autocast

    monkeypatch.setattr(loop, "autocast", recorder("train"))
    monkeypatch.setattr(evaluation, "autocast", recorder("eval"))
    sl.fit(lenet(), digits, epochs=2, amp_dtype=name, **OPTS)
    want = runtime.amp_dtype(name)
    assert set(calls["train"]) == {want}
    assert calls["eval"] and set(calls["eval"]) == {want}


# ------------------------------------------------------------------------------------ final test row
def acc_rows(history: sl.History):
    return history.metrics.query("split == 'test' and name == 'acc'")


class CountEvaluations:
    def __init__(self, monkeypatch):
        self.n = 0
        real = loop.evaluate

        def counted(*args, **kwargs):
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, "evaluate", counted)


def test_the_final_test_adds_no_row_where_the_last_epoch_already_tested_the_same_model(no_val, monkeypatch):
    counter = CountEvaluations(monkeypatch)
    model = lenet()
    history = sl.fit(model, no_val, epochs=2, **OPTS)
    rows = acc_rows(history)
    assert len(rows) == 2 and rows.step.is_unique and rows.epoch.tolist() == [0, 1]
    assert counter.n == 2  # one evaluation per epoch, none repeated at the end
    assert history.last("acc", "test") == sl.evaluate(model, no_val.test)["acc"]
    assert len(history.metrics.query("split == 'test' and name == 'loss'")) == 2


class ZeroHeadAtTheEnd(Callback):
    """Changes the model after the last epoch's evaluation: every image then goes to class 0."""

    def on_epoch_end(self, state):
        if state.epoch + 1 == state.epochs:
            with torch.no_grad():
                state.model.fc3.weight.zero_()
                state.model.fc3.bias.zero_()
                state.model.fc3.bias[0] = 1.0


def test_the_final_test_measures_a_model_changed_after_the_last_epochs_evaluation(no_val):
    model = lenet()
    history = sl.fit(model, no_val, epochs=2, callbacks=[ZeroHeadAtTheEnd()], **OPTS)
    rows = acc_rows(history)
    assert len(rows) == 3 and rows.step.iloc[-1] == rows.step.iloc[-2]
    final = sl.evaluate(model, no_val.test)
    class_0_share = float((no_val.test.labels == 0).double().mean())
    assert history.last("acc", "test") == final["acc"] == pytest.approx(class_0_share)
    assert rows.value.iloc[-2] != final["acc"]


class EpochEndObserver(Callback):
    def __init__(self):
        self.epochs: list[int] = []

    def on_epoch_end(self, state):
        self.epochs.append(state.epoch)


def test_a_hook_at_the_epoch_end_that_leaves_the_model_as_it_was_adds_no_second_row(no_val, monkeypatch):
    counter = CountEvaluations(monkeypatch)
    history = sl.fit(lenet(), no_val, epochs=2, callbacks=[EpochEndObserver()], **OPTS)
    assert len(acc_rows(history)) == 2
    assert counter.n == 3  # the hook might have changed the model: measured again, the same numbers


def test_with_a_validation_split_the_test_split_is_still_evaluated_once_at_the_end(digits):
    history = sl.fit(lenet(), digits, epochs=2, **OPTS)
    rows = acc_rows(history)
    assert len(rows) == 1 and rows.step.iloc[0] == history.metrics.step.max()
    assert len(history.metrics.query("split == 'val' and name == 'acc'")) == 2


def test_a_resumed_run_ends_with_the_same_test_rows(no_val, tmp_path):
    ref = sl.fit(lenet(), no_val, epochs=2, **OPTS)
    opts = dict(epochs=2, checkpoint_dir=tmp_path, **OPTS)
    sl.fit(lenet(), no_val, **opts)
    path = tmp_path / loop.CHECKPOINT_NAME
    ck = load_checkpoint(path)
    ck["loop"]["finished"] = False  # as if stopped between the last epoch and the final test
    atomic_save(ck, path)
    resumed = sl.fit(lenet(), no_val, resume=True, **opts)
    assert resumed == ref and len(acc_rows(resumed)) == 2


# ------------------------------------------------------------------------------------ skipped accumulated steps
def test_the_micro_batches_of_a_skipped_step_do_not_count_in_the_epochs_train_metrics():
    x, y = torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)  # every label is class 0
    data = DataBundle("zeros", TensorImages(x, y, augment="none"), None, TensorImages(x, y, augment="none"),
                      num_classes=2, in_chans=1, image_size=2)
    # 2 steps of 2 micro-batches of 2 images: step 2's first micro-batch is the outlier, its second is NaN
    model = outlier_logits(outliers={3}, nans={4})  # a large loss, then NaN in the same step
    history = sl.fit(model, data, epochs=1, batch_size=2, accumulate_steps=2, nonfinite="skip", log_every=1,
                     lr=0.1, optimizer="sgd", final_test=False, progress=False)
    assert model.calls == 4 and history.last("skipped_steps", "train") == 1
    assert history.last("epoch_loss", "train") == pytest.approx(math.log(2))
    assert history.last("acc", "train") == 1.0
    logged = history.metrics.query("split == 'train' and name == 'loss'")
    assert logged.step.tolist() == [1] and logged.value.iloc[0] == pytest.approx(math.log(2))


# ------------------------------------------------------------------------------------ process-group backend
@pytest.mark.parametrize("device, backend", [(torch.device("cuda", 0), "cpu:gloo,cuda:nccl"),
                                             (torch.device("cpu"), "gloo")])
def test_torchrun_gets_a_process_group_that_all_reduces_cpu_tensors(monkeypatch, device, backend):
    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kw: seen.append(backend))
    assert runtime.init_if_launched(device) is True
    assert seen == [backend]
    assert BackendConfig(backend).get_device_backend_map()["cpu"] == "gloo"  # metric sums live on the CPU


def test_logged_lr_is_the_one_each_step_trained_with():
    """The History's lr at step s is what optimizer step s used, read in the optimizer during that step, not the
    schedule's value for the step after it (one step late at every milestone and along warm-up and cosine)."""
    data = sl.data.load("digits", image_size=8)
    used: dict[int, float] = {}

    class Spy(sl.callbacks.Callback):
        def after_backward(self, state):  # the optimizer steps right after this, with these values
            used[state.step + 1] = state.optimizer.param_groups[0]["lr"]

    model = sl.models.create("lenet_300_100", image_size=8)
    h = sl.fit(model, data, epochs=3, max_steps_per_epoch=4, lr=0.1, lr_schedule="step", lr_milestones=(1, 2),
               warmup_steps=2, log_every=1, callbacks=[Spy()], progress=False, final_test=False)
    logged = h.series("lr", "train")
    assert logged.index.tolist() == sorted(used)
    assert logged.tolist() == pytest.approx([used[s] for s in logged.index], rel=1e-12)
    assert logged[4] == pytest.approx(0.1) and logged[5] == pytest.approx(0.01)  # the milestone at epoch 1
