"""The statistics machinery: recorded comparisons that continue where they stopped, the rows the findings read,
the ART schedule ablations, the setting the `cpu` scales run, and the diagnosis of a trailing P3B."""
from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest

from sparselab.errors import ConfigError
from sparselab.experiments import art, diagnosis, findings, p3b, selection
from sparselab.experiments.p3b import p3b_preset
from sparselab.stats import direction, finding, paired_against_all


def tiny(**changes):
    """The tiny preset from a randomly initialised model (no source pretraining in tests)."""
    return p3b_preset("tiny", pretrained=False, recipe=None, **changes)


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "p3b.csv"
    preset = tiny(seeds=(0, 1))
    table, runs = p3b.compare(preset, methods=["p3b", "uniform"], prune_ratios=[0.5], record=path, progress=False)
    return preset, path, table, runs


def test_a_recorded_comparison_writes_every_run_and_runs_nothing_twice(tiny_record, monkeypatch):
    preset, path, table, runs = tiny_record
    on_disk = pd.read_csv(path)
    assert len(on_disk) == len(table) == len(runs) == 6  # dense, p3b, uniform × 2 seeds
    assert set(on_disk.preset) == {"tiny"}
    assert list(table.method) == ["dense", "dense", "p3b", "p3b", "uniform", "uniform"]  # the job order

    def must_not_run(*_, **__):
        raise AssertionError("a recorded run ran again")

    monkeypatch.setattr(p3b, "run_p3b", must_not_run)
    again, new_runs = p3b.compare(preset, methods=["p3b", "uniform"], prune_ratios=[0.5], record=path,
                                  progress=False)
    assert new_runs == []
    pd.testing.assert_frame_equal(again.drop(columns="preset").reset_index(drop=True),
                                  table.drop(columns="preset").reset_index(drop=True), check_dtype=False)
    with pytest.raises(ConfigError, match="records the preset tiny, not 'other'"):
        p3b.compare(preset.replace(name="other"), record=path, progress=False)


