"""A step the loss scaler skips for inf/NaN gradients makes no update: like a step dropped for a non-finite loss,
it adds nothing to the train loss and accuracy of its logging window and epoch, and ``skipped_steps`` counts it."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import infinite_gradient, outlier_logits
from torch import nn

import sparselab as sl
from sparselab.callbacks import Callback
from sparselab.data import TensorImages
from sparselab.data.datasets import DataBundle


class Overflow(Callback):
    """Overflows the gradients of the steps in ``at`` (0-based) and records which steps the scaler skipped."""

    def __init__(self, at):
        self.at = set(at)
        self.skipped: list[bool] = []

    def extra_loss(self, state):
        if state.step in self.at:
            return infinite_gradient(state.outputs)

    def after_step(self, state):
        self.skipped.append(state.step_skipped)


def zeros_data() -> DataBundle:
    x, y = torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)  # every label is class 0
    return DataBundle("zeros", TensorImages(x, y, augment="none"), None, TensorImages(x, y, augment="none"),
                      num_classes=2, in_chans=1, image_size=2)


def run(model: nn.Module, overflow: Overflow, **options) -> sl.History:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10_000)
    return sl.fit(model, zeros_data(), epochs=1, batch_size=2, log_every=1, lr=0.1, optimizer="sgd",
                  final_test=False, progress=False, grad_scaler=scaler, callbacks=[overflow], **options)


def test_a_step_the_scaler_skips_stays_out_of_the_train_metrics():
    # 4 steps of 2 images; step 3 has the outlier loss and overflowing gradients, so the scaler skips it
    overflow = Overflow(at={2})
    history = run(outlier_logits(outliers={3}), overflow)
    assert overflow.skipped == [False, False, True, False]
    assert history.last("epoch_loss", "train") == pytest.approx(math.log(2))
    assert history.last("acc", "train") == 1.0
    logged = history.metrics.query("split == 'train' and name == 'loss'")
    assert logged.step.tolist() == [1, 2, 4]
    assert logged.value.tolist() == pytest.approx([math.log(2)] * 3)
    skipped = history.metrics.query("split == 'train' and name == 'skipped_steps'")
    assert skipped.step.tolist() == [3] and skipped.value.tolist() == [1.0]


def test_skipped_steps_counts_scaler_skips_and_non_finite_losses_alike():
    # step 2 has a NaN loss (dropped before backward), step 4 the outlier and overflowing gradients
    overflow = Overflow(at={3})
    history = run(outlier_logits(outliers={4}, nans={2}), overflow, nonfinite="skip")
    assert overflow.skipped == [False, True, False, True]
    skipped = history.metrics.query("split == 'train' and name == 'skipped_steps'")
    assert skipped.step.tolist() == [2, 4] and skipped.value.tolist() == [1.0, 2.0]
    assert history.last("epoch_loss", "train") == pytest.approx(math.log(2))
    assert history.last("acc", "train") == 1.0


def test_an_epoch_whose_every_step_the_scaler_skips_reports_no_train_metrics():
    overflow = Overflow(at={0, 1, 2, 3})
    history = run(outlier_logits(outliers={1, 2, 3, 4}), overflow)
    assert overflow.skipped == [True] * 4
    train = history.metrics.query("split == 'train'")
    assert set(train.name) == {"skipped_steps", "lr"}  # no loss, no accuracy made up from updates never made
    assert history.last("skipped_steps", "train") == 4.0
