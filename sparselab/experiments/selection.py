"""Choosing the CPU-scale setting by a rule fixed before any method is compared.

A setting can tell pruning methods apart only if pruning costs something there. The rule, written down before
P3B is compared with anything:

    a candidate setting qualifies when, over ``seeds`` (at least 5),
    (1) uniform allocation at the highest prune ratio loses at least ``min_loss`` (3 points) of test accuracy
        against dense fine-tuning of the same seeds, and
    (2) dense fine-tuning's seed standard deviation is below ``max_dense_std`` (0.5 points);
    candidates are measured in a fixed order and the first that qualifies is the setting.

Only dense fine-tuning and the uniform baseline are run, so the rule cannot look at which method wins.

Example:
    >>> RULE.min_loss, RULE.max_dense_std
    (0.03, 0.005)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import ConfigError, check_bool, check_distinct_seeds, check_ratio, check_seed
from ..stats import mean_ci
from .committed import committed_results
from .p3b import P3BPreset, run_p3b
from .presets import load_data


@dataclass(frozen=True)
class SettingRule:
    """The thresholds of the selection rule (accuracies as fractions)."""

    min_loss: float = 0.03
    max_dense_std: float = 0.005
    min_seeds: int = 5


RULE = SettingRule()


def measure_candidate(preset: P3BPreset, ratio: float = 0.9, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                      rule: SettingRule = RULE, progress: bool = True) -> dict:
    """Dense fine-tuning and uniform allocation at ``ratio`` for every seed of one candidate, and whether the
    candidate qualifies under ``rule``. Returns the per-run rows and the summary.

    Raises:
        ConfigError: a seed given twice (it would count twice towards ``rule.min_seeds`` and the interval), a
            seed or ``ratio`` out of range, or no seed.
    """
    seeds = _checked_seeds(seeds)
    check_ratio("ratio", ratio, allow_zero=False)
    data = load_data(preset)
    rows = []
    jobs = [(m, s) for s in seeds for m in ("dense", "uniform")]
    for method, seed in tqdm(jobs, desc=f"candidate {preset.name}", disable=not progress):
        run = run_p3b(preset, method, ratio, seed, data=data, progress=False, measure_latency=False)
        rows.append({"candidate": preset.name, "method": method, "prune_ratio": run.prune_ratio, "seed": seed,
                     "acc": run.result["acc"]})
    table = pd.DataFrame(rows)
    dense = table[table.method == "dense"].set_index("seed").acc
    uniform = table[table.method == "uniform"].set_index("seed").acc
    loss_mean, loss_low, loss_high, n = mean_ci(dense - uniform)
    std = float(dense.std(ddof=1)) if len(dense) > 1 else math.nan  # rule (2) is about dense fine-tuning alone
    # the means and the seed count are over the seeds whose loss was measured (both runs finite), as the loss is:
    # a seed without its uniform run would otherwise enter dense_mean but not uniform_mean
    paired = np.isfinite((dense - uniform).to_numpy(dtype=float))
    summary = {"candidate": preset.name, "data": preset.data, "model": preset.model, "ratio": ratio,
               "seeds": n, "dense_mean": float(dense[paired].mean()), "dense_std": std,
               "uniform_mean": float(uniform[paired].mean()), "loss": loss_mean, "loss_low": loss_low,
               "loss_high": loss_high,
               "qualifies": bool(n >= rule.min_seeds and loss_mean >= rule.min_loss
                                 and std < rule.max_dense_std)}
    return {"runs": table, "summary": summary}


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list, refused before any run when one is out of range or given twice, or none is given."""
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds is empty: give the seeds to measure each candidate with, e.g. (0, 1, 2, 3, 4)")
    for seed in seeds:
        check_seed("seed", seed)
    return check_distinct_seeds(seeds, "one unit of the rule's interval and seed count")


def qualified(selection: pd.DataFrame) -> pd.Series:
    """The ``qualifies`` column of a selection table as booleans; ``"True"``/``"False"`` (as a file read as text
    holds them) are read by their words, not by truthiness, and anything else (e.g. an empty cell) is refused.

    Example:
        >>> qualified(pd.DataFrame({"qualifies": ["False", True]})).tolist()
        [False, True]
    """
    if "qualifies" not in selection:
        raise ConfigError("the selection table has no 'qualifies' column (a table written by select_setting)")
    words = {"true": True, "false": False}

    def read(value) -> bool:
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        return bool(check_bool("the selection table's qualifies", value))

    return selection.qualifies.map(read).astype(bool)


def committed_selection() -> pd.DataFrame:
    """The candidates measured so far (``scripts/select_setting.py`` writes ``docs/results/setting_selection.csv``),
    with the rule's thresholds; empty when none has been measured."""
    return committed_results("setting_selection")


def chosen_setting(selection: pd.DataFrame | None = None) -> str | None:
    """The first candidate of the committed selection (or of ``selection``) that qualifies; None if none does.

    Example:
        >>> chosen_setting(pd.DataFrame({"candidate": ["a", "b"], "qualifies": [False, True]}))
        'b'
    """
    selection = committed_selection() if selection is None else selection
    if selection.empty:
        return None
    hits = selection[qualified(selection)]
    return str(hits.candidate.iloc[0]) if len(hits) else None


def same_setting(preset: P3BPreset, candidate: P3BPreset) -> bool:
    """Whether ``preset`` runs ``candidate``'s setting: the same source model, target data, schedule and training,
    whatever its name, prune ratios, seeds and methods."""
    ignore = {"name", "prune_ratios", "seeds", "methods"}
    return all(getattr(preset, f) == getattr(candidate, f) for f in preset.__dataclass_fields__ if f not in ignore)


def select_setting(candidates: Sequence[P3BPreset], ratio: float = 0.9, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                   rule: SettingRule = RULE, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure candidates in order until one qualifies; returns (summary per measured candidate, all runs).

    Raises:
        ConfigError: no candidate, or a seed or ``ratio`` :func:`measure_candidate` refuses (before any run).
    """
    candidates = list(candidates)
    if not candidates:
        raise ConfigError("candidates is empty: give the P3B presets to measure, in the order of the rule")
    _checked_seeds(seeds)
    check_ratio("ratio", ratio, allow_zero=False)
    summaries, runs = [], []
    for preset in candidates:
        result = measure_candidate(preset, ratio, seeds, rule, progress)
        summaries.append(result["summary"])
        runs.append(result["runs"])
        if result["summary"]["qualifies"]:
            break
    return pd.DataFrame(summaries), pd.concat(runs, ignore_index=True)