def test_an_interrupted_recorded_comparison_keeps_the_finished_runs(tmp_path, monkeypatch):
    preset = tiny(seeds=(0,))
    real = p3b.run_p3b
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(p3b, "run_p3b", crash_on_second)
    path = tmp_path / "rec.csv"
    with pytest.raises(KeyboardInterrupt):
        p3b.compare(preset, methods=["uniform"], prune_ratios=[0.5], record=path, progress=False)
    assert pd.read_csv(path).method.tolist() == ["dense"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(p3b, "run_p3b", real)
    table, runs = p3b.compare(preset, methods=["uniform"], prune_ratios=[0.5], record=path, progress=False)
    assert [r.method for r in runs] == ["uniform"] and table.method.tolist() == ["dense", "uniform"]


def test_rows_carry_what_the_findings_need_and_the_findings_read_them(tiny_record):
    _, _, table, runs = tiny_record
    for run, (_, row) in zip(runs, table.iterrows()):
        if run.pruner is None:
            assert math.isnan(row.get("reactivations", math.nan))
            continue
        events = run.history.events
        assert row.reactivations == int(((events.old == 0) & (events.new == 1)).sum())
        keep = json.loads(row.keep_ratios)
        assert list(keep) == [b.name for b in run.pruner.structure.blocks]
        assert all(0 <= v <= 1 for v in keep.values())
    from_table = findings.p3b_findings(table)
    from_runs = findings.p3b_findings(table, runs)
    assert [line for line in from_table if "reactivates" in line] == \
        [line for line in from_runs if "reactivates" in line]
    assert any("P3B − uniform at 50 %" in line for line in from_table)


def test_p3b_final_keep_ratios_applied_statically_reproduce_its_allocation(tiny_record):
    preset, _, table, runs = tiny_record
    keep = diagnosis._final_keep(table, "p3b", 0.5, 0)
    run = p3b.run_p3b(preset, "fixed", 0.5, 0, progress=False, measure_latency=False,
                      pruner_options={"keep_ratios": keep})
    got = json.loads(p3b.run_row(run)["keep_ratios"])
    assert list(got.values()) == pytest.approx(keep, abs=0.02)  # the same split, up to whole elements
    assert run.result["achieved_ratio"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError, match="need a pruning method"):
        p3b.run_p3b(preset, "dense", 0.0, 0, pruner_options={"keep_ratios": keep})


def test_diagnosis_variants_and_findings():
    preset = p3b_preset("tiny")
    keep = json.dumps({"blocks.0.attn": 1.0, "blocks.0.mlp": 0.5})
    rows = [{"method": m, "prune_ratio": 0.9, "seed": s, "acc": a + 0.01 * s, "keep_ratios": keep}
            for m, a in (("p3b", 0.80), ("global_taylor", 0.83)) for s in range(5)]
    table = pd.DataFrame(rows)
    spec = diagnosis.variants(preset, table, "global_taylor", 0.9, 0)
    assert set(spec) == {"p3b_allocation_static", "global_taylor_allocation_static", "p3b_long_windows",
                         "p3b_2x_schedule", "global_taylor_2x_schedule"}
    method, options, longer = spec["p3b_2x_schedule"]
    assert method == "p3b" and longer.schedule.finalize == 2 * preset.schedule.finalize
    assert spec["p3b_long_windows"][2].schedule.updates_per_epoch == 1
    assert spec["global_taylor_allocation_static"][1]["keep_ratios"] == [1.0, 0.5]
    assert "p3b_l1_selection" in diagnosis.variants(preset, table.replace("global_taylor", "l1"), "l1", 0.9, 0)
    with pytest.raises(ConfigError, match="no keep ratios for uniform"):
        diagnosis.variants(preset, table, "uniform", 0.9, 0)
    diag = pd.DataFrame([{"method": "global_taylor_allocation_static", "prune_ratio": 0.9, "seed": s,
                          "acc": 0.83 + 0.01 * s + 0.001 * (s % 2), "baseline": "global_taylor"}
                         for s in range(5)])
    lines = diagnosis.diagnosis_findings(table, diag)
    assert lines[0].startswith("P3B − global_taylor at 90 %: -3.00 points") and lines[0].endswith("contradicts")
    assert lines[1].startswith("global_taylor_allocation_static − p3b") and lines[1].endswith("higher")
    assert lines[2].startswith("global_taylor_allocation_static − global_taylor")
    assert lines[2].endswith("no clear difference")
    assert diagnosis.diagnosis_findings(table, pd.DataFrame()) == []


def test_art_schedule_ablations_change_only_eta(monkeypatch):
    seen = {}
    real = art.ART

    def spy(model, sparsity, **kwargs):
        seen[kwargs["regularizer"]] = seen.get(kwargs["regularizer"], []) + [kwargs["eta"]]
        return real(model, sparsity, **kwargs)

    monkeypatch.setattr(art, "ART", spy)
    preset = art.art_preset("tiny", max_art_epochs=1, finetune_epochs=1)
    data = art.load_data(preset)
    warm = art.warm_start(preset, 0, data, progress=False)
    for method in ("hypersparse", "hypersparse_fast", "hypersparse_slow"):
        art.run_art(preset, method, 0.9, 0, data=data, warm=warm, progress=False)
    assert seen["hypersparse"] == pytest.approx([preset.eta, preset.eta ** 2, preset.eta ** 0.5])
    assert art.art_preset("cpu-full").methods[-2:] == ("hypersparse_fast", "hypersparse_slow")
    assert "hypersparse_fast" not in art.art_preset("paper-resnet32-cifar10").methods


def test_a_recorded_art_comparison_needs_no_warm_up_for_a_finished_seed(tmp_path, monkeypatch):
    preset = art.art_preset("tiny", methods=("oneshot",), sparsities=(0.9,), seeds=(0,))
    path = tmp_path / "art.csv"
    table, runs = art.compare(preset, record=path, progress=False)
    assert pd.read_csv(path).method.tolist() == ["dense", "oneshot"] and len(runs) == 1
    monkeypatch.setattr(art, "warm_start", lambda *a, **k: (_ for _ in ()).throw(AssertionError("warm-up ran")))
    again, new = art.compare(preset, record=path, progress=False)
    assert new == [] and again.acc.tolist() == pytest.approx(table.acc.tolist())


def test_the_cpu_scales_run_the_setting_the_rule_chose():
    chosen = selection.chosen_setting()
    assert chosen is not None
    for name in ("cpu", "cpu-full"):
        assert selection.same_setting(p3b_preset(name), p3b_preset(chosen)), name
    assert not selection.same_setting(p3b_preset("cpu-digits"), p3b_preset(chosen))
    assert 0.9 in p3b_preset("cpu").prune_ratios and len(p3b_preset("cpu-full").seeds) >= 5
    assert set(p3b.METHODS) - {"dense"} <= set(p3b_preset("cpu-full").methods)


def test_differences_without_a_claim_and_against_every_method():
    assert direction(0.1, 0.2) == "higher" and direction(-0.2, -0.1) == "lower"
    assert direction(-0.1, 0.1) == direction(math.nan, math.nan) == "no clear difference"
    assert finding("a − b", 0.01, 0.005, 0.02, 5, expect=None).endswith("higher")
    t = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3 + ["dense"] * 3, "prune_ratio": 0.5, "seed": [0, 1, 2] * 3,
                      "acc": [0.9, 0.8, 0.7, 0.85, 0.78, 0.69, 0.95, 0.95, 0.95]})
    d = paired_against_all(t, "a")
    assert d.baseline.tolist() == ["b"] and float(d["diff"].iloc[0]) == pytest.approx((0.05 + 0.02 + 0.01) / 3)
    assert paired_against_all(t, "missing").empty
    rho = pd.DataFrame({"cls": [0.5, 0.6, 0.7], "patch": [-0.1, 0.1, math.nan]})
    lines = findings.late_convergence_findings(rho, "x")
    assert lines[0].startswith("deep blocks converge late (x), cls probe: Spearman ρ +0.60")
    assert lines[0].endswith("supports") and "2 seeds" in lines[1]


