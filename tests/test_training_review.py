"""fit and evaluate refuse arguments they would misread or fail on only after training started; option values a run
would ignore are refused; a handed-over optimizer keeps the next fit's settings; steps that were all skipped leave
no made-up loss in the History, and a model with non-finite weights is never returned; a resume into a run of other
precision or data loading, or from an incomplete checkpoint, is refused; evaluate leaves every submodule in the mode
it found it."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.callbacks import Callback
from sparselab.errors import CheckpointError, ConfigError, DivergedError
from sparselab.training import OptimizerHandoff
from sparselab.training.checkpoint import FORMAT, atomic_save, load_checkpoint

OPTS = dict(epochs=1, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=8, limit=128)


def lenet(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return sl.models.create("lenet_300_100", **{"num_classes": 10, "in_chans": 1, "image_size": 8, **kwargs})


class Steps(Callback):
    def __init__(self):
        self.steps = 0

    def after_step(self, state):
        self.steps += 1


class NoStep(Callback):
    def after_step(self, state):
        raise AssertionError("a training step ran")


# ----------------------------------------------------------------------------------------------- fit arguments
def test_callbacks_given_as_a_generator_are_all_called(digits):
    counters = [Steps(), Steps()]
    sl.fit(lenet(), digits, callbacks=(c for c in counters), **OPTS)
    assert [c.steps for c in counters] == [4, 4]


def _frozen():
    return lenet().requires_grad_(False)


BAD_FIT = [
    ("model-as-string", dict(model="lenet_300_100"), r"model must be a torch nn.Module"),
    ("resume-as-string", dict(resume="no", checkpoint_dir="{tmp}"), r"resume must be True or False, got 'no'"),
    ("progress-as-string", dict(progress="no"), r"progress must be True or False, got 'no'"),
    ("checkpoint-dir-number", dict(checkpoint_dir=3), r"checkpoint_dir must be a folder path"),
    ("checkpoint-dir-is-a-file", dict(checkpoint_dir="{tmp}/file"), r"is a file, not a folder"),
    ("checkpoint-every-without-dir", dict(checkpoint_every=2), r"checkpoint_every=2 needs checkpoint_dir"),
    ("history-as-dict", dict(history={}), r"history must be a sparselab History"),
    ("grad-scaler-number", dict(grad_scaler=1), r"grad_scaler must be a torch.amp.GradScaler"),
    ("momentum-with-adamw", dict(momentum=0.5), r"momentum applies to optimizer='sgd' only"),
    ("nothing-trainable", dict(model=_frozen), r"nothing to train: the model has no parameters with requires_grad"),
    ("eval-on-a-missing-test-split", dict(eval_split="test", data="no-test"), r"eval_split='test', but .* has no "
     r"test split"),
]


@pytest.mark.parametrize("kwargs, pattern", [row[1:] for row in BAD_FIT], ids=[row[0] for row in BAD_FIT])
def test_fit_refuses_a_bad_argument_before_any_step(kwargs, pattern, digits, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    model = kwargs.pop("model", lenet)
    model = model() if callable(model) else model
    data = dataclasses.replace(digits, test=None) if kwargs.pop("data", None) == "no-test" else digits
    with pytest.raises(ConfigError, match=pattern):
        sl.fit(model, data, callbacks=[NoStep()], **{**OPTS, **kwargs})


def test_momentum_stays_allowed_where_it_acts():
    assert sl.TrainConfig(optimizer="sgd", momentum=0.5).momentum == 0.5
    assert sl.TrainConfig(optimizer="adamw").momentum == 0.9  # the default is no request


# ----------------------------------------------------------------------------------------------- evaluate
BAD_EVALUATE = [
    ("batch-size-zero", dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    ("batch-size-negative", dict(batch_size=-1), r"batch_size must be an integer >= 1"),
    ("batch-size-fraction", dict(batch_size=1.5), r"batch_size must be an integer >= 1"),
    ("device-unknown", dict(device="gpu"), r"device 'gpu' is not a device torch knows"),
    ("amp-as-string", dict(amp="no"), r"amp must be True or False or None"),
    ("workers-negative", dict(num_workers=-1), r"num_workers must be an integer >= 0"),
    ("dataset-name", dict(dataset="digits"), r"evaluate needs a dataset of \(image, label\) pairs"),
    ("model-without-parameters", dict(model=nn.Flatten()), r"evaluate needs a model with parameters"),
    ("model-as-string", dict(model="lenet_300_100"), r"evaluate needs a torch nn.Module"),
]


@pytest.mark.parametrize("kwargs, pattern", [row[1:] for row in BAD_EVALUATE], ids=[row[0] for row in BAD_EVALUATE])
def test_evaluate_refuses_a_bad_argument(kwargs, pattern, digits):
    model = kwargs.pop("model", None) or lenet()
    dataset = kwargs.pop("dataset", digits.test)
    with pytest.raises(ConfigError, match=pattern):
        sl.evaluate(model, dataset, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_on_cuda_without_cuda_is_a_clear_error(digits):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        sl.evaluate(lenet(), digits.test, device="cuda")


def test_evaluate_keeps_each_submodule_in_its_mode_even_when_it_fails(digits):
    model = lenet()
    model.train()
    model.fc1.eval()  # e.g. a frozen part
    before = {name: m.training for name, m in model.named_modules()}
    sl.evaluate(model, digits.test)
    assert {name: m.training for name, m in model.named_modules()} == before

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            raise RuntimeError("broken forward")

    broken = Broken().train()
    with pytest.raises(RuntimeError, match="broken forward"):
        sl.evaluate(broken, digits.test)
    assert broken.training and broken.fc.training


# ----------------------------------------------------------------------------------------------- skipped steps
class NonFiniteAt(Callback):
    """A non-finite extra loss at the given steps (0-based, counted before the step)."""

    def __init__(self, steps):
        self.steps, self.metrics = set(steps), []

    def extra_loss(self, state):
        return torch.tensor(float("nan")) if state.step in self.steps else None

    def on_epoch_end(self, state):
        self.metrics.append(dict(state.metrics))


def test_an_epoch_of_skipped_steps_reports_no_made_up_loss(digits):
    cb = NonFiniteAt(range(4))  # the whole first epoch (4 steps of 32 images)
    h = sl.fit(lenet(), digits, **{**OPTS, "epochs": 2}, log_every=2, nonfinite="skip", callbacks=[cb])
    train = h.metrics.query("split == 'train'")
    first = train[train.epoch == 0]
    assert set(first.name) == {"skipped_steps", "lr"}  # no loss 0.0, no accuracy 0.0
    assert math.isnan(cb.metrics[0]["train_loss"]) and math.isnan(cb.metrics[0]["train_acc"])
    second = train[train.epoch == 1]
    assert {"loss", "epoch_loss", "acc"} <= set(second.name) and (second.value > 0).all()
    assert math.isfinite(cb.metrics[1]["train_loss"])
    assert h.series("lr", "train").index.tolist() == [2, 4, 6, 8]


# ----------------------------------------------------------------------------------------------- optimizer hand-off
def test_a_handed_over_optimizer_keeps_the_next_fits_settings(digits):
    model = lenet()
    handoff = OptimizerHandoff()
    sl.fit(model, digits, optimizer="sgd", lr=0.05, weight_decay=0.5, momentum=0.9, callbacks=[handoff], **OPTS)
    seen = []

    class Look(Callback):
        def after_backward(self, state):
            seen.append([(g["lr"], g["weight_decay"], g["momentum"]) for g in state.optimizer.param_groups])

    sl.fit(model, digits, optimizer="sgd", lr=0.01, weight_decay=0.0, momentum=0.5,
           callbacks=[handoff.resume(), Look()], **OPTS)
    assert seen and all(groups == [(0.01, 0.0, 0.5), (0.01, 0.0, 0.5)] for groups in seen)


def test_a_handed_over_optimizer_of_another_kind_is_refused(digits):
    model = lenet()
    handoff = OptimizerHandoff()
    sl.fit(model, digits, optimizer="adamw", callbacks=[handoff], **OPTS)
    for optimizer in ("sgd", "adam"):
        with pytest.raises(ConfigError, match=f"comes from AdamW, but this fit builds "
                                              f"{'SGD' if optimizer == 'sgd' else 'Adam'}"):
            sl.fit(model, digits, optimizer=optimizer, callbacks=[handoff.resume(), NoStep()], **OPTS)
    # a state handed over by hand (no class recorded) is still checked by its settings
    with pytest.raises(ConfigError, match="pass the same optimizer to both fits"):
        sl.fit(model, digits, optimizer="sgd", callbacks=[OptimizerHandoff(handoff.saved), NoStep()], **OPTS)


# ----------------------------------------------------------------------------------------------- checkpoints
class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def after_step(self, state):
        if state.step == self.at:
            raise RuntimeError("simulated crash")


def _crashed_run(data, folder, model=None, **opts):
    with pytest.raises(RuntimeError, match="simulated crash"):
        sl.fit(model or lenet(), data, callbacks=[Crash(3)], checkpoint_dir=folder, checkpoint_every=2,
               **{**OPTS, **opts})


def test_resume_refuses_a_checkpoint_of_other_precision(digits, tmp_path):
    _crashed_run(digits, tmp_path)
    path = tmp_path / "last.pt"
    ck = load_checkpoint(path)
    assert ck["runtime"] == {"amp": False, "amp_dtype": None, "grad_scaler": False}
    ck["runtime"] = {**ck["runtime"], "amp": True, "amp_dtype": "torch.bfloat16"}  # as written on a GPU
    atomic_save(ck, path)
    with pytest.raises(CheckpointError, match=r"precision and data-loading settings differ \(amp: True in the "
                                              r"checkpoint, False now"):
        sl.fit(lenet(), digits, callbacks=[Crash(-1)], checkpoint_dir=tmp_path, resume=True, checkpoint_every=2,
               **OPTS)


def test_resume_refuses_another_loss_scaler(digits, tmp_path):
    _crashed_run(digits, tmp_path)
    with pytest.raises(CheckpointError, match=r"grad_scaler: False in the checkpoint, True now"):
        sl.fit(lenet(), digits, callbacks=[Crash(-1)], checkpoint_dir=tmp_path, resume=True, checkpoint_every=2,
               grad_scaler=torch.amp.GradScaler("cpu"), **OPTS)


def test_a_mid_epoch_resume_of_augmented_image_files_is_exact_with_any_loader_workers(tmp_path):
    """Image files are augmented item by item in a DataLoader: each item draws from its own seed, so a run
    resumed in the middle of an epoch, with other loader workers, ends with the weights of the uninterrupted
    run."""
    from conftest import write_image_folder

    data = sl.data.load("imagefolder", root=write_image_folder(tmp_path / "images"), image_size=8,
                        augment="crop_flip")
    opts = {**OPTS, "batch_size": 4, "device": "cpu"}
    ref = lenet(num_classes=3, in_chans=3)
    sl.fit(ref, data, callbacks=[Crash(-1)], **opts)
    _crashed_run(data, tmp_path / "ck", lenet(num_classes=3, in_chans=3), batch_size=4, device="cpu")
    model = lenet(num_classes=3, in_chans=3, seed=1)
    sl.fit(model, data, callbacks=[Crash(-1)], checkpoint_dir=tmp_path / "ck", resume=True, checkpoint_every=2,
           num_workers=2, **opts)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_resume_on_in_memory_data_ignores_the_loader_workers(digits, tmp_path):
    ref = lenet()
    sl.fit(ref, digits, callbacks=[Crash(-1)], **OPTS)
    _crashed_run(digits, tmp_path)
    model = lenet(seed=1)
    sl.fit(model, digits, callbacks=[Crash(-1)], checkpoint_dir=tmp_path, resume=True, checkpoint_every=2,
           num_workers=2, **OPTS)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_an_incomplete_checkpoint_is_refused(digits, tmp_path):
    atomic_save({"format": FORMAT, "config": {}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"is incomplete: it lacks loop, step, model"):
        sl.fit(lenet(), digits, checkpoint_dir=tmp_path, resume=True, **OPTS)


def test_a_finite_loss_with_non_finite_gradients_does_not_end_normally(digits):
    class NaNGradient(Callback):  # sqrt at 0: the loss term is 0, its gradient NaN
        def extra_loss(self, state):
            return torch.sqrt(state.model.fc3.bias * 0).sum() if state.step == 1 else None

    history = sl.History()
    with pytest.raises(DivergedError, match=r"non-finite weights \(fc3.bias\) at step 4: training diverged. Lower"):
        sl.fit(lenet(), digits, **{**OPTS, "epochs": 2}, nonfinite="skip", history=history,
               callbacks=[NaNGradient()])
    assert history.metrics.epoch.max() == 0  # stopped at the end of the epoch it diverged in


def test_amp_dtype_without_mixed_precision_is_refused():
    with pytest.raises(ConfigError, match=r"amp_dtype='float16' applies under mixed precision only"):
        sl.TrainConfig(amp=False, amp_dtype="float16")
    assert sl.TrainConfig(amp=None, amp_dtype="float16").amp_dtype == "float16"  # on where CUDA runs


def test_a_refused_resume_leaves_the_model_as_it_was_given(tmp_path):
    """A checkpoint of another architecture (same keys and shapes) is refused before any weight is loaded: the
    caller's model keeps its own weights."""
    import copy


    class Stop(Callback):
        def after_step(self, state):
            if state.step == 2:  # after the checkpoint of step 1
                raise RuntimeError("stop after the first checkpoint")

    data = sl.data.load("digits", image_size=28, limit=64)
    with pytest.raises(RuntimeError, match="stop after"):
        sl.fit(sl.models.create("vit_nano_patch4_28"), data, epochs=1, batch_size=32, progress=False,
               checkpoint_dir=tmp_path, checkpoint_every=1, callbacks=[Stop()])
    other = sl.models.create("vit_nano_patch4_28", act_layer="relu")
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointError, match="belongs to another run"):
        sl.fit(other, data, epochs=1, batch_size=32, progress=False, checkpoint_dir=tmp_path, resume=True,
               callbacks=[Stop()])
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
