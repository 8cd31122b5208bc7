"""The typed pruner options: each field checks its own rule, the records keep the format saved runs hold, and a
misspelt option fails where a preset or method is defined."""
from __future__ import annotations

import dataclasses

import pytest

import sparselab as sl
from sparselab.configs import ARTConfig, BenefitConfig, allowed, check_field, flag_fields, from_options
from sparselab.errors import ConfigError, UnknownNameError
from sparselab.experiments import p3b as p3b_exp

BAD = [
    (BenefitConfig, "momentum", 0.0), (BenefitConfig, "momentum", 1.5), (BenefitConfig, "class_weight", -0.1),
    (BenefitConfig, "benefit_scale", 0.0), (BenefitConfig, "benefit_scale", float("nan")),
    (BenefitConfig, "probe_every", 0), (BenefitConfig, "probe_every", 2.5), (BenefitConfig, "probe_fraction", 0.0),
    (BenefitConfig, "probe_lr", -1e-3), (BenefitConfig, "probe_weight_decay", -0.1),
    (BenefitConfig, "per_parameter", "dens"), (BenefitConfig, "patch_probe", "conv3"),
    (ARTConfig, "lam_init", 0.0), (ARTConfig, "eta", 0.9), (ARTConfig, "warmup_epochs", -1),
    (ARTConfig, "window", 2), (ARTConfig, "max_art_epochs", 0), (ARTConfig, "train_eval_limit", 0),
    (ARTConfig, "candidate_rule", "best"), (ARTConfig, "threshold_every", 0),
]


@pytest.mark.parametrize("config, name, value", BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in BAD])
def test_every_rule_refuses_what_it_forbids_and_says_what_is_allowed(config, name, value):
    with pytest.raises((ConfigError, UnknownNameError)) as err:
        config(**{name: value})
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    label = field.metadata["label"] or name
    assert label in str(err.value)
    if not isinstance(value, str):
        assert allowed(field) in str(err.value) or "finite" in str(err.value)


def test_the_defaults_and_the_edges_pass():
    for config in (BenefitConfig, ARTConfig):
        made = config()
        for f in dataclasses.fields(config):
            assert check_field(f, getattr(made, f.name)) == getattr(made, f.name)
    assert BenefitConfig(momentum=1.0, class_weight=0.0, probe_fraction=1.0, patch_probe=None).momentum == 1.0
    assert ARTConfig(eta=1.0, warmup_epochs=0, window=1, train_eval_limit=None).window == 1


def test_the_records_are_the_format_saved_runs_hold(tiny_vit):
    model = tiny_vit()
    config = sl.P3B(model, 0.5, momentum=0.4, probe_every=4).config()
    benefit = {f.name for f in dataclasses.fields(BenefitConfig)}
    assert benefit <= set(config) and config["momentum"] == 0.4 and config["probe_every"] == 4
    assert set(config) - benefit == {"prune_ratio", "schedule", "allocation", "criterion", "keep_ratios",
                                     "gate_factors", "blocks_only", "reactivation", "freeze_allocation_after"}
    art = sl.ART(sl.models.create("lenet_300_100", num_classes=10, in_chans=1, image_size=16), 0.9, eta=1.1)
    assert art.config() == {"sparsity": 0.9, "regularizer": "hypersparse", **ARTConfig(eta=1.1).record()}
    assert list(art.config())[2:] == [f.name for f in dataclasses.fields(ARTConfig)]


def test_a_misspelt_option_fails_where_it_is_written():
    with pytest.raises(UnknownNameError, match="probe option of preset 'x'.*'probe_evrey'.*Did you mean 'probe_every'"):
        p3b_exp.p3b_preset("tiny").replace(name="x", probe_options={"probe_evrey": 4})
    with pytest.raises(ConfigError, match="probe_fraction"):
        p3b_exp.p3b_preset("tiny").replace(probe_options={"probe_fraction": 2.0})
    with pytest.raises(UnknownNameError, match="Did you mean 'momentum'"):
        from_options(BenefitConfig, {"momentun": 0.5}, "benefit option")
    with pytest.raises(UnknownNameError, match="benefit option 'probes'"):
        sl.pruners.allocators.BenefitAllocation(probes=2)


def test_the_command_line_offers_the_flagged_fields_only():
    assert [f.name for f in flag_fields(ARTConfig)] == ["lam_init", "eta", "warmup_epochs", "max_art_epochs"]
    assert "patch_probe" in [f.name for f in flag_fields(BenefitConfig)]


def test_p3b_is_described_by_its_config_and_rebuilt_from_it(tiny_vit):
    from sparselab.configs import P3BConfig

    pruner = sl.P3B(tiny_vit(), 0.5, allocation="uniform", criterion="l1", reactivation=False)
    assert pruner.options.allocation == "uniform" and not pruner.options.reactivation
    twin = sl.P3B.from_config(tiny_vit(), 0.5, pruner.options)
    assert twin.config() == pruner.config() and twin.options == pruner.options
    assert pruner.config()["patch_probe"] is None  # no probes run without the benefit allocation
    benefit = sl.P3B(tiny_vit(), 0.5, criterion="l1", momentum=0.4, patch_probe="linear")
    assert benefit.options.benefit.momentum == 0.4
    twin = sl.P3B.from_config(tiny_vit(), 0.5, benefit.options)
    assert twin.config() == benefit.config() and twin.options == benefit.options
    with pytest.raises(ConfigError, match="freeze_allocation_after"):
        P3BConfig(freeze_allocation_after=0)
    with pytest.raises(ConfigError, match="reactivation"):
        P3BConfig(reactivation="no")
