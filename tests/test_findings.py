"""Findings are computed from result tables and Histories, never written by hand."""
from __future__ import annotations

import pandas as pd

from sparselab.experiments.findings import art_findings, p3b_findings
from sparselab.history import History


class FakeRun:
    def __init__(self, history, seed=0):
        self.method, self.history, self.seed = "p3b", history, seed


def _late_history(reactivations):
    h = History()
    names = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    for step, vals in enumerate([[1, .1, 0, 0], [1, .9, .4, 0], [1, 1, 1, .3], [1, 1, 1, 1]], start=1):
        h.log_blocks("benefit_cls", dict(zip(names, vals)), step=step, epoch=0)
    h.log_events(step=2, epoch=0, block="blocks.1.mlp", gate="mlp_hid", elements=list(range(reactivations)), old=0,
                 new=1)
    return h


def test_p3b_findings_pair_by_seed_and_measure_late_convergence():
    t = pd.DataFrame({"method": ["dense"] * 3 + ["p3b"] * 3 + ["uniform"] * 3, "prune_ratio": [0.0] * 3 + [0.9] * 6,
                      "seed": [0, 1, 2] * 3,
                      "acc": [0.95, 0.96, 0.97, 0.93, 0.94, 0.951, 0.90, 0.91, 0.92]})
    lines = p3b_findings(t, [FakeRun(_late_history(n), seed) for seed, n in enumerate((3, 5, 4))], probes=("cls",))
    assert lines[0].startswith("P3B − uniform at 90 %: +3.")
    assert lines[0].endswith("3 seeds — supports")
    assert lines[1].startswith("P3B at 90 % − dense fine-tuning") and "contradicts" in lines[1]
    assert lines[2].startswith("deep blocks converge late (cls probe): Spearman ρ of half-benefit moment vs depth "
                               "+1.00")
    assert lines[3].startswith("P3B reactivates pruned elements: 4.0 reactivations per run") and "supports" in lines[3]


def test_art_findings_compare_each_method_at_each_sparsity():
    t = pd.DataFrame({"method": ["dense", "dense", "hypersparse", "hypersparse", "l1", "l1", "oneshot", "oneshot"],
                      "sparsity": [0, 0, .98, .98, .98, .98, .98, .98], "seed": [0, 1] * 4,
                      "acc": [.9, .9, .86, .87, .86, .87, .5, .6]})
    lines = art_findings(t)
    assert [ln.split(":")[0] for ln in lines] == ["hypersparse − l1 at 98 %", "hypersparse − oneshot at 98 %"]
    assert lines[0].endswith("inconclusive") and "+0.00 points" in lines[0]
    assert art_findings(t[t.method != "hypersparse"]) == []


def test_p3b_findings_count_seeds_not_runs_and_read_each_claim_as_stated():
    """Runs of one seed at two ratios are one sample; 'at most a small loss' is read against a margin; sparselab's
    own variants get higher / lower, not a verdict on the paper; one seed gives no interval, said in words."""
    t = pd.DataFrame({
        "method": ["dense"] * 2 + ["p3b"] * 4 + ["p3b_wanda"] * 4,
        "prune_ratio": [0.0] * 2 + [0.5, 0.5, 0.75, 0.75] * 2, "seed": [0, 1] + [0, 1] * 4,
        "acc": [0.950, 0.960, 0.948, 0.957, 0.930, 0.941, 0.940, 0.950, 0.920, 0.930],
        "late_rho_cls": [float("nan")] * 2 + [0.5, 0.7, 0.6, float("nan")] + [float("nan")] * 4,
        "reactivations": [float("nan")] * 2 + [10, 20, 30, 40] + [float("nan")] * 4})
    lines = p3b_findings(t, probes=("cls",))
    wanda = [ln for ln in lines if "Wanda" in ln]
    assert wanda and all(ln.endswith(("higher", "lower", "no clear difference")) for ln in wanda)
    dense = {ln.split(" − ")[0]: ln for ln in lines if "dense fine-tuning" in ln}
    assert dense["P3B at 50 %"].endswith("supports")  # −0.25 points, inside the 1-point margin
    assert dense["P3B at 75 %"].endswith("contradicts")  # about −1.9 points
    rho = next(ln for ln in lines if ln.startswith("deep blocks converge late"))
    assert "2 seeds" in rho and "1 run without a ρ left out" in rho  # seed 0: mean of 0.5 and 0.6; seed 1: 0.7
    react = next(ln for ln in lines if ln.startswith("P3B reactivates"))
    assert "over 2 seeds" in react and "in 4 of 4 runs (from 10 to 40)" in react
    one_seed = p3b_findings(t[t.seed == 0], probes=())
    assert any("no interval (1 seed)" in ln for ln in one_seed) and not any("nan" in ln for ln in one_seed)


def test_vit_pattern_lines_call_equal_kept_fractions_the_same():
    from sparselab.experiments.findings import pattern_findings

    vit = pd.DataFrame({"attn_kept": [0.0961, 0.30], "mlp_kept": [0.0960, 0.10], "depth_rho": [0.1, 0.2],
                        "dead_neurons": [0.0, 0.1], "unread_channels": [0.0, 0.0]},
                       index=pd.MultiIndex.from_tuples([("gmp", 0.899996), ("hypersparse", 0.98)]))
    same, differs = pattern_findings(vit=vit)
    assert "(about the same)" in same and "at 90%" in same  # 0.899996: rounded, not float noise
    assert "(attention more)" in differs


