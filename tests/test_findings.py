"""Findings are computed from result tables and Histories, never written by hand."""
from __future__ import annotations

import pandas as pd

from sparselab.experiments.findings import art_findings, p3b_findings
from sparselab.history import History


class FakeRun:
    def __init__(self, history):
        self.method, self.history = "p3b", history


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
    lines = p3b_findings(t, [FakeRun(_late_history(n)) for n in (3, 5, 4)], probes=("cls",))
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
