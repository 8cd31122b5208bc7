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

import numpy as np
import pandas as pd

from ..stats import finding, mean_ci, paired_differences, paired_mean_ci, refuse_repeated_seeds, verdict
from .art import at_chance

#: sparselab's variants of P3B (a cheaper estimator, another selection rule): compared, but no claim of the paper
VARIANTS = ("p3b_fast_probes", "p3b_wanda")
#: "at most a small loss" against dense fine-tuning, read as a loss under this (accuracy, 1 point)
DENSE_MARGIN = 0.01

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
            # sparselab's own variants test no claim of the paper: their lines say higher / lower, not a verdict
            expect = None if other in VARIANTS else "positive"
            for _, r in diffs.iterrows():
                lines.append(finding(f"P3B − {P3B_NAMES.get(other, other)} at {r.prune_ratio * 100:g} %", r["diff"],
                                     r["low"], r["high"], int(r["n"]), expect))
        dense = table[table.method == "dense"].set_index("seed").acc
        for ratio, group in p3b.groupby("prune_ratio"):
            # paired by seed; a seed recorded twice on either side is refused rather than counted twice
            mean, low, high, n = paired_mean_ci(group.set_index("seed").acc, dense)
            lines.append(finding(f"P3B at {ratio * 100:g} % − dense fine-tuning (the paper: about 0, at most a small "
                                 f"loss; read here as a loss under {DENSE_MARGIN * 100:g} point)", mean, low, high, n,
                                 margin=DENSE_MARGIN))
    p3b_runs = [r for r in runs if getattr(r, "method", None) == "p3b"]
    p3b_rows = table[table.method == "p3b"]
    for variant in probes:
        column = f"late_rho_{variant}"
        if p3b_runs:
            from ..probes.convergence import late_convergence

            per_run = [(r.seed, late_convergence(r.history, f"benefit_{variant}")["rho"]) for r in p3b_runs
                       if f"benefit_{variant}" in set(r.history.blocks.metric)]
        else:  # a recorded table: compare() wrote each run's ρ
            per_run = list(zip(p3b_rows.seed, p3b_rows[column])) if column in p3b_rows else []
        if per_run:
            lines.append(_rho_line(f"deep blocks converge late ({variant} probe): Spearman ρ of half-benefit "
                                   f"moment vs depth", *_per_seed(per_run)))
    if p3b_runs:
        per_run = [(r.seed, float(((r.history.events.old == 0) & (r.history.events.new == 1)).sum()))
                   for r in p3b_runs]
    else:
        per_run = list(zip(p3b_rows.seed, p3b_rows.reactivations)) if "reactivations" in p3b_rows else []
    per_run = [(seed, c) for seed, c in per_run if math.isfinite(float(c))]
    if per_run:
        counts = [c for _, c in per_run]
        seeds, _ = _per_seed(per_run)
        mean, low, high, n = mean_ci(seeds)
        interval = (f"95 % CI [{low:.1f}, {high:.1f}] over {n} seeds" if math.isfinite(low)
                    else f"no interval ({n} seed)")
        lines.append(f"P3B reactivates pruned elements: {mean:.1f} reactivations per run (mean per seed), {interval}; "
                     f"in {sum(c > 0 for c in counts)} of {len(counts)} runs (from {min(counts):g} to "
                     f"{max(counts):g}) — {verdict(low, high)}")
    return lines


def against_the_paper(lines: Sequence[str]) -> list[str]:
    """The finding lines whose verdict is *contradicts*: results that go against the paper's claim, to be reported
    as such.

    Example:
        >>> against_the_paper(["a: +1.00 points, ... — supports", "b: -2.00 points, ... — contradicts"])
        ['b: -2.00 points, ... — contradicts']
    """
    return [line for line in lines if line.rstrip().endswith("— contradicts")]


def _per_seed(per_run: Sequence[tuple[int, float]]) -> tuple[list[float], int]:
    """The mean value of each seed over its runs (runs of one seed at several prune ratios share the source model
    and data order, so the seed is the unit an interval counts), and how many runs had no value (NaN)."""
    by_seed: dict[int, list[float]] = {}
    missing = 0
    for seed, value in per_run:
        value = float(value)
        if math.isfinite(value):
            by_seed.setdefault(int(seed), []).append(value)
        else:
            missing += 1
    return [sum(v) / len(v) for v in by_seed.values()], missing


def late_convergence_findings(rho: pd.DataFrame, label: str = "") -> list[str]:
    """One line per probe of a :func:`~sparselab.experiments.p3b.late_convergence_by_seed` table: the mean ρ with
    its 95 % interval over seeds and the verdict on "deep blocks converge late" (ρ > 0). A seed (row index)
    given twice is refused: it would count as two seeds."""
    refuse_repeated_seeds(rho.index, "late_convergence_findings: the table", "an interval over seeds")
    lines = []
    for probe in rho.columns:
        values = [float(v) for v in rho[probe]]
        finite = [v for v in values if math.isfinite(v)]
        lines.append(_rho_line(f"deep blocks converge late{f' ({label})' if label else ''}, {probe} probe: "
                               f"Spearman ρ", finite, len(values) - len(finite)))
    return lines


