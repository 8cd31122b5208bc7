"""Why P3B trails a baseline: re-runs that take P3B and the baseline apart piece by piece.

P3B and every structured baseline share the gates, the schedule, the within-block selection and the compaction;
they differ in how the budget is split across blocks and in how that split moves during training. Given a
recorded comparison (:func:`sparselab.experiments.p3b.compare` rows carry each run's final keep ratios),
:func:`diagnose` re-runs, for the same seeds:

- ``p3b_allocation_static``: P3B's final keep ratios of the same seed, applied from the first update on (fixed
  allocation). Close to P3B: the final allocation explains P3B's accuracy, not the path it took;
- ``{baseline}_allocation_static``: the baseline's final keep ratios the same way, with P3B's Taylor selection
  inside blocks. Close to the baseline: the allocation, not the selection, makes the baseline's result;
- ``p3b_long_windows``: one mask update per epoch instead of the preset's (three times the window per benefit
  estimate: less noise, fewer re-allocations);
- ``p3b_l1_selection``: P3B's allocation with the baseline's L1 selection inside blocks (when the baseline is
  ``l1``);
- ``p3b_2x_schedule`` and ``{baseline}_2x_schedule``: every phase twice as long.

:func:`diagnosis_findings` turns the table into paired differences with 95 % intervals, computed per seed.

Example:
    >>> table = pd.read_csv("docs/results/p3b_cpu-full.csv")  # doctest: +SKIP
    >>> diag = diagnose(p3b_preset("cpu-full"), table, "global_taylor", 0.9)  # doctest: +SKIP
    >>> print("\\n".join(diagnosis_findings(table, diag, "global_taylor", 0.9)))  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError, check_distinct_seeds, unknown_name
from ..stats import finding, paired_mean_ci
from .findings import VARIANTS
from .p3b import METHODS, P3BPreset, _read_record, _write_record, run_p3b, run_row
from .presets import load_data
from .provenance import row_versions


def _final_keep(table: pd.DataFrame, method: str, ratio: float, seed: int) -> list[float]:
    rows = table[(table.method == method) & (table.prune_ratio.round(6) == round(ratio, 6)) & (table.seed == seed)]
    if rows.empty or "keep_ratios" not in rows or not isinstance(rows.keep_ratios.iloc[0], str):
        raise ConfigError(f"the table has no keep ratios for {method} at {ratio:g}, seed {seed}: diagnose needs "
                          "the rows of a recorded compare() run")
    return list(json.loads(rows.keep_ratios.iloc[0]).values())


def trailing(table: pd.DataFrame) -> pd.DataFrame:
    """The (baseline, prune ratio) pairs where P3B trails: the whole 95 % interval of P3B − baseline (paired by
    seed) below 0, largest gap first. Columns as :func:`sparselab.stats.paired_differences`."""
    from ..stats import paired_against_all

    diffs = paired_against_all(table, "p3b")
    if diffs.empty:
        return diffs
    return diffs[diffs.high < 0].sort_values("diff").reset_index(drop=True)


def variants(preset: P3BPreset, table: pd.DataFrame, baseline: str, ratio: float, seed: int
             ) -> dict[str, tuple[str, dict[str, Any], P3BPreset]]:
    """The diagnostic runs for one seed: name → (method, P3B options, preset)."""
    longer = preset.replace(schedule=replace(preset.schedule, warmup=2 * preset.schedule.warmup,
                                             sparsify=2 * preset.schedule.sparsify,
                                             finalize=2 * preset.schedule.finalize))
    windows = preset.replace(schedule=replace(preset.schedule, updates_per_epoch=1))
    out = {
        "p3b_allocation_static": ("fixed", {"keep_ratios": _final_keep(table, "p3b", ratio, seed)}, preset),
        f"{baseline}_allocation_static": ("fixed", {"keep_ratios": _final_keep(table, baseline, ratio, seed)},
                                          preset),
        "p3b_long_windows": ("p3b", {}, windows),
        "p3b_2x_schedule": ("p3b", {}, longer),
        f"{baseline}_2x_schedule": (baseline, {}, longer),
    }
    if baseline == "l1":
        out["p3b_l1_selection"] = ("p3b", {"criterion": "l1"}, preset)
    return out


def diagnose(preset: P3BPreset, table: pd.DataFrame, baseline: str, ratio: float,
             seeds: Sequence[int] | None = None, record: str | Path | None = None, progress: bool = True
             ) -> pd.DataFrame:
    """Run the diagnostic variants (module docstring) of P3B against ``baseline`` at ``ratio`` for ``seeds``
    (default: the seeds both have in ``table``). One row per run, ``method`` naming the variant; ``record``
    writes each row at once and skips recorded ones, as in :func:`~sparselab.experiments.p3b.compare`; the rows
    returned are this call's variants for ``seeds`` only, recorded or run, labelled with ``baseline`` (the record
    keeps every seed's and every baseline's; P3B's own variants recorded for another baseline are reused).

    Example:
        >>> diag = diagnose(p3b_preset("tiny"), table, "l1", 0.5, seeds=[0], record="diag.csv")  # doctest: +SKIP
        >>> sorted(set(diag.seed))  # doctest: +SKIP
        [0]
    """
    if baseline not in METHODS or baseline in ("p3b", "dense"):
        raise unknown_name("baseline", baseline, [m for m in METHODS if m not in ("p3b", "dense")])
    both = [set(table[(table.method == m) & (table.prune_ratio.round(6) == round(ratio, 6))].seed)
            for m in ("p3b", baseline)]
    seeds = sorted(both[0] & both[1]) if seeds is None else list(seeds)
    if not seeds:
        raise ConfigError(f"the table has no seed with both p3b and {baseline} at {ratio:g}")
    check_distinct_seeds(seeds, "one pair of the paired differences")
    recorded = _read_record(record, preset) if record is not None else pd.DataFrame()
    done = {(r.method, round(float(r.prune_ratio), 6), int(r.seed)) for r in recorded.itertuples()}
    jobs = [(name, spec, seed) for seed in seeds for name, spec in variants(preset, table, baseline, ratio,
                                                                             seed).items()]
    data = None
    # the record may hold other seeds and other baselines' variants (an earlier call's): they stay in the file but
    # are no rows of this call; P3B's own variants, shared by every baseline at a ratio, are this call's rows too
    wanted = {(name, int(seed)) for name, _, seed in jobs}
    rows = [{**r, "baseline": baseline} for r in recorded.to_dict("records")
            if round(float(r["prune_ratio"]), 6) == round(ratio, 6) and (r["method"], int(r["seed"])) in wanted]
    for name, (method, options, variant_preset), seed in tqdm(jobs, desc=f"diagnosis vs {baseline}",
                                                               disable=not progress):
        if (name, round(ratio, 6), seed) in done:
            continue
        data = data if data is not None else load_data(preset)
        run = run_p3b(variant_preset, method, ratio, seed, data=data, progress=False, measure_latency=False,
                      pruner_options=options)
        run.method = name
        rows.append({**run_row(run, preset.name), "baseline": baseline})
        if record is not None:
            recorded = pd.concat([recorded, pd.DataFrame(rows[-1:])], ignore_index=True)
            _write_record(record, recorded, preset)
    return pd.DataFrame(rows)


def diagnosis_findings(table: pd.DataFrame, diag: pd.DataFrame, baseline: str | None = None,
                       ratio: float | None = None) -> list[str]:
    """Each diagnostic variant against P3B and against the baseline, paired by seed (points of test accuracy,
    95 % interval), in the order of the module docstring. ``baseline`` and ``ratio`` default to the ones ``diag``
    was run for (its ``baseline`` and ``prune_ratio`` columns); an empty ``diag`` gives no lines."""
    if diag.empty:
        return []
    if baseline is None or ratio is None:
        return [line for b, r in diagnosed_pairs(diag, baseline, ratio)
                for line in diagnosis_findings(table, diag, b, r)]
    diag = _pair_rows(diag, baseline, ratio)
    at = lambda t: t[t.prune_ratio.round(6) == round(ratio, 6)]  # noqa: E731
    base = at(table)
    ref = {m: base[base.method == m].set_index("seed").acc for m in ("p3b", baseline)}
    lines = []
    mean, low, high, n = paired_mean_ci(ref["p3b"], ref[baseline])
    # sparselab's own variants test no claim of the paper: higher / lower, not a verdict (as in p3b_findings)
    lines.append(finding(f"P3B − {baseline} at {ratio * 100:g} %", mean, low, high, n,
                         expect=None if baseline in VARIANTS else "positive"))
    for name, group in at(diag).groupby("method", sort=False):
        acc = group.set_index("seed").acc
        for other in ("p3b", baseline):
            mean, low, high, n = paired_mean_ci(acc, ref[other])
            lines.append(finding(f"{name} − {other} at {ratio * 100:g} %", mean, low, high, n, expect=None))
    return lines


def diagnosed_pairs(diag: pd.DataFrame, baseline: str | None = None, ratio: float | None = None
                    ) -> list[tuple[str, float]]:
    """The (baseline, prune ratio) pairs a diagnosis table holds, in the order they were run (optionally only
    those with ``baseline`` / ``ratio``)."""
    pairs = dict.fromkeys(zip(diag.baseline.astype(str), diag.prune_ratio.astype(float)))
    return [(b, r) for b, r in pairs if (baseline is None or b == baseline)
            and (ratio is None or round(r, 6) == round(ratio, 6))]


#: the direction :func:`diagnosis_conclusions` gives a pair without an interval (fewer than two seeds in common)
NO_INTERVAL = "no interval"

#: P3B's own diagnostic variants (shared by every baseline at a ratio); a baseline's are ``{baseline}_...``
P3B_VARIANTS = ("p3b_allocation_static", "p3b_long_windows", "p3b_2x_schedule", "p3b_l1_selection")


def _pair_rows(diag: pd.DataFrame, baseline: str, ratio: float) -> pd.DataFrame:
    """The variants of one pair: P3B's own (shared by every baseline at that ratio) and the baseline's. A variant
    and seed listed under several baselines is one run; two runs of it (different accuracies) are refused."""
    at = diag[diag.prune_ratio.round(6) == round(ratio, 6)]
    mine = at[at.method.isin(P3B_VARIANTS) | at.method.isin([f"{baseline}_allocation_static",
                                                             f"{baseline}_2x_schedule"])]
    runs = mine.groupby(["method", "seed"]).acc.nunique(dropna=False)
    if (runs > 1).any():
        name, seed = runs[runs > 1].index[0]
        raise ConfigError(f"the diagnosis holds {name} at {ratio:g}, seed {seed} more than once with different "
                          f"accuracies; a pairing by seed needs one run each (rows of two records mixed?)")
    return mine.drop_duplicates(subset=["method", "seed"])


def diagnosis_conclusions(table: pd.DataFrame, diag: pd.DataFrame, baseline: str | None = None,
                          ratio: float | None = None) -> list[str]:
    """What the diagnostic pairs imply, by rules fixed here (each pair's :func:`~sparselab.stats.direction`):

    - the gap itself: whether P3B trails the baseline at all (the whole interval below 0);
    - allocation or selection: the baseline's final keep ratios with P3B's selection against the baseline and
      against P3B;
    - the path: P3B's final keep ratios from the start against P3B;
    - the benefit estimate's noise: longer windows against P3B;
    - the schedule: P3B − baseline again when every phase is twice as long.

    A pair with fewer than two seeds in common has no interval: its line gives the difference (if any) and draws
    no conclusion.

    Example:
        >>> t = pd.DataFrame({"method": ["p3b", "l1"], "prune_ratio": [0.5, 0.5], "seed": [0, 0], "acc": [0.7, 0.8]})
        >>> d = pd.DataFrame({"method": ["p3b_long_windows"], "prune_ratio": [0.5], "seed": [0], "acc": [0.72],
        ...                   "baseline": ["l1"]})
        >>> diagnosis_conclusions(t, d)[0].split(": ")[1:3]
        ['-10.00 points, no interval (1 seed)', 'no conclusion']
    """
    from ..stats import direction

    if diag.empty:
        return []
    if baseline is None or ratio is None:
        return [line for b, r in diagnosed_pairs(diag, baseline, ratio)
                for line in diagnosis_conclusions(table, diag, b, r)]
    diag = _pair_rows(diag, baseline, ratio)
    at = lambda t, m: t[(t.method == m) & (t.prune_ratio.round(6) == round(ratio, 6))].set_index("seed").acc  # noqa: E731

    def pair(a: pd.Series, b: pd.Series) -> tuple[str, str]:
        """The pair's direction and its text; the direction is :data:`NO_INTERVAL` where fewer than two seeds
        (with a finite difference) pair up, so that no rule reads "within the seed noise" into a missing interval."""
        mean, low, high, n = paired_mean_ci(a, b)
        seeds = f"{n} seed{'s' if n != 1 else ''}"
        if not math.isfinite(mean):
            return NO_INTERVAL, f"no difference measured ({seeds})"
        if not (math.isfinite(low) and math.isfinite(high)):
            return NO_INTERVAL, f"{mean * 100:+.2f} points, no interval ({seeds})"
        return direction(low, high), f"{mean * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}], {seeds}"

    unmeasured = "no conclusion: an interval needs at least 2 seeds measured for both"
    p3b, base = at(table, "p3b"), at(table, baseline)
    where = f"at {ratio * 100:g} %"
    gap, gap_text = pair(p3b, base)
    lines = [f"P3B − {baseline} {where}: {gap_text}: " +
             ("P3B trails the baseline." if gap == "lower" else f"{unmeasured}." if gap == NO_INTERVAL else
              "P3B does not trail the baseline beyond the seed noise; the variants below describe, not explain.")]
    static = at(diag, f"{baseline}_allocation_static")
    common = static.index.intersection(base.index)
    if len(static) and len(common) and (static.loc[common] == base.loc[common]).all():
        # the baseline already is a static allocation with P3B's selection (fixed, a frozen benefit): its variant
        # reruns it, and a pair of identical runs tells nothing about allocation against selection
        lines.append(f"allocation or selection: {baseline}'s final keep ratios with P3B's selection give exactly "
                     f"{baseline}'s runs (it already applies a fixed allocation with P3B's selection), so this pair "
                     f"cannot separate allocation from selection.")
    elif len(static):
        vs_base, t1 = pair(static, base)
        vs_p3b, t2 = pair(static, p3b)
        if NO_INTERVAL in (vs_base, vs_p3b):
            verdict = unmeasured
        elif vs_base == "no clear difference" and vs_p3b == "higher":
            verdict = ("the allocation explains the gap: the baseline's keep ratios keep its advantage with P3B's "
                       "selection")
        elif vs_base == "no clear difference" and vs_p3b == "no clear difference":
            verdict = ("inconclusive: the baseline's keep ratios with P3B's selection cannot be told apart from "
                       "either method (the gap is within this variant's seed noise)")
        elif vs_base == "lower":
            verdict = ("the allocation alone does not explain the gap: with P3B's selection the baseline's keep "
                       "ratios lose (part of) their advantage, so how elements are chosen matters too")
        elif "no clear difference" in (vs_base, vs_p3b):
            differs, same = ("P3B", baseline) if vs_base == "no clear difference" else (baseline, "P3B")
            verdict = (f"mixed: the baseline's keep ratios with P3B's selection differ from {differs} but cannot "
                       f"be told apart from {same}")
        else:
            verdict = "mixed: the baseline's keep ratios with P3B's selection differ from both"
        lines.append(f"allocation or selection: {baseline}'s final keep ratios with P3B's selection − {baseline} "
                     f"{t1}; − P3B {t2}: {verdict}.")
    # one variant paired with one reference: (variant, reference, what the pair is, meaning per direction)
    rules = [
        ("p3b_allocation_static", p3b, "the path: P3B's final keep ratios from the first update − P3B",
         {"higher": "the path costs: P3B's own final allocation is better applied from the start",
          "lower": "the path helps: re-allocating during training beats the final allocation applied early",
          "no clear difference": "no evidence either way: the interval covers 0, so this does not show that the "
                                 "path is irrelevant"}),
        ("p3b_long_windows", p3b, "benefit noise: one update per epoch (3x longer windows) − P3B",
         {"higher": "the benefit estimate's noise costs accuracy",
          "lower": "more frequent re-allocation helps more than a steadier estimate",
          "no clear difference": "no evidence that the benefit estimate's noise explains the gap"}),
        ("p3b_2x_schedule", at(diag, f"{baseline}_2x_schedule"),
         f"schedule length: P3B − {baseline}, both with every phase twice as long,",
         {"lower": "P3B still trails with twice the schedule",
          "higher": "with twice the schedule P3B is ahead: the schedule length explains the gap",
          "no clear difference": "with twice the schedule the gap is within the seed noise"}),
    ]
    for variant, reference, what, meanings in rules:
        mine = at(diag, variant)
        if len(mine) and len(reference):
            d, text = pair(mine, reference)
            lines.append(f"{what} {text}: {unmeasured if d == NO_INTERVAL else meanings[d]}.")
    return lines


def diagnosis_summary(table: pd.DataFrame, diag: pd.DataFrame) -> list[str]:
    """Everything the diagnosis says, computed: where P3B trails (:func:`trailing`; or that it trails nowhere),
    then for each diagnosed pair its paired lines and what they imply, and the trailing pairs left undiagnosed.
    A diagnosis with rows of code that recorded none of ``table``'s rows is not paired with it (the lines say so).
    """
    if table.empty or "p3b" not in set(table.method):
        return []
    pairs = trailing(table)
    if pairs.empty:
        return ["P3B trails no other method at any prune ratio (no 95 % interval of P3B − method lies below 0): "
                "there is nothing to diagnose."]
    lines = ["P3B trails: " + "; ".join(f"{r.baseline} at {r.prune_ratio * 100:g} % ({r['diff'] * 100:+.2f} points "
                                         f"[{r.low * 100:+.2f}, {r.high * 100:+.2f}])" for _, r in pairs.iterrows())]
    other = set(row_versions(diag)) - set(row_versions(table))
    if other:  # its variants would be paired with P3B and baseline runs of other code
        return lines + [f"the diagnosis holds rows of code the P3B table does not ({', '.join(sorted(other))}): its "
                        f"variants are not paired with runs of another version, so it is not computed here; "
                        f"record both with the same code (`scripts/run_statistics.py --only p3b --fresh`, then "
                        f"`--only diagnosis --fresh`)"]
    done = set(diagnosed_pairs(diag)) if not diag.empty else set()
    for b, r in diagnosed_pairs(diag) if not diag.empty else []:
        lines += [""] + diagnosis_findings(table, diag, b, r) + diagnosis_conclusions(table, diag, b, r)
    diagnosed = {(b, round(x, 6)) for b, x in done}
    left = [f"{r.baseline} at {r.prune_ratio * 100:g} %" for _, r in pairs.iterrows()
            if (r.baseline, round(float(r.prune_ratio), 6)) not in diagnosed]
    if left:
        lines += ["", "not diagnosed (each pair costs about 15 minutes; scripts/run_statistics.py --diagnose N): "
                  + ", ".join(left)]
    return lines
