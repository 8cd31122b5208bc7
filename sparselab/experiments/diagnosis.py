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
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError, unknown_name
from ..stats import finding, mean_ci
from .p3b import METHODS, P3BPreset, _read_record, _write_record, run_p3b, run_row
from .presets import load_data


def _final_keep(table: pd.DataFrame, method: str, ratio: float, seed: int) -> list[float]:
    rows = table[(table.method == method) & (table.prune_ratio.round(6) == round(ratio, 6)) & (table.seed == seed)]
    if rows.empty or "keep_ratios" not in rows or not isinstance(rows.keep_ratios.iloc[0], str):
        raise ConfigError(f"the table has no keep ratios for {method} at {ratio:g}, seed {seed}: diagnose needs "
                          "the rows of a recorded compare() run")
    return list(json.loads(rows.keep_ratios.iloc[0]).values())


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
    writes each row at once and skips recorded ones, as in :func:`~sparselab.experiments.p3b.compare`."""
    if baseline not in METHODS or baseline in ("p3b", "dense"):
        raise unknown_name("baseline", baseline, [m for m in METHODS if m not in ("p3b", "dense")])
    both = [set(table[(table.method == m) & (table.prune_ratio.round(6) == round(ratio, 6))].seed)
            for m in ("p3b", baseline)]
    seeds = sorted(both[0] & both[1]) if seeds is None else list(seeds)
    if not seeds:
        raise ConfigError(f"the table has no seed with both p3b and {baseline} at {ratio:g}")
    recorded = _read_record(record, preset.name) if record is not None else pd.DataFrame()
    done = {(r.method, round(float(r.prune_ratio), 6), int(r.seed)) for r in recorded.itertuples()}
    jobs = [(name, spec, seed) for seed in seeds for name, spec in variants(preset, table, baseline, ratio,
                                                                             seed).items()]
    data = None
    rows = [r for r in recorded.to_dict("records") if round(float(r["prune_ratio"]), 6) == round(ratio, 6)]
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
            _write_record(record, recorded)
    return pd.DataFrame(rows)


def diagnosis_findings(table: pd.DataFrame, diag: pd.DataFrame, baseline: str | None = None,
                       ratio: float | None = None) -> list[str]:
    """Each diagnostic variant against P3B and against the baseline, paired by seed (points of test accuracy,
    95 % interval), in the order of the module docstring. ``baseline`` and ``ratio`` default to the ones ``diag``
    was run for (its ``baseline`` and ``prune_ratio`` columns); an empty ``diag`` gives no lines."""
    if diag.empty:
        return []
    if baseline is None:
        baseline = str(diag.baseline.iloc[0])
    if ratio is None:
        ratio = float(diag.prune_ratio.iloc[0])
    at = lambda t: t[t.prune_ratio.round(6) == round(ratio, 6)]  # noqa: E731
    base = at(table)
    ref = {m: base[base.method == m].set_index("seed").acc for m in ("p3b", baseline)}
    lines = []
    mean, low, high, n = _paired(ref["p3b"], ref[baseline])
    lines.append(finding(f"P3B − {baseline} at {ratio * 100:g} %", mean, low, high, n))
    for name, group in at(diag).groupby("method", sort=False):
        acc = group.set_index("seed").acc
        for other in ("p3b", baseline):
            mean, low, high, n = _paired(acc, ref[other])
            lines.append(finding(f"{name} − {other} at {ratio * 100:g} %", mean, low, high, n, expect=None))
    return lines


def _paired(a: pd.Series, b: pd.Series) -> tuple[float, float, float, int]:
    common = a.index.intersection(b.index)
    return mean_ci(a.loc[common] - b.loc[common])