def _rho_line(head: str, per_seed: Sequence[float], without: int = 0) -> str:
    """``head`` followed by the mean ρ over seeds, its 95 % interval, the seed count and the verdict on ρ > 0;
    ``without``: runs that had no ρ (a benefit that never varied), named rather than hidden."""
    mean, low, high, n = mean_ci(per_seed)
    left_out = f"; {without} run{'s' if without != 1 else ''} without a ρ left out" if without else ""
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n == 0:
        return f"{head}: no run has a ρ{left_out} — inconclusive"
    if not math.isfinite(low):
        return f"{head} {mean:+.2f}, no interval ({seeds}){left_out} — inconclusive"
    if high - low <= 1e-9:  # every seed gave the same ρ (up to rounding): a t-interval of width 0 is no evidence
        return f"{head} {mean:+.2f} in every seed ({seeds}), no spread to form an interval{left_out} — inconclusive"
    return f"{head} {mean:+.2f}, 95 % CI [{low:+.2f}, {high:+.2f}], {seeds}{left_out} — {verdict(low, high)}"


def art_findings(table: pd.DataFrame, method: str = "hypersparse") -> list[str]:
    """Claims of the HyperSparse paper against a :func:`sparselab.experiments.art.compare` result: ``method``
    keeps more accuracy than each other method at each sparsity (paired by seed: every method of a seed starts
    from the same warm-up). Where an ART method did not always reach its stop criterion (the pruned copy as good
    as the dense model) within ``max_art_epochs``, a last line per case says in how many runs it did: the others
    were fine-tuned from the candidate the preset's candidate rule held when ART stopped.

    Where the table records each run's chance level (``chance_acc``), runs no better than it
    (:func:`sparselab.experiments.art.at_chance`: a network that lost its input path) are named: a comparison
    line says in how many seeds one side sat at chance, a comparison with both sides at chance in every seed says
    so instead of a verdict, and one line per method and sparsity counts its runs at chance.

    Example:
        >>> t = pd.DataFrame({"method": ["hypersparse"] * 2 + ["layerwise"] * 2, "sparsity": 0.995,
        ...                   "seed": [0, 1] * 2, "acc": [0.84, 0.85, 0.10, 0.12], "chance_acc": 0.1})
        >>> art_findings(t)[-1]
        'layerwise at 99.5 %: 1 of 2 runs at chance (chance level 10.00 %: always the most frequent class)'
    """
    if table.empty:
        return []
    pruned = table[table.method != "dense"]
    if method not in set(pruned.method):
        return []
    lines = []
    chance = at_chance(pruned)
    for other in [m for m in dict.fromkeys(pruned.method) if m != method]:
        pair = pruned[pruned.method.isin([method, other])]
        for _, r in paired_differences(pair, other, setting="sparsity", methods=[method]).iterrows():
            label = f"{method} − {other} at {r.sparsity * 100:g} %"
            # seeds of this comparison (both runs measured, as the paired difference counts them), and whether
            # each of its two runs sat at chance
            runs = pair[pair.sparsity == r.sparsity]
            runs = runs[np.isfinite(pd.to_numeric(runs.acc, errors="coerce").to_numpy(dtype=float))]
            per_seed = (chance[runs.index].groupby([runs.seed, runs.method]).any().unstack("method")
                        .reindex(columns=[method, other]).dropna().astype(bool))
            both, either = int(per_seed.all(axis=1).sum()), int(per_seed.any(axis=1).sum())
            if len(per_seed) and both == len(per_seed):
                lines.append(f"{label}: both methods at chance in every seed ({both}) — no comparison")
                continue
            line = finding(label, r["diff"], r["low"], r["high"], int(r["n"]))
            if either:
                line += f" ({either} of {len(per_seed)} seeds with a run at chance)"
            lines.append(line)
    if "art_converged" in pruned:
        for (sparsity, name), runs in pruned.dropna(subset=["art_converged"]).groupby(["sparsity", "method"]):
            reached = int(runs.art_converged.sum())
            if reached < len(runs):
                lines.append(f"{name} at {sparsity * 100:g} %: ART's stop criterion reached in {reached} of "
                             f"{len(runs)} runs (the others stopped at max_art_epochs with the rule's candidate)")
    for (sparsity, name), runs in pruned[chance].groupby(["sparsity", "method"], sort=False):
        total = int(((pruned.sparsity == sparsity) & (pruned.method == name)).sum())
        level = ", ".join(f"{c * 100:.2f} %" for c in sorted(runs.chance_acc.unique()))
        lines.append(f"{name} at {sparsity * 100:g} %: {len(runs)} of {total} run{'s' if total != 1 else ''} at "
                     f"chance (chance level {level}: always the most frequent class)")
    return lines