def test_the_cli_method_choices_are_the_registries(monkeypatch):
    from sparselab import cli

    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices
    assert tuple(cli.P3B_METHODS) == tuple(p3b.METHODS)
    assert tuple(cli.ART_METHODS) == tuple(art.METHOD_REGISTRY)
    helptext = sub["art"].format_help()
    assert "hypersparse_slow" in helptext and "movement" in helptext and "cpu-full" in helptext
    assert "p3b_wanda" in sub["p3b"].format_help()
    # a method registered after the parser was built is accepted and listed without touching the command line
    monkeypatch.setitem(art.METHOD_REGISTRY, "my_method", art.METHOD_REGISTRY["gmp"])
    assert parser.parse_args(["art", "--method", "my_method"]).method == "my_method"
    assert "my_method" in sub["art"].format_help()
    with pytest.raises(ConfigError, match="unknown method 'my_metod'. Did you mean 'my_method'"):
        parser.parse_args(["art", "--method", "my_metod"])


def test_the_cli_flags_are_the_config_fields():
    from sparselab import cli
    from sparselab.configs import ARTConfig, BenefitConfig, flag_fields

    sub = cli.build_parser()._subparsers._group_actions[0].choices
    for command, config in (("p3b", BenefitConfig), ("art", ARTConfig)):
        options = {o for a in sub[command]._actions for o in a.option_strings}
        for f in flag_fields(config):
            assert "--" + f.name.replace("_", "-") in options
    args = sub["p3b"].parse_args(["--momentum", "0.5", "--patch-probe", "none"])
    assert cli._config_flags(args, BenefitConfig) == {"momentum": 0.5, "patch_probe": None}
    with pytest.raises(ConfigError, match="--momentum: must be a finite number in \\(0, 1\\], got '0'"):
        sub["p3b"].parse_args(["--momentum", "0"])
    with pytest.raises(ConfigError, match="--class-weight"):
        sub["p3b"].parse_args(["--class-weight", "1.5"])
    # every ART flag names a field of the ART presets, where the command puts it
    assert {f.name for f in flag_fields(ARTConfig)} <= {f.name for f in dataclasses.fields(art.ARTPreset)}


