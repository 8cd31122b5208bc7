"""The sparsity explorer's HyperSparse checkpoint is the one ART's comparison computes: trained from the warm
start with its optimizer handed on, not from a copy of the dense model with a fresh optimizer."""
import types

import torch

from sparselab.experiments import art as art_exp
from sparselab.experiments import explorers
from sparselab.experiments import p3b as p3b_exp


def test_the_hypersparse_checkpoint_continues_the_warm_starts_optimizer(monkeypatch):
    stub_run = types.SimpleNamespace(history=None, pruner=types.SimpleNamespace(structure=types.SimpleNamespace(
        model=None)))
    monkeypatch.setattr(p3b_exp, "run_p3b", lambda *a, **k: stub_run)  # the P3B side is not what this checks
    inputs = explorers.prepare("tiny", progress=False)
    (name, shown), = inputs.checkpoints.items()

    preset = art_exp.art_preset("tiny")
    data = art_exp.load_data(preset)
    warm = art_exp.warm_start(preset, 0, data, progress=False)
    assert warm.optimizer is not None  # the tiny preset warms up, so there is an optimizer state to hand on
    reference = art_exp.run_art(preset, "hypersparse", 0.9, 0, data=data, warm=warm, progress=False).model.state_dict()
    assert name == "ART / HyperSparse 90%"
    assert shown.keys() == reference.keys()
    assert all(torch.equal(shown[k], reference[k]) for k in reference)
    # the dense model shown beside it is the warm start itself, untouched by the sparsification
    assert all(torch.equal(a, b) for a, b in zip(inputs.model.state_dict().values(), warm.model.state_dict().values()))
