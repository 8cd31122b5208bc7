"""The claims a run supports or contradicts, computed from its result table and Histories (a notebook's last cell).

Each claim of the papers becomes a number with a 95 % interval over seeds and a verdict
(:func:`sparselab.stats.verdict`): ``supports`` when the whole interval lies on the claimed side, ``contradicts``
when it lies on the other, ``inconclusive`` otherwise (or with a single seed). Nothing here looks at which method
"should" win; it reports what the table holds.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"method": ["hypersparse"] * 2 + ["l1"] * 2, "sparsity": 0.98, "seed": [0, 1] * 2,
    ...                   "acc": [0.86, 0.87, 0.85, 0.855]})
    >>> art_findings(t)[0].split(":")[0]
    'hypersparse − l1 at 98 %'
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from ..stats import finding, mean_ci, paired_differences, verdict

P3B_NAMES = {"p3b": "P3B", "uniform": "uniform", "global_taylor": "global Taylor", "l1": "L1", "fixed": "fixed",
             "p3b_no_reactivation": "P3B without reactivation", "p3b_frozen_benefit": "P3B with a frozen allocation",
             "p3b_fast_probes": "P3B with FAST_PROBES", "p3b_wanda": "P3B with Wanda selection", "dense": "dense"}


def p3b_findings(table: pd.DataFrame, runs: Sequence = (), probes: Sequence[str] = ("cls", "patch")) -> list[str]:
    """Claims of the P3B paper against a :func:`sparselab.experiments.p3b.compare` result:

    - P3B keeps more accuracy than each baseline at each prune ratio (paired by seed);
    - the ablations cost accuracy: P3B − P3B without reactivation / with a frozen allocation (when they ran);
    - P3B at each ratio against dense fine-tuning of the same seed (the paper: little or no loss);
    - deep blocks converge late: the rank correlation of each block's half-benefit moment with depth, per P3B run
      (:func:`sparselab.probes.late_convergence`), is positive;
    - P3B reactivates pruned elements (0 → 1 events per run).

    The last two come from ``runs`` (their Histories) or, without runs, from the ``late_rho_*`` and
    ``reactivations`` columns that a recorded :func:`~sparselab.experiments.p3b.compare` table carries.
    """
    lines: list[str] = []
    if table.empty:
        return lines
    pruned = table[table.method != "dense"]
    methods = list(dict.fromkeys(pruned.method))
    if "p3b" in methods:
        p3b = pruned[pruned.method == "p3b"]
        for other in [m for m in methods if m != "p3b"]:
            pair = pd.concat([p3b, pruned[pruned.method == other]])
            diffs = paired_differences(pair, other, methods=["p3b"])
            for _, r in diffs.iterrows():
                lines.append(finding(f"P3B − {P3B_NAMES.get(other, other)} at {r.prune_ratio * 100:g} %", r["diff"],
                                     r["low"], r["high"], int(r["n"])))
        dense = table[table.method == "dense"].set_index("seed").acc
        for ratio, group in p3b.groupby("prune_ratio"):
            mine = group.set_index("seed").acc
            common = mine.index.intersection(dense.index)
            mean, low, high, n = mean_ci(mine.loc[common] - dense.loc[common])
            lines.append(finding(f"P3B at {ratio * 100:g} % − dense fine-tuning (the paper: about 0, at most a small "
                                 f"loss)", mean, low, high, n, "positive"))
    p3b_runs = [r for r in runs if getattr(r, "method", None) == "p3b"]
    p3b_rows = table[table.method == "p3b"]
    for variant in probes:
        column = f"late_rho_{variant}"
        if p3b_runs:
            from ..probes.convergence import late_convergence

            rhos = [late_convergence(r.history, f"benefit_{variant}")["rho"] for r in p3b_runs
                    if f"benefit_{variant}" in set(r.history.blocks.metric)]
        else:  # a recorded table: compare() wrote each run's ρ
            rhos = list(p3b_rows[column].dropna()) if column in p3b_rows else []
        if rhos:
            lines.append(_rho_line(f"deep blocks converge late ({variant} probe): Spearman ρ of half-benefit "
                                   f"moment vs depth", rhos, "runs"))
    if p3b_runs:
        counts = [int(((r.history.events.old == 0) & (r.history.events.new == 1)).sum()) for r in p3b_runs]
    else:
        counts = list(p3b_rows.reactivations.dropna()) if "reactivations" in p3b_rows else []
    if counts:
        mean, low, high, n = mean_ci(counts)
        lines.append(f"P3B reactivates pruned elements: {mean:.1f} reactivations per run, 95 % CI [{low:.1f}, "
                     f"{high:.1f}], {n} runs — {verdict(low, high)}")
    return lines


def late_convergence_findings(rho: pd.DataFrame, label: str = "") -> list[str]:
    """One line per probe of a :func:`~sparselab.experiments.p3b.late_convergence_by_seed` table: the mean ρ with
    its 95 % interval over seeds and the verdict on "deep blocks converge late" (ρ > 0)."""
    return [_rho_line(f"deep blocks converge late{f' ({label})' if label else ''}, {probe} probe: Spearman ρ",
                      rho[probe].dropna(), "seeds") for probe in rho.columns]


def _rho_line(head: str, rhos, unit: str) -> str:
    """``head`` followed by the mean ρ, its 95 % interval, the count and the verdict on ρ > 0."""
    values = [float(r) for r in rhos]
    finite = [r for r in values if math.isfinite(r)]  # a run whose benefit never varied has no ρ: say so
    mean, low, high, n = mean_ci(finite)
    left_out = f" ({len(values) - n} without a ρ left out)" if len(values) > n else ""
    return f"{head} {mean:+.2f}, 95 % CI [{low:+.2f}, {high:+.2f}], {n} {unit}{left_out} — {verdict(low, high)}"


def art_findings(table: pd.DataFrame, method: str = "hypersparse") -> list[str]:
    """Claims of the HyperSparse paper against a :func:`sparselab.experiments.art.compare` result: ``method``
    keeps more accuracy than each other method at each sparsity (paired by seed: every method of a seed starts
    from the same warm-up). Where an ART method did not always reach its stop criterion (the pruned copy as good
    as the dense model) within ``max_art_epochs``, a last line per case says in how many runs it did: the others
    were fine-tuned from the candidate the preset's candidate rule held when ART stopped."""
    if table.empty:
        return []
    pruned = table[table.method != "dense"]
    if method not in set(pruned.method):
        return []
    lines = []
    for other in [m for m in dict.fromkeys(pruned.method) if m != method]:
        pair = pruned[pruned.method.isin([method, other])]
        for _, r in paired_differences(pair, other, setting="sparsity", methods=[method]).iterrows():
            lines.append(finding(f"{method} − {other} at {r.sparsity * 100:g} %", r["diff"], r["low"], r["high"],
                                 int(r["n"])))
    if "art_converged" in pruned:
        for (sparsity, name), runs in pruned.dropna(subset=["art_converged"]).groupby(["sparsity", "method"]):
            reached = int(runs.art_converged.sum())
            if reached < len(runs):
                lines.append(f"{name} at {sparsity * 100:g} %: ART's stop criterion reached in {reached} of "
                             f"{len(runs)} runs (the others stopped at max_art_epochs with the rule's candidate)")
    return lines


