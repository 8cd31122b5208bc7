"""Experiment drivers and the numbers they report: inputs that used to give a wrong number or a raw traceback."""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from sparselab import stats
from sparselab.cost import compact_stats, latency_against, latency_ms
from sparselab.errors import ConfigError
from sparselab.experiments import art, findings, p3b, selection
from sparselab.experiments.p3b import p3b_preset
from sparselab.experiments.presets import load_data
from sparselab.history import History


# ------------------------------------------------------------------------------------------------ presets
def test_load_data_takes_an_image_size_override_and_refuses_one_in_data_options():
    preset = p3b_preset("tiny")
    assert load_data(preset, image_size=14, limit=64).image_size == 14  # was: TypeError, image_size given twice
    assert load_data(preset, limit=64).image_size == preset.image_size
    with pytest.raises(ConfigError, match="image_size field"):
        load_data(preset.replace(data_options={"limit": 64, "image_size": 14}))
    with pytest.raises(ConfigError, match="every split"):
        load_data(preset, split="train")


def test_benefit_trace_attaches_the_probes_the_preset_describes(monkeypatch):
    import sparselab.probes

    seen = {}

    class Stop(Exception):
        pass

    class Recording:
        def __init__(self, model, **options):
            seen.update(options)
            raise Stop

    monkeypatch.setattr(sparselab.probes, "BlockBenefit", Recording)
    preset = p3b_preset("tiny", probe_options={"probe_every": 4, "probe_fraction": 0.5, "probe_lr": 2e-3,
                                               "probe_weight_decay": 0.05})
    data = SimpleData()
    with pytest.raises(Stop):
        p3b.benefit_trace(preset, data=data, model=nn.Linear(2, 2))
    assert (seen["probe_every"], seen["probe_fraction"], seen["lr"], seen["weight_decay"]) == (4, 0.5, 2e-3, 0.05)
    seen.clear()
    with pytest.raises(Stop):  # no probe options: BlockBenefit's own defaults, as before
        p3b.benefit_trace(p3b_preset("tiny"), data=data, model=nn.Linear(2, 2))
    assert (seen["probe_every"], seen["probe_fraction"], seen["lr"], seen["weight_decay"]) == (1, 1.0, None, 0.0)


class SimpleData:
    num_classes = 10
    train = range(320)


# ------------------------------------------------------------------------------------------------ latency / cost
def test_latency_refuses_no_repeats_and_times_a_model_without_parameters():
    lin = nn.Linear(8, 8)
    for bad in (dict(repeats=0), dict(batch_size=0), dict(warmup=-1)):
        with pytest.raises(ConfigError):
            latency_ms(lin, (8,), **bad)  # repeats=0 was a raw StatisticsError
        with pytest.raises(ConfigError):
            latency_against(lin, lin, (8,), **bad)
    assert latency_ms(nn.ReLU(), (8,), repeats=2) > 0  # was: StopIteration (no parameters to find the device)
    with pytest.raises(ConfigError, match="one device"):
        latency_against(nn.Linear(8, 8, device="meta"), lin, (8,), repeats=2)


