"""Unstructured masks compute what was asked: pruned weights stay pruned and zero, whatever the optimizer does."""
from __future__ import annotations

import pytest
import torch

import sparselab as sl
from sparselab.pruners.masking import GradualMagnitude


def _run_recording_updates(cls, **train):
    """Train lenet_300_100 on digits under ``cls`` (SGD with momentum, so masked weights move within a step) and
    record, at every mask update, the previous mask, the new one and the weights right after it."""
    torch.manual_seed(0)
    data = sl.data.load("digits", image_size=8, limit=256)
    model = sl.models.create("lenet_300_100", image_size=8)
    updates = []

    class Recording(cls):
        def after_step(self, state):
            before = {k: v.clone() for k, v in self.masks.items()}
            super().after_step(state)
            if any(not torch.equal(before[k], self.masks[k]) for k in before):
                params = dict(state.model.named_parameters())
                updates.append((before, {k: v.clone() for k, v in self.masks.items()},
                                {k: params[k].detach().clone() for k in self.masks}))

    pruner = Recording(model, 0.9, start_epoch=0, end_epoch=3, every=2)
    sl.fit(model, data, epochs=4, batch_size=32, pruner=pruner, progress=False, optimizer="sgd", lr=0.5,
           momentum=0.9, weight_decay=1e-3, **train)
    return pruner, updates


def test_gradual_magnitude_never_revives_a_pruned_weight_under_momentum():
    # the step before an update moves masked weights by momentum; scored before they are zeroed again, they would
    # outrank kept weights and come back with a value they were never trained to
    pruner, updates = _run_recording_updates(GradualMagnitude)
    assert len(updates) >= 3
    for before, after, weights in updates:
        for k in after:
            assert not bool((after[k] & ~before[k]).any()), f"{k}: a pruned weight is kept again"
            assert bool((weights[k][~after[k]] == 0).all())
    assert pruner.sparsity() == pytest.approx(0.9, abs=1e-3)