def test_diagnosis_conclusions_follow_the_pairs():
    def rows(spec, **extra):
        return pd.DataFrame([{"method": m, "prune_ratio": 0.9, "seed": s, "acc": a + 0.01 * s + 0.001 * (s % 3),
                              **extra} for m, a in spec for s in range(5)])

    table = rows((("p3b", 0.80), ("global_taylor", 0.83)))
    allocation = rows((("global_taylor_allocation_static", 0.83), ("p3b_allocation_static", 0.80),
                       ("p3b_long_windows", 0.82), ("p3b_2x_schedule", 0.80), ("global_taylor_2x_schedule", 0.84)),
                      baseline="global_taylor")
    wobble = allocation.method == "global_taylor_allocation_static"  # its own runs, within the seed noise
    allocation.loc[wobble, "acc"] += [0.0005, -0.0005, 0.0004, -0.0004, 0.0]
    lines = diagnosis.diagnosis_conclusions(table, allocation)
    assert lines[0].endswith("P3B trails the baseline.")
    assert "the allocation explains the gap" in lines[1]
    assert "no evidence either way" in lines[2] and "irrelevant" in lines[2]
    assert "noise costs accuracy" in lines[3]
    assert "P3B still trails with twice the schedule" in lines[4]
    # a baseline that already is a static allocation with P3B's selection: its variant reruns it exactly
    same = rows((("global_taylor_allocation_static", 0.83),), baseline="global_taylor")
    assert "cannot separate allocation from selection" in diagnosis.diagnosis_conclusions(table, same)[1]
    selection_matters = rows((("global_taylor_allocation_static", 0.80),), baseline="global_taylor")
    assert "does not explain the gap" in diagnosis.diagnosis_conclusions(table, selection_matters)[1]
    no_gap = rows((("p3b", 0.83), ("global_taylor", 0.83)))
    assert "does not trail" in diagnosis.diagnosis_conclusions(no_gap, selection_matters)[0]
    # a variant as noisy as the gap is small tells neither way: no verdict is drawn from it
    noise = [0.03, -0.04, 0.035, -0.03, 0.005]
    noisy = pd.DataFrame([{"method": "global_taylor_allocation_static", "prune_ratio": 0.9, "seed": s,
                           "acc": 0.815 + 0.01 * s + 0.001 * (s % 3) + noise[s], "baseline": "global_taylor"}
                          for s in range(5)])
    line = diagnosis.diagnosis_conclusions(table, noisy)[1]
    assert "inconclusive" in line and "explain" not in line


def test_a_diagnosis_table_with_two_pairs_reports_each_with_its_own_rows():
    table = pd.DataFrame([{"method": m, "prune_ratio": 0.9, "seed": s, "acc": a + 0.01 * s}
                          for m, a in (("p3b", 0.80), ("l1", 0.82), ("fixed", 0.85)) for s in range(3)])
    diag = pd.DataFrame([{"method": m, "prune_ratio": 0.9, "seed": s, "acc": a + 0.01 * s, "baseline": b}
                         for m, a, b in (("l1_allocation_static", 0.81, "l1"), ("p3b_long_windows", 0.8, "l1"),
                                         ("fixed_allocation_static", 0.86, "fixed")) for s in range(3)])
    assert diagnosis.diagnosed_pairs(diag) == [("l1", 0.9), ("fixed", 0.9)]
    lines = diagnosis.diagnosis_findings(table, diag)
    assert sum(line.startswith("P3B − ") for line in lines) == 2
    assert sum(line.startswith("p3b_long_windows − p3b") for line in lines) == 2  # shared by both pairs
    assert not any(line.startswith("fixed_allocation_static − l1") for line in lines)


def test_pattern_findings_describe_the_numbers():
    import sparselab as sl
    from sparselab.patterns import kernel_depth_summary, kernel_positions, vit_pattern_summary

    model = sl.models.create("vgg19_bn", num_classes=10, in_chans=1, width=0.125)
    summary = kernel_depth_summary(kernel_positions(model, sparsity=0.9))
    assert summary["layers"] == 16 and 0 <= summary["mean_spread"] <= summary["max_spread"] <= 1
    vit = pd.DataFrame([vit_pattern_summary(sl.models.create("vit_nano_patch4_28"), sparsity=0.9)])
    vit = vit.drop(columns="per_block").assign(method="gmp", sparsity=0.9).set_index(["method", "sparsity"])
    exchange = {"hypersparse": {"entered after first ART epoch": 0.3, "entered after last ART epoch": 0.01,
                                "ART epochs": 7.0}}
    lines = findings.pattern_findings(exchange, summary, vit)
    assert lines[0] == ("hypersparse: 30.0% of the kept set new after the first ART epoch, 1.0% after the last "
                        "(7 epochs) — settles (less exchange at the end); one run")
    assert lines[1].startswith("CNN: kept fraction vs conv depth") and lines[2].startswith("ViT, gmp at 90%")