def _hook_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass counted from the shapes each layer actually sees."""
    from timm.layers import Attention

    total = [0]

    def linear(m, inputs, _):
        total[0] += inputs[0].numel() // m.in_features * m.in_features * m.out_features

    def conv(m, _, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += out.numel() // m.out_channels * m.out_channels * (m.in_channels // m.groups) * k

    def attention(m, inputs, _):
        total[0] += 2 * inputs[0].shape[1] ** 2 * m.num_heads * m.head_dim

    hooks = [m.register_forward_hook(linear if isinstance(m, nn.Linear) else conv if isinstance(m, nn.Conv2d)
                                     else attention)
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, Attention))]
    with torch.no_grad():
        model.eval()(torch.randn(1, *shape))
    for h in hooks:
        h.remove()
    return total[0]


def test_compact_stats_count_what_a_compact_model_computes():
    from sparselab.structure import ViTStructure, compact_vit

    torch.manual_seed(0)
    model = timm.create_model("vit_nano_patch4_28", num_classes=10).eval()
    masks = ViTStructure(model).full_masks()
    for layer in masks.values():
        for gate, m in layer.items():
            layer[gate] = torch.rand(m.numel()) < 0.6
    masks[2]["attn_qkv"][:] = False  # a whole branch pruned
    small = compact_vit(model, masks)
    s = compact_stats(small)
    assert s["flops"] == _hook_macs(small, (1, 28, 28))
    assert s["params"] == sum(p.numel() for p in small.parameters())


# ------------------------------------------------------------------------------------------------ summaries
def _p3b_table(acc):
    return pd.DataFrame({"method": ["p3b"] * 3 + ["dense"] * 3, "prune_ratio": [0.5] * 3 + [0.0] * 3,
                         "seed": [0, 1, 2] * 2, "acc": acc, "acc_pruned": 0.5, "achieved_ratio": 0.5,
                         "params": 1e6, "flops": 2e6})


def test_summaries_count_the_runs_their_mean_is_over_and_say_which_were_left_out():
    table = _p3b_table([0.9, np.nan, 0.8, 0.95, 0.94, 0.93])
    with pytest.warns(RuntimeWarning, match="1 of 6 runs have no finite acc.*seed=1"):
        out = p3b.summarize(table)
    assert out.loc[(0.5, "p3b"), "seeds"] == 2  # the mean 85.0 is over two runs, not three
    assert out.loc[(0.5, "p3b"), "acc %"] == pytest.approx(85.0)
    assert out.loc[(0.0, "dense"), "seeds"] == 3

    t = table.rename(columns={"prune_ratio": "sparsity"}).assign(nonzero_sparsity=0.5, acc_best=table.acc)
    with pytest.warns(RuntimeWarning, match="no finite acc"):
        assert art.summarize(t).loc[(0.5, "p3b"), "seeds"] == 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every run measured: no warning, the seed count of before
        assert p3b.summarize(_p3b_table([0.9, 0.85, 0.8, 0.95, 0.94, 0.93])).loc[(0.5, "p3b"), "seeds"] == 3


def test_p3b_against_dense_refuses_a_dense_seed_recorded_twice():
    table = pd.DataFrame({"method": ["p3b"] * 3 + ["dense"] * 4, "prune_ratio": [0.5] * 3 + [0.0] * 4,
                          "seed": [0, 1, 2, 0, 1, 2, 0], "acc": [0.9, 0.85, 0.8, 0.95, 0.94, 0.93, 0.5]})
    with pytest.raises(ConfigError, match="more than once"):  # was: "4 seeds" out of three
        findings.p3b_findings(table)
    line = [x for x in findings.p3b_findings(table.iloc[:6]) if "dense" in x][0]
    diffs = np.array([0.9 - 0.95, 0.85 - 0.94, 0.8 - 0.93])
    from scipy import stats as st

    low, high = st.t.interval(0.95, 2, loc=diffs.mean(), scale=st.sem(diffs))
    assert f"{diffs.mean() * 100:+.2f} points, 95 % CI [{low * 100:+.2f}, {high * 100:+.2f}], 3 seeds" in line


def test_setting_selection_refuses_a_repeated_seed_before_running_anything(monkeypatch):
    def never(*_, **__):
        raise AssertionError("nothing may run")

    monkeypatch.setattr(selection, "run_p3b", never)
    monkeypatch.setattr(selection, "load_data", never)
    with pytest.raises(ConfigError, match=r"seeds \[0\]"):  # was: seed 0 counted twice toward the 5 seeds
        selection.measure_candidate(p3b_preset("tiny"), seeds=(0, 0, 1, 2, 3))
    with pytest.raises(ConfigError, match="more than once"):
        selection.select_setting([p3b_preset("tiny")], seeds=[1, 2, 3, 4, 1])


# ------------------------------------------------------------------------------------------------ stats
def test_paired_differences_refuse_unknown_methods_and_rows_without_a_setting():
    t = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "prune_ratio": 0.5, "seed": [0, 1, 2] * 2,
                      "acc": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    with pytest.raises(ConfigError, match=r"methods \['zz'\]"):  # was: one NaN row, read as inconclusive
        stats.paired_differences(t, "b", methods=["zz"])
    with pytest.raises(ConfigError, match="no column"):  # was: AttributeError
        stats.paired_against_all(t.drop(columns="method"), "a")
    lost = t.assign(prune_ratio=[0.5, 0.5, np.nan, 0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="no 'prune_ratio'"):  # was: the seed-2 row left out without a word
        stats.paired_differences(lost, "b")
    with pytest.raises(ConfigError, match="no 'prune_ratio'"):
        stats.summarize_ci(lost)
    row = stats.paired_differences(t, "b").iloc[0]
    assert (row["diff"], row["n"]) == (pytest.approx(0.3), 3) and math.isfinite(row["low"])


# ------------------------------------------------------------------------------------------------ History
def test_merging_merged_histories_refuses_a_run_name_both_hold(tmp_path):
    def run(name: str, value: float) -> History:
        h = History(meta={"run": name})
        h.log_metric("acc", value, step=0, epoch=0, split="test")
        return h

    first = History.concat([run("p3b-50-s0", 0.9), run("uniform-50-s0", 0.8)])
    second = History.concat([run("p3b-50-s0", 0.1)])
    with pytest.raises(ConfigError, match="'p3b-50-s0'"):  # was: two runs' rows under one name
        History.concat([first, second], runs=["tiny", "cpu"])
    with pytest.raises(ConfigError, match="'uniform-50-s0'"):
        History.concat([first, run("x", 0.5)], runs=["tiny", "uniform-50-s0"])
    merged = History.concat([first, run("l1-50-s0", 0.7)], runs=["tiny", "l1-50-s0"])
    assert merged.metrics.run.tolist() == ["p3b-50-s0", "uniform-50-s0", "l1-50-s0"]
    assert History.load(merged.save(tmp_path / "h.jsonl.gz")) == merged


@pytest.mark.parametrize("make, changes, message", [
    ("p3b", {"seeds": (0, 1, 0)}, "seeds of preset 'tiny' repeat 0"),
    ("p3b", {"prune_ratios": 0.5}, r"prune_ratios of preset 'tiny' must be a tuple, e.g. prune_ratios=\(0.5,\)"),
    ("p3b", {"methods": ()}, "methods of preset 'tiny' is empty"),
    ("p3b", {"seeds": "012"}, "seeds of preset 'tiny' must be a tuple"),
    ("p3b", {"seeds": (0, 1.5)}, "each seed of preset 'tiny' must be an integer"),
    ("p3b", {"model_options": {"num_classes": 3}}, "model_options of preset 'tiny' set num_classes"),
    ("art", {"sparsities": (0.9, 0.9)}, "sparsities of preset 'tiny' repeat 0.9"),
    ("art", {"methods": ("hypersparse", "hyper_sparse")}, "unknown method 'hyper_sparse'"),
    ("art", {"model_options": {"in_chans": 3}}, "model_options of preset 'tiny' set in_chans"),
])
def test_presets_refuse_run_lists_that_would_repeat_runs_or_fail_later(make, changes, message):
    """A repeated seed or ratio would make the same run twice (and the paired statistics refuse the table only
    afterwards); a bare number or string is not a list of runs; model_options must not set what the runs set."""
    from sparselab.errors import SparselabError
    from sparselab.experiments import art
    from sparselab.experiments.p3b import p3b_preset

    preset = p3b_preset("tiny") if make == "p3b" else art.art_preset("tiny")
    with pytest.raises(SparselabError, match=message):
        preset.replace(**changes)
    assert preset.replace(seeds=[0, 1]).seeds == [0, 1]  # a list is a list of runs too


def test_a_comparison_refuses_repeated_runs_before_running_any(monkeypatch):
    from sparselab.errors import ConfigError
    from sparselab.experiments import art, p3b

    def must_not_run(*_, **__):
        raise AssertionError("a run started")

    monkeypatch.setattr(p3b, "run_p3b", must_not_run)
    monkeypatch.setattr(art, "warm_start", must_not_run)
    with pytest.raises(ConfigError, match="seeds of preset 'tiny' repeat 1"):
        p3b.compare(p3b.p3b_preset("tiny"), seeds=[1, 1], progress=False)
    with pytest.raises(ConfigError, match="methods of preset 'tiny' repeat l1"):
        art.compare(art.art_preset("tiny"), methods=["l1", "l1"], progress=False)


@pytest.mark.parametrize("options, message", [
    (dict(seeds=0), "seeds of preset 'tiny' must be a tuple"),
    (dict(seeds=[]), "seeds of preset 'tiny' is empty"),
    (dict(methods="uniform"), "methods of preset 'tiny' must be a tuple"),
    (dict(methods=[]), "methods of preset 'tiny' is empty"),
    (dict(prune_ratios=0.5), "prune_ratios of preset 'tiny' must be a tuple"),
    (dict(prune_ratios=[1.5]), r"each of prune_ratios must lie in \[0, 1\), got 1.5"),
])
def test_a_p3b_comparison_refuses_run_lists_it_would_replace_or_misread(monkeypatch, options, message):
    """Only None means the preset's lists: 0 or [] used to run the preset's seeds, a string was split into letters."""
    def must_not_run(*_, **__):
        raise AssertionError("work started")

    monkeypatch.setattr(p3b, "run_p3b", must_not_run)
    monkeypatch.setattr(p3b, "load_data", must_not_run)
    with pytest.raises(ConfigError, match=message):
        p3b.compare(p3b_preset("tiny"), progress=False, **options)


def test_preset_overviews_show_the_settings_a_run_uses():
    p = p3b_preset("tiny").replace(seeds=(3, 4), prune_ratios=(0.9,))
    overview = p.overview()["setting"]
    assert overview["seeds"] == (3, 4) and overview["prune ratios"] == (0.9,) and overview["model"] == p.model
    assert overview["schedule (warm-up / sparsify / finalize epochs)"] == (p.schedule.warmup, p.schedule.sparsify,
                                                                          p.schedule.finalize)
    a = art.art_preset("tiny").replace(sparsities=(0.5,), eta=1.2)
    overview = a.overview()["setting"]
    assert overview["sparsities"] == (0.5,) and overview["λ_init, η"] == (a.lam_init, 1.2)
    assert overview["methods"] == a.methods


def test_the_best_fine_tuning_accuracy_is_reported_only_where_the_test_split_was_evaluated_every_epoch():
    """With a validation split fit evaluates the test split once, at the end: the "best" used to repeat acc."""
    preset = art.art_preset("tiny").replace(methods=("oneshot",), sparsities=(0.5,), finetune_epochs=2)
    data = art.load_data(preset)
    assert data.val is not None
    with_val = art.run_art(preset, "oneshot", 0.5, 0, data=data, progress=False)
    assert math.isnan(with_val.result["acc_best"]) and math.isfinite(with_val.result["acc"])
    no_val = dataclasses.replace(data, val=None)
    run = art.run_art(preset, "oneshot", 0.5, 0, data=no_val, progress=False)
    tests = run.finetune_history.metrics.query("split == 'test' and name == 'acc'").value
    assert len(tests) >= 2 and run.result["acc_best"] == tests.max() >= run.result["acc"]
    table = pd.DataFrame([{"method": "oneshot", "sparsity": 0.5, "seed": 0, **with_val.result}])
    assert "best acc %" not in art.summarize(table).columns
    table = pd.DataFrame([{"method": "oneshot", "sparsity": 0.5, "seed": 0, **run.result}])
    assert art.summarize(table)["best acc %"].iloc[0] == round(run.result["acc_best"] * 100, 3)
