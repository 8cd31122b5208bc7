"""Block-benefit probes, block criteria and late convergence: wrong inputs fail clearly, and measurements stay
what they claim (no dropped step in a window, measure() leaves the windows alone, one run per ρ)."""
from __future__ import annotations

import math

import pytest
import torch

import sparselab as sl
from sparselab.errors import ConfigError
from sparselab.history import History
from sparselab.structure import ViTStructure


@pytest.fixture(scope="module")
def digits():
    return sl.data.load("digits", image_size=28, limit=128)


def nano(seed: int = 0):
    torch.manual_seed(seed)
    return sl.models.create("vit_nano_patch4_28", num_classes=10)


@pytest.mark.parametrize("log_every", [0, -2, 2.5, "3", True])
@pytest.mark.parametrize("recorder", ["benefit", "criteria"])
def test_log_every_must_be_a_positive_integer_or_none(recorder, log_every):
    with pytest.raises(ConfigError, match="log_every must be an integer >= 1"):
        if recorder == "benefit":
            sl.probes.BlockBenefit(nano(), num_classes=10, log_every=log_every)
        else:
            sl.probes.BlockCriteria(nano(), log_every=log_every)


@pytest.mark.parametrize("fraction", ["0.5", None, True])
def test_probe_fraction_must_be_a_number(fraction):
    with pytest.raises(ConfigError, match="probe_fraction"):
        sl.probes.BlockBenefit(nano(), num_classes=10, probe_fraction=fraction)


def test_a_structure_of_another_model_is_refused():
    model, other = nano(), nano(1)
    with pytest.raises(ConfigError, match="another model"):
        sl.probes.BlockBenefit(model, num_classes=10, structure=ViTStructure(other))
    with pytest.raises(ConfigError, match="another model"):
        sl.probes.BlockCriteria(model, structure=ViTStructure(other))


@pytest.mark.parametrize("recorder", ["benefit", "criteria"])
def test_fitting_another_model_than_the_one_recorded_fails_clearly(digits, recorder):
    built_on = nano()
    cb = (sl.probes.BlockBenefit(built_on, num_classes=10, patch_probe="linear") if recorder == "benefit"
          else sl.probes.BlockCriteria(built_on))
    with pytest.raises(ConfigError, match="another model than the one being trained"):
        sl.fit(nano(1), digits, epochs=1, batch_size=64, callbacks=[cb], progress=False)


def test_calibrate_and_measure_refuse_bad_arguments(digits):
    probes = sl.probes.BlockBenefit(nano(), num_classes=10, patch_probe="linear")
    with pytest.raises(ConfigError, match="batch_size"):
        probes.measure(digits, batches=2, batch_size=0)
    for kwargs, match in (({"batch_size": 0}, "batch_size"), ({"steps": -1}, "steps"), ({"steps": 2.5}, "steps"),
                          ({"lr": float("nan")}, "lr")):
        with pytest.raises(ConfigError, match=match):
            probes.calibrate(digits, **kwargs)
    assert all(bool(torch.isfinite(p).all()) for p in probes.probes.parameters())


def test_measure_follows_the_model_s_dtype(digits):
    model = nano().double()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    measured = probes.measure(digits, batches=1)
    assert set(measured) == {"cls", "patch"}
    assert all(bool(torch.isfinite(v).all()) for v in measured.values())


def test_measure_leaves_the_previous_window_as_it_was(digits):
    model = nano()
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    x, y = digits.train.get_batch(torch.arange(16))
    with torch.no_grad():
        model(x)
    probes.probe_loss(y)
    probes.reset()  # that batch is now the previous window
    with torch.no_grad():
        model(x[:8])
    probes.probe_loss(y[:8])
    probes.probe_loss(y[:8])
    before = {k: v.clone() for k, v in probes.window_mean(merge_previous=True).items()}
    prev = (probes.prev_sums.clone(), probes.prev_counts.clone())
    probes.measure(digits, batches=1)
    assert torch.equal(probes.prev_sums, prev[0]) and torch.equal(probes.prev_counts, prev[1])
    after = probes.window_mean(merge_previous=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_step_dropped_for_a_non_finite_loss_adds_no_benefit(digits):
    model = nano()
    calls = {"n": 0}

    def poison(module, args):  # the second training batch turns NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return (args[0] * float("nan"),)

    model.patch_embed.register_forward_pre_hook(poison)
    probes = sl.probes.BlockBenefit(model, num_classes=10, patch_probe="linear")
    h = sl.fit(model, digits, epochs=1, batch_size=32, callbacks=[probes], progress=False, nonfinite="skip")
    steps = int(h.metrics[h.metrics.name == "skipped_steps"].value.max())
    assert steps == 1
    b = h.blocks
    assert set(b.metric) == {"benefit_cls", "benefit_patch"}
    assert b.value.map(math.isfinite).all()
    assert probes.prev_counts.tolist() == [3.0, 3.0]  # 4 steps, one of them dropped


def test_late_convergence_of_a_merged_history_needs_a_run():
    def trace(name, rows):
        h = History(meta={"run": name})
        for step, values in rows:
            h.log_blocks("benefit_cls", dict(zip(["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn"], values)),
                         step=step, epoch=0)
        return h

    late = trace("late", ((1, [1.0, 0.1, 0.0]), (2, [1.0, 0.6, 0.1]), (3, [1.0, 0.9, 0.8])))
    early = trace("early", ((1, [0.1, 0.2, 1.0]), (2, [0.1, 0.2, 1.0]), (3, [0.1, 0.2, 1.0])))
    merged = History.concat([late, early])
    with pytest.raises(ConfigError, match="merges 2 runs"):
        sl.probes.late_convergence(merged)
    assert sl.probes.late_convergence(merged, run="late")["rho"] == pytest.approx(1.0)
    assert sl.probes.late_convergence(merged, run="late")["rho"] == sl.probes.late_convergence(late)["rho"]
    with pytest.raises(ConfigError, match="run="):
        sl.probes.normalised_profiles(late, run="early")


@pytest.mark.parametrize("options", [{"probe_every": 16, "probe_fraction": 0.25}, {"probe_every": 4},
                                     {"probe_fraction": 0.5}])
def test_patch_probe_cadence_without_a_patch_probe_is_refused(options):
    """The cadence only concerns the patch probes: with none it used to be accepted and change nothing."""
    with pytest.raises(ConfigError, match="patch_probe=None runs none"):
        sl.probes.BlockBenefit(nano(), num_classes=10, patch_probe=None, **options)
    with pytest.raises(ConfigError, match="patch_probe=None runs none"):
        sl.P3B(nano(), 0.5, num_classes=10, patch_probe=None, **options)
    assert sl.probes.BlockBenefit(nano(), num_classes=10, patch_probe="linear", **options).patch_probe == "linear"
