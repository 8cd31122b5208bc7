"""P3B and its compact models: a compact model runs under autocast, a refused P3B option leaves the model as it
was given, and every allocation refuses to be fitted on another model than the one it pruned."""
from __future__ import annotations

import pytest
import torch
from conftest import nano_vit as nano

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.structure import compact_vit


def test_a_compact_model_that_adds_into_some_residual_channels_runs_under_autocast():
    model = nano().eval()
    masks = {0: {"mlp_out": torch.arange(model.embed_dim) < model.embed_dim - 8}}
    compact = compact_vit(model, masks).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        full = compact(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = compact(x)  # was: index_add of a bfloat16 branch into the float32 stream, a RuntimeError
    assert low.shape == full.shape and torch.isfinite(low).all()
    assert torch.allclose(low.float(), full, atol=0.1, rtol=0.1)  # bfloat16 keeps about 3 digits


@pytest.mark.parametrize("bad", [dict(allocation="fixed", keep_ratios=[1.0, 0.5]), dict(num_classes=1),
                                 dict(patch_probe=None, probe_every=4)])
def test_a_refused_p3b_option_leaves_the_model_as_it_was_given(bad):
    model = nano()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ConfigError):
        sl.P3B(model, 0.5, **bad)
    assert not any("forward" in vars(m) for m in model.modules())  # was: every Linear still gated
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert sl.P3B(model, 0.5).achieved_prune_ratio() == 0  # the corrected retry (was: "gates attached twice?")


@pytest.mark.parametrize("allocation", ["uniform", "global", "benefit"])
def test_p3b_refuses_to_be_fitted_on_another_model_whatever_its_allocation(allocation):
    data = sl.data.load("digits", image_size=28, limit=64)
    pruner = sl.P3B(nano(), 0.5, allocation=allocation)
    with pytest.raises(ConfigError, match="another model"):  # was (uniform, global): masks on the untrained model
        sl.fit(nano(seed=1), data, pruner=pruner, epochs=1, batch_size=32, progress=False)


def test_a_compact_model_is_not_cut_from_soft_gates(tmp_path):
    model = nano()
    pruner = sl.P3B(model, 0.5, allocation="uniform")
    key = next(iter(pruner.gates.values))
    with torch.no_grad():
        pruner.gates.values[key][0] = 0.7  # soft, as during sparsification before the masks are made hard
    with pytest.raises(ConfigError, match="1 gate values lie strictly between 0 and 1"):
        pruner.compact()  # was: cut at 0.5, another function than the gated model's
    with pytest.raises(ConfigError, match="save_compact"):
        pruner.save_compact(tmp_path / "compact")
    with torch.no_grad():
        pruner.gates.values[key][0] = 0.0
    pruner.gates.enabled = True  # the gated model computes with the hard gate
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(pruner.compact().eval()(x), model.eval()(x), atol=1e-5)