def test_art_findings_name_runs_at_chance_instead_of_comparing_them():
    """A network that lost its input path predicts one class: its accuracy says nothing about its method. Such runs
    are counted per method, a comparison says how many of its seeds had one, and two methods both at chance in
    every seed get no verdict (their difference would read as a tie)."""
    t = pd.DataFrame({"method": ["hypersparse"] * 3 + ["layerwise"] * 3 + ["oneshot"] * 3,
                      "sparsity": 0.995, "seed": [0, 1, 2] * 3,
                      "acc": [0.10, 0.10, 0.101, 0.10, 0.103, 0.10, 0.10, 0.40, 0.42], "chance_acc": 0.1})
    lines = art_findings(t)
    assert lines[0] == "hypersparse − layerwise at 99.5 %: both methods at chance in every seed (3) — no comparison"
    assert lines[1].startswith("hypersparse − oneshot at 99.5 %: ") and lines[1].endswith(
        "(3 of 3 seeds with a run at chance)")
    counts = {ln.split(":")[0]: ln for ln in lines if "runs at chance" in ln}
    assert set(counts) == {"hypersparse at 99.5 %", "layerwise at 99.5 %", "oneshot at 99.5 %"}
    assert "3 of 3 runs" in counts["hypersparse at 99.5 %"] and "1 of 3 runs" in counts["oneshot at 99.5 %"]
    assert "chance level 10.00 %" in counts["layerwise at 99.5 %"]
    # without a recorded chance level nothing is judged at chance
    plain = art_findings(t.drop(columns="chance_acc"))
    assert not any("chance" in ln for ln in plain) and len(plain) == 2
    # a run half a point above chance or more is a real result
    t.loc[t.method == "layerwise", "acc"] = 0.106
    assert art_findings(t)[0].startswith("hypersparse − layerwise at 99.5 %: -0.")


def _art_run(seed: int, ratios, sparsity: float = 0.98, method: str = "hypersparse"):
    from types import SimpleNamespace

    from sparselab.history import History

    h = History()
    for e, r in enumerate(ratios):
        h.log_metrics({"art_epoch": e, "grad_ratio": r, "lambda": 1e-5 * 1.05 ** e}, step=10 * (e + 1), epoch=e)
    return SimpleNamespace(method=method, sparsity=sparsity, seed=seed, history=h)


def test_the_gradient_gap_finding_reads_each_runs_ratio_over_the_art_epochs():
    import math

    from sparselab.experiments.findings import gradient_gap_findings

    growing = [_art_run(s, r) for s, r in enumerate([[1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 2.0, 6.0], [2.0, 2.5, 3.0, 7.0]])]
    shrinking = [_art_run(s, r, sparsity=0.9) for s, r in enumerate([[5, 4, 3, 1], [5, 3, 4, 1], [6, 4, 1, 2]])]
    others = [_art_run(0, [5.0, 1.0, 0.5], method="l1"), _art_run(3, [2.0]), _art_run(4, [])]
    lines = gradient_gap_findings(growing + shrinking + others)
    assert len(lines) == 2  # one per sparsity of the hypersparse runs; the l1 run is not read
    assert lines[0].startswith("hypersparse at 90 %") and lines[0].endswith("— contradicts") and "3 seeds" in lines[0]
    assert lines[1].startswith("hypersparse at 98 %") and lines[1].endswith("— supports")
    growth = math.exp(sum(math.log(r[-1] / r[0]) for r in ([1, 5], [1, 6], [2, 7])) / 3)
    assert f"×{growth:.2f}," in lines[1]  # the geometric mean of last / first over the seeds
    assert "2 runs with fewer than two ART epochs left out" in lines[1]
    rho = (1.0 + 0.8 + 1.0) / 3  # seed 1 fell once
    assert f"Spearman ρ with the epoch {rho:+.2f}" in lines[1]
    assert gradient_gap_findings([]) == []


def test_a_rho_that_differs_across_seeds_only_by_rounding_has_no_interval():
    """Spearman ρ of 1 computed as 0.9999999999 in one seed used to give a zero-width interval and a verdict,
    where exactly equal values give none."""
    from sparselab.experiments.findings import late_convergence_findings

    exact = late_convergence_findings(pd.DataFrame({"cls": [1.0, 1.0, 1.0]}))[0]
    rounded = late_convergence_findings(pd.DataFrame({"cls": [1.0, 1.0, 1.0 - 1e-12]}))[0]
    assert exact.endswith("— inconclusive") and rounded.endswith("— inconclusive")
    assert "no spread to form an interval" in rounded


def test_pattern_findings_say_when_there_is_no_depth_rho():
    from sparselab.experiments.findings import pattern_findings

    vit = pd.DataFrame([{"method": "gmp", "sparsity": 0.9, "attn_kept": 0.1, "mlp_kept": 0.1, "depth_rho": float("nan"),
                         "dead_neurons": 0.0, "unread_channels": 0.0}]).set_index(["method", "sparsity"])
    kernels = {"depth_rho": float("nan"), "layers": 2.0, "max_spread": 0.1, "mean_spread": 0.05}
    lines = pattern_findings(kernels=kernels, vit=vit)
    assert all("nan" not in line for line in lines), lines
    assert all("no depth ρ" in line for line in lines)