def gradient_gap_findings(runs: Sequence, method: str = "hypersparse") -> list[str]:
    """The HyperSparse paper's gradient-profile claim against a comparison's runs: the gap between the
    regularizer's gradient on the to-be-pruned and on the kept weights grows over the ART epochs.

    Each run of ``method`` logs ``grad_ratio`` after every ART epoch: the mean |∂L/∂w| of the ⌊κn⌋ smallest weights
    over that of the others. Its growth is the ratio of the last epoch's value to the first's; one line per
    sparsity gives the geometric mean growth over seeds with its 95 % interval (a t-interval of the log growth)
    and the verdict on growth > 1, and, as a description, the mean Spearman ρ between epoch and ratio (+1: it grew
    at every epoch). A run with fewer than two ART epochs has no growth.

    Example:
        >>> from types import SimpleNamespace
        >>> from sparselab.history import History
        >>> def run(seed, ratios):
        ...     h = History()
        ...     for e, r in enumerate(ratios):
        ...         h.log_metrics({"art_epoch": e, "grad_ratio": r}, step=e, epoch=e)
        ...     return SimpleNamespace(method="hypersparse", sparsity=0.98, seed=seed, history=h)
        >>> line = gradient_gap_findings([run(0, [2, 3, 8]), run(1, [2, 4, 6]), run(2, [2, 2.5, 10])])[0]
        >>> line.split(": ")[-1]
        '×3.91, 95 % CI [×2.07, ×7.40], 3 seeds; Spearman ρ with the epoch +1.00 — supports'
    """
    per_sparsity: dict[float, list[tuple[int, float, float]]] = {}
    for run in runs:
        if run.method == method:
            per_sparsity.setdefault(float(run.sparsity), []).append((int(run.seed), *_gap_growth(run.history)))
    lines = []
    for sparsity, per_run in sorted(per_sparsity.items()):
        log_growth, without = _per_seed([(seed, g) for seed, g, _ in per_run])
        rho, _ = _per_seed([(seed, r) for seed, _, r in per_run])
        mean, low, high, n = mean_ci(log_growth)
        head = f"{method} at {sparsity * 100:g} %: gradient gap (to-be-pruned / kept weights) from the first to the " \
               f"last ART epoch"
        left_out = f"; {without} run{'s' if without != 1 else ''} with fewer than two ART epochs left out" \
            if without else ""
        if n == 0:
            lines.append(f"{head}: no run has two ART epochs{left_out} — inconclusive")
            continue
        seeds = f"{n} seed{'s' if n != 1 else ''}"
        bounds = (f"95 % CI [×{math.exp(low):.2f}, ×{math.exp(high):.2f}], {seeds}" if math.isfinite(low)
                  else f"no interval ({seeds})")
        trend = f"; Spearman ρ with the epoch {sum(rho) / len(rho):+.2f}" if rho else ""
        lines.append(f"{head}: ×{math.exp(mean):.2f}, {bounds}{trend}{left_out} — {verdict(low, high)}")
    return lines


def _gap_growth(history) -> tuple[float, float]:
    """(log of the last ART epoch's ``grad_ratio`` over the first's, Spearman ρ of the ratio with the epoch) of one
    run's History; NaN where it has fewer than two epochs (ρ: three) or a ratio that is not positive."""
    from scipy.stats import spearmanr

    m = history.metrics
    m = m[(m.split == "train") & m.name.isin(["art_epoch", "grad_ratio"])]
    epochs = m.pivot_table(index="step", columns="name", values="value")
    if not {"art_epoch", "grad_ratio"} <= set(epochs.columns):
        return math.nan, math.nan
    epochs = epochs.dropna().sort_values("art_epoch")
    ratios = epochs.grad_ratio.to_numpy()
    if len(ratios) < 2 or not (ratios > 0).all():
        return math.nan, math.nan
    growth = math.log(ratios[-1] / ratios[0])
    rho = (float(spearmanr(epochs.art_epoch, ratios).statistic) if len(ratios) >= 3 and len(set(ratios)) > 1
           else math.nan)
    return growth, rho


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
        rho = kernels["depth_rho"]
        depth = (f"kept fraction vs conv depth Spearman ρ {rho:+.2f}" if math.isfinite(rho)
                 else "no depth ρ (the layers keep equal fractions, or fewer than three layers)")
        lines.append(f"CNN: {depth} over {kernels['layers']:.0f} layers; largest spread between kernel positions "
                     f"within a layer {kernels['max_spread']:.3f} (mean {kernels['mean_spread']:.3f})")
    if vit is not None:
        for (method, sparsity), row in vit.iterrows():
            # a difference under a tenth of a point of the weights is no "more" (a global criterion at one
            # threshold leaves both kinds of block about the target)
            gap = row.attn_kept - row.mlp_kept
            side = "about the same" if abs(gap) < 0.001 else ("attention more" if gap > 0 else "MLP more")
            depth = (f"kept fraction vs depth ρ {row.depth_rho:+.2f}" if math.isfinite(row.depth_rho)
                     else "no depth ρ (the blocks keep equal fractions, or fewer than three blocks)")
            lines.append(f"ViT, {method} at {round(sparsity * 100, 2):g}%: attention keeps {row.attn_kept:.2%}, MLP "
                         f"{row.mlp_kept:.2%} of its weights ({side}); {depth}; "
                         f"{row.dead_neurons:.1%} of MLP neurons dead; "
                         f"{row.unread_channels:.1%} of residual channels unread")
    return lines