def pattern_findings(exchange: Mapping[str, Mapping[str, float]] | None = None,
                     kernels: Mapping[str, float] | None = None, vit: pd.DataFrame | None = None) -> list[str]:
    """The weight-pattern numbers of notebook 04 as lines, one run each (descriptions, not comparisons):

    - ``exchange``: method → :func:`sparselab.patterns.exchange_numbers` — the paper's exploration → exploitation
      claim for HyperSparse expects much exchange after the first ART epoch and little after the last;
    - ``kernels``: :func:`sparselab.patterns.kernel_depth_summary` of the CNN;
    - ``vit``: rows (method, sparsity) of :func:`sparselab.patterns.vit_pattern_summary` values.
    """
    lines = []
    for method, n in (exchange or {}).items():
        first, last = n["entered after first ART epoch"], n["entered after last ART epoch"]
        settles = "settles (less exchange at the end)" if last < first else "does not settle"
        lines.append(f"{method}: {first:.1%} of the kept set new after the first ART epoch, {last:.1%} after the "
                     f"last ({n['ART epochs']:.0f} epochs) — {settles}; one run")
    if kernels:
        lines.append(f"CNN: kept fraction vs conv depth Spearman ρ {kernels['depth_rho']:+.2f} over "
                     f"{kernels['layers']:.0f} layers; largest spread between kernel positions within a layer "
                     f"{kernels['max_spread']:.3f} (mean {kernels['mean_spread']:.3f})")
    if vit is not None:
        for (method, sparsity), row in vit.iterrows():
            side = "attention" if row.attn_kept > row.mlp_kept else "MLP"
            lines.append(f"ViT, {method} at {sparsity:.0%}: attention keeps {row.attn_kept:.1%}, MLP "
                         f"{row.mlp_kept:.1%} of its weights ({side} more); kept fraction vs depth ρ "
                         f"{row.depth_rho:+.2f}; {row.dead_neurons:.1%} of MLP neurons dead; "
                         f"{row.unread_channels:.1%} of residual channels unread")
    return lines
