"""Hand-overs, resumes and weight loading that would otherwise go on into another run, or other parameters."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.training import Callback, OptimizerHandoff

OPTS = dict(epochs=1, optimizer="sgd", momentum=0.9, max_steps_per_epoch=2, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def digits8():
    return sl.data.load("digits", image_size=8)


class NoStep(Callback):
    def after_backward(self, state):
        raise AssertionError("the fit should have been refused before its first step")


class Two(nn.Module):
    """Two layers of one shape, registered in either order."""

    def __init__(self, swapped: bool = False):
        super().__init__()
        if swapped:
            self.b, self.a = nn.Linear(64, 64), nn.Linear(64, 64)
        else:
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x.flatten(1))))))


def test_a_hand_over_into_parameters_of_other_shapes_is_refused(digits8):
    handoff = OptimizerHandoff()
    sl.fit(sl.models.create("resnet20", in_chans=1), digits8, callbacks=[handoff], **OPTS)
    narrow = sl.models.create("resnet20", in_chans=1, widths=(8, 16, 32))  # as many tensors, other shapes
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ConfigError, match=r"does not fit the shapes.*conv1.weight \(8, 1, 3, 3\) holds "
                                          r"momentum_buffer \(16, 1, 3, 3\)"):
        sl.fit(narrow, digits8, callbacks=[handoff.resume(), NoStep()], **OPTS)
    assert all(torch.equal(before[k], v) for k, v in narrow.state_dict().items())
    # a state handed over by hand (no parameter names recorded) is checked by its shapes as well
    with pytest.raises(ConfigError, match="does not fit the shapes"):
        sl.fit(narrow, digits8, callbacks=[OptimizerHandoff(handoff.saved, "SGD"), NoStep()], **OPTS)


def test_a_hand_over_into_parameters_in_another_order_is_refused(digits8):
    handoff = OptimizerHandoff()
    sl.fit(Two(), digits8, callbacks=[handoff], **OPTS)
    with pytest.raises(ConfigError, match=r"belongs to other parameters.*group 0, parameter 0: a.weight in the "
                                          r"handed-over state, b.weight now"):
        sl.fit(Two(swapped=True), digits8, callbacks=[handoff.resume(), NoStep()], **OPTS)
    # the same layout goes on, its momentum included
    seen = {}

    class Look(Callback):
        def on_fit_start(self, state):
            seen.update({i: s["momentum_buffer"].clone() for i, s in enumerate(state.optimizer.state.values())})

    sl.fit(Two(), digits8, callbacks=[handoff.resume(), Look()], **OPTS)
    saved = [s["momentum_buffer"] for s in handoff.saved["state"].values()]
    assert len(seen) == len(saved) == 6


def test_a_cifar_resnet_refuses_options_it_would_drop():
    from sparselab.models.cifar import CifarResNet, cifar_resnet

    with pytest.raises(ConfigError, match="unknown option.*widht.*takes depth, num_classes, in_chans and widths"):
        cifar_resnet(20, widht=(8, 16, 32))  # a typo built the default widths
    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNet(21)
    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNet(20.5)
    assert cifar_resnet(20, widths=(8, 16, 32)).fc.in_features == 32