def test_findings_of_a_missing_committed_file_are_empty():
    assert findings.p3b_findings(pd.DataFrame()) == [] and findings.art_findings(pd.DataFrame()) == []
    assert paired_against_all(pd.DataFrame(), "p3b").empty


def test_art_findings_say_where_art_did_not_reach_its_stop_criterion():
    t = pd.DataFrame({"method": ["hypersparse"] * 3 + ["l1"] * 3, "sparsity": 0.995, "seed": [0, 1, 2] * 2,
                      "acc": [0.84, 0.85, 0.83, 0.82, 0.83, 0.82], "art_converged": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]})
    lines = findings.art_findings(t)
    assert lines[-1].startswith("hypersparse at 99.5 %: ART's stop criterion reached in 1 of 3 runs")
    assert not any(line.startswith("l1 at 99.5 %: ART's") for line in lines)


def test_the_diagnosis_summary_names_where_p3b_trails_and_what_was_diagnosed():
    table = pd.DataFrame([{"method": m, "prune_ratio": r, "seed": s, "acc": a + 0.01 * s + 0.001 * (s % 2)}
                          for m, r, a in (("p3b", 0.9, 0.80), ("l1", 0.9, 0.83), ("fixed", 0.9, 0.85),
                                          ("p3b", 0.5, 0.90), ("l1", 0.5, 0.90)) for s in range(4)])
    diag = pd.DataFrame([{"method": "fixed_allocation_static", "prune_ratio": 0.9, "seed": s, "acc": 0.85 + 0.01 * s,
                          "baseline": "fixed"} for s in range(4)])
    lines = diagnosis.diagnosis_summary(table, diag)
    assert lines[0].startswith("P3B trails: fixed at 90 %") and "l1 at 90 %" in lines[0] and "50 %" not in lines[0]
    assert any(line.startswith("fixed_allocation_static − p3b") for line in lines)
    assert lines[-1].endswith("l1 at 90 %")
    even = table.assign(acc=0.8 + 0.01 * table.seed + 0.001 * (table.seed % 2))
    assert "nothing to diagnose" in diagnosis.diagnosis_summary(even, pd.DataFrame())[0]


def test_a_preset_with_a_misspelt_training_option_fails_where_it_is_made():
    from sparselab.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="batchsize.*Did you mean 'batch_size'"):
        p3b_preset("tiny").replace(fit={"lr": 1e-3, "batchsize": 64})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        art.art_preset("tiny").replace(finetune={"lr": -1.0})
    for name in p3b.PRESETS:
        assert p3b.p3b_preset(name).name == name  # every committed preset passes the check


def test_a_pair_shows_only_its_own_and_p3bs_variants():
    rows = [{"method": m, "prune_ratio": 0.75, "seed": s, "acc": 0.8, "baseline": b}
            for m, b in (("p3b_2x_schedule", "p3b_wanda"), ("p3b_wanda_2x_schedule", "p3b_wanda"),
                         ("p3b_wanda_allocation_static", "p3b_wanda"), ("p3b_no_reactivation_2x_schedule",
                                                                          "p3b_no_reactivation"))
            for s in range(3)]
    diag = pd.DataFrame(rows)
    assert set(diagnosis._pair_rows(diag, "p3b_no_reactivation", 0.75).method) == {
        "p3b_2x_schedule", "p3b_no_reactivation_2x_schedule"}
    assert set(diagnosis._pair_rows(diag, "p3b_wanda", 0.75).method) == {
        "p3b_2x_schedule", "p3b_wanda_2x_schedule", "p3b_wanda_allocation_static"}
