"""The command line and the experiment tables it prints: options that would change nothing are refused, result
files and printed recipes state what the run does, and the selection and diagnosis tables count each run once."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import sparselab as sl
from sparselab.cli import main
from sparselab.errors import ConfigError
from sparselab.experiments import diagnosis, recipes, report, selection
from sparselab.experiments.p3b import p3b_preset
from sparselab.probes import FAST_PROBES

TRAIN_8PX = ["train", "--model", "lenet_300_100", "--data", "digits", "--image-size", "8", "--epochs", "1"]


def _never(*_, **__):
    raise AssertionError("nothing may run")


# ------------------------------------------------------------------------------------------------ p3b command
@pytest.mark.parametrize("flags", [["--probe-every", "4"], ["--probe-fraction", "0.5"]])
def test_patch_probe_cadence_without_a_patch_probe_is_refused(flags, capsys):
    assert main(["p3b", "--preset", "tiny", "--patch-probe", "none", *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} set how often" in err and "no patch probe (--patch-probe none)" in err
    # the class-token probes' options still apply without a patch probe
    assert main(["p3b", "--preset", "tiny", "--patch-probe", "none", "--probe-lr", "1e-3", "--dry-run"]) == 0


def test_result_json_records_the_probe_options_the_method_ran_with(tmp_path, monkeypatch):
    import sparselab.experiments as experiments

    def fake_run(preset, method, ratio, seed, **_):
        return SimpleNamespace(history=sl.History(), finetune_history=None, pruner=None,
                               result={"acc": 0.5, "acc_pruned": 0.5, "achieved_ratio": ratio})

    monkeypatch.setattr(experiments, "run_p3b", fake_run)
    out = tmp_path / "run"
    assert main(["p3b", "--preset", "tiny", "--method", "p3b_fast_probes", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    # was {}: the defaults, which the run did not use
    assert result["patch_probe"] is FAST_PROBES["patch_probe"] is None
    assert result["probe_options"] == {k: v for k, v in FAST_PROBES.items() if k != "patch_probe"} == {}


def test_fast_probes_flag_runs_the_class_token_probes_alone(tmp_path, monkeypatch, capsys):
    """--fast-probes is FAST_PROBES: the run gets no patch probe, and result.json says so."""
    import sparselab.experiments as experiments

    seen = {}

    def fake_run(preset, method, ratio, seed, **_):
        seen.update(patch_probe=preset.patch_probe, probe_options=dict(preset.probe_options))
        return SimpleNamespace(history=sl.History(), finetune_history=None, pruner=None,
                               result={"acc": 0.5, "acc_pruned": 0.5, "achieved_ratio": ratio})

    monkeypatch.setattr(experiments, "run_p3b", fake_run)
    out = tmp_path / "run"
    assert main(["p3b", "--preset", "tiny", "--fast-probes", "--probe-lr", "1e-3", "--out", str(out)]) == 0
    assert seen == {"patch_probe": None, "probe_options": {"probe_lr": 1e-3}}
    result = json.loads((out / "result.json").read_text())
    assert result["patch_probe"] is None and result["probe_options"] == {"probe_lr": 1e-3}
    capsys.readouterr()
    assert main(["p3b", "--preset", "tiny", "--fast-probes", "--dry-run"]) == 0
    assert "patch probe                       none (class-token probes only)" in capsys.readouterr().out


def test_p3b_dry_run_shows_probes_only_where_the_method_runs_them(capsys):
    assert main(["p3b", "--preset", "tiny", "--method", "uniform", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "patch probe                       none (no method of this run trains" in text
    assert "compact fine-tune                 1 epochs = 4 steps, constant lr 0.0005, effective batch 64" in text
    assert main(["p3b", "--preset", "tiny", "--method", "p3b_fast_probes", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "patch probe                       none (class-token probes only)" in text


# ------------------------------------------------------------------------------------------------ art dry run
def _art_dry_run(capsys, method: str) -> str:
    assert main(["art", "--preset", "tiny", "--method", method, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_art_dry_run_shows_the_schedule_the_method_runs(capsys):
    gmp = _art_dry_run(capsys, "gmp")
    assert "gradual pruning                   2 epochs = 40 steps" in gmp
    assert "λ_init" not in gmp and "ART epochs" not in gmp and "candidate rule" not in gmp
    oneshot = _art_dry_run(capsys, "oneshot")
    assert "gradual pruning" not in oneshot and "ART epochs" not in oneshot
    art = _art_dry_run(capsys, "hypersparse")
    assert "ART epochs at most                4 = 80 steps" in art and "gradual pruning" not in art
    assert "fine-tune                         1 epochs, constant lr 0.001\n" in art  # no lr drops it does not make


# ------------------------------------------------------------------------------------------------ train command
def test_train_history_records_the_command_given_to_main(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN_8PX, "--out", str(out)]) == 0
    command = sl.History.load(out / "history.jsonl.gz").meta["command"]
    assert command == "sparselab " + " ".join([*TRAIN_8PX, "--out", str(out)])


# ------------------------------------------------------------------------------------------------ recipe table
def _row(name: str, parameter: str) -> recipes.RecipeRow:
    return next(r for r in recipes.recipe_rows(name) if r.parameter == parameter)


def test_the_table_of_a_small_preset_does_not_claim_the_reference_data_or_augmentation():
    train, test = _row("p3b/tiny", "training images"), _row("p3b/tiny", "test set")
    assert (train.value, test.value) == ("320 digits training images", "the digits test split")  # was: train/ folder
    assert not train.matches and not test.matches
    assert _row("p3b/tiny", "RandAugment").value == "none"  # 28-px images get no RandAugment
    assert not _row("p3b/tiny", "random erasing (probability, mode)").matches
    assert _row("paper-deit-s-ifood", "RandAugment").matches
    assert _row("cpu-vit", "training images").value == "the digits training split"  # was: 50 000 minus a split
    assert _row("cpu-vit", "test set").value == "the digits test split"


# ------------------------------------------------------------------------------------------------ selection
def test_setting_selection_refuses_a_bad_ratio_seed_or_no_candidate_before_running(monkeypatch):
    monkeypatch.setattr(selection, "run_p3b", _never)
    monkeypatch.setattr(selection, "load_data", _never)
    tiny = p3b_preset("tiny")
    with pytest.raises(ConfigError, match=r"ratio must lie in \(0, 1\), got 1.5"):  # was: after the dense runs
        selection.measure_candidate(tiny, ratio=1.5)
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*32\), got -1"):
        selection.select_setting([tiny], seeds=(0, 1, 2, 3, -1))
    with pytest.raises(ConfigError, match="seeds is empty"):
        selection.measure_candidate(tiny, seeds=())
    with pytest.raises(ConfigError, match="candidates is empty"):  # was: pandas' "No objects to concatenate"
        selection.select_setting([])


def test_a_selection_table_read_as_text_is_not_taken_to_qualify():
    text = pd.DataFrame({"candidate": ["a", "b"], "data": "digits", "qualifies": ["False", "True"],
                         **{k: 0.1 for k in ("dense_mean", "dense_std", "uniform_mean", "loss", "loss_low",
                                             "loss_high")}})
    assert selection.chosen_setting(text) == "b"  # was 'a': the string "False" read as true
    assert selection.chosen_setting(text.assign(qualifies=np.array([False, True]))) == "b"
    assert [line.endswith("| no |") for line in report._selection(text).splitlines()[2:]] == [True, False]
    with pytest.raises(ConfigError, match="qualifies must be True or False, got nan"):
        selection.chosen_setting(text.assign(qualifies=[np.nan, True]))  # an empty cell is not a yes


# ------------------------------------------------------------------------------------------------ diagnosis
def _compared(ratio: float, seeds=range(5)) -> pd.DataFrame:
    keep = json.dumps({"attn_1": 0.5, "mlp_1": 0.5})
    rows = [{"method": m, "prune_ratio": ratio, "seed": s, "acc": acc + 0.001 * s, "keep_ratios": keep}
            for m, acc in (("p3b", 0.80), ("uniform", 0.90)) for s in seeds]
    return pd.DataFrame(rows)


def test_diagnose_refuses_a_repeated_seed_before_running(monkeypatch):
    monkeypatch.setattr(diagnosis, "run_p3b", _never)
    monkeypatch.setattr(diagnosis, "load_data", _never)
    with pytest.raises(ConfigError, match=r"seeds \[0\] are given more than once"):  # was: every variant run twice
        diagnosis.diagnose(p3b_preset("tiny"), _compared(0.5), "uniform", 0.5, seeds=[0, 0, 1], progress=False)


def test_the_summary_counts_a_diagnosed_pair_at_a_ratio_that_does_not_round_to_itself():
    ratio = 0.1 * 7  # 0.7000000000000001, as arithmetic on ratios gives
    table = _compared(ratio)
    diag = pd.DataFrame([{"method": v, "prune_ratio": ratio, "seed": s, "acc": 0.85, "baseline": "uniform"}
                         for v in ("p3b_allocation_static", "uniform_allocation_static") for s in range(5)])
    lines = diagnosis.diagnosis_summary(table, diag)
    assert lines[0].startswith("P3B trails: uniform at 70 %")
    assert not [line for line in lines if line.startswith("not diagnosed")]  # was: "not diagnosed: uniform at 70 %"
