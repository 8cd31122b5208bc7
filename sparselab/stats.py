"""Statistics over seeds: means with confidence intervals, paired per-seed differences, and claims read off them.

A result table has one row per run (``method``, a setting column such as ``prune_ratio`` or ``sparsity``,
``seed`` and the measured ``acc``), as ``sparselab.experiments.p3b.compare`` and ``...art.compare`` return.

- :func:`mean_ci`: mean and Student-t confidence interval of a sample.
- :func:`summarize_ci`: that per method and setting.
- :func:`paired_mean_ci`: that of a − b over the seeds both ran;
- :func:`paired_differences`: method − baseline per seed (same seed = same warm start and data order), mean and
  interval of the differences.
- :func:`verdict` / :func:`finding`: whether an interval supports, contradicts or cannot decide a claim, and
  a one-line statement of it — what a notebook's findings cell prints.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"method": ["p3b"] * 3 + ["uniform"] * 3, "prune_ratio": 0.9, "seed": [0, 1, 2] * 2,
    ...                   "acc": [0.90, 0.92, 0.91, 0.88, 0.89, 0.885]})
    >>> d = paired_differences(t, "uniform", setting="prune_ratio").iloc[0]
    >>> round(float(d["diff"]) * 100, 2), int(d["n"]), verdict(d["low"], d["high"])
    (2.5, 3, 'supports')
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError

CONFIDENCE = 0.95
#: result columns that hold a share in [0, 1] besides accuracies (``acc*``): shown in %, differences in points
FRACTIONS = ("achieved_ratio", "nonzero_sparsity", "mask_sparsity", "chance_acc", "sparsity", "prune_ratio")


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the Student-t interval of the mean (NaN bounds for a single value: one seed
    bounds nothing)."""
    from scipy import stats as st

    _check_confidence(confidence)
    x = np.asarray([_number(v) for v in values], dtype=float)
    if not np.isfinite(x).all():  # a diverged seed: leaving it out raises the mean, so say so
        warnings.warn(f"mean_ci: {int((~np.isfinite(x)).sum())} of {len(x)} values are not finite and are left "
                      f"out of the mean and its interval", RuntimeWarning, stacklevel=2)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    half = float(st.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def summarize_ci(table: pd.DataFrame, value: str = "acc", setting: str = "prune_ratio",
                 method: str = "method", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean and confidence interval of ``value`` per method and setting (one row each); the frame's
    ``attrs["confidence"]`` records the confidence of the intervals. A table with a ``seed`` column may hold each
    seed once per method and setting."""
    _need(table, [value, setting, method])
    _keyed(table, [setting, method])
    _numeric(table, value)
    _check_confidence(confidence)
    if "seed" in table.columns:
        refuse_repeated_runs(table[table["seed"].notna()], "summarize_ci", "an interval over seeds", method,
                             "seed", setting)
    rows = []
    for (s, m), group in table.groupby([setting, method], sort=False):
        mean, low, high, n = mean_ci(group[value], confidence)
        rows.append({setting: s, method: m, "mean": mean, "low": low, "high": high, "n": n})
    out = pd.DataFrame(rows)
    out.attrs["confidence"] = float(confidence)
    return out


def refuse_repeated_runs(table: pd.DataFrame, where: str, purpose: str, method: str = "method",
                         seed: str = "seed", setting: str | None = None) -> None:
    """Raise :class:`ConfigError` when two rows of ``table`` are the same run: the same ``method``, ``seed`` and,
    unless ``setting`` is None, the same setting. ``where`` and ``purpose`` say who refuses and what needs one row
    per run. Rows without a seed repeat one another too; callers that allow them filter them out first.

    Example:
        >>> t = pd.DataFrame({"method": ["a", "a"], "prune_ratio": 0.5, "seed": [0, 0]})
        >>> refuse_repeated_runs(t, "summary", "a mean over seeds", setting="prune_ratio")
        Traceback (most recent call last):
        ...
        sparselab.errors.ConfigError: summary: 2 rows repeat a (method, prune_ratio, seed): e.g. 'a' at \
prune_ratio=0.5, seed 0; a mean over seeds needs one row each (was a run appended twice?)
    """
    keys = [method] + ([setting] if setting is not None else []) + [seed]
    repeated = table[table.duplicated(keys, keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        at = f" at {setting}={_plain(first[setting])!r}" if setting is not None else ""
        raise ConfigError(f"{where}: {len(repeated)} rows repeat a ({', '.join(keys)}): e.g. "
                          f"{_plain(first[method])!r}{at}, seed {_plain(first[seed])!r}; {purpose} needs one row "
                          f"each (was a run appended twice?)")


def refuse_repeated_seeds(seeds: pd.Index, where: str, purpose: str) -> None:
    """Raise :class:`ConfigError` when the index ``seeds`` (one value per seed) holds a seed more than once: it
    would count as two seeds. ``where`` names what holds them, ``purpose`` what needs one value per seed.

    Example:
        >>> refuse_repeated_seeds(pd.Index([0, 0, 1]), "the table", "an interval over seeds")
        Traceback (most recent call last):
        ...
        sparselab.errors.ConfigError: the table holds seeds [0] more than once; an interval over seeds needs one \
value per seed (was a run appended twice?)
    """
    repeated = [_plain(v) for v in seeds[seeds.duplicated()].unique()]
    if repeated:
        raise ConfigError(f"{where} holds seeds {repeated} more than once; {purpose} needs one value per seed (was "
                          f"a run appended twice?)")


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so that a message shows ``0``, not ``np.int64(0)``."""
    return value.item() if hasattr(value, "item") else value


def paired_mean_ci(a: pd.Series, b: pd.Series, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """:func:`mean_ci` of ``a − b`` over the index (seeds) both hold.

    Example:
        >>> paired_mean_ci(pd.Series([0.9, 0.8, 0.7], index=[0, 1, 2]), pd.Series([0.5, 0.6], index=[1, 2]))[0]
        0.2
    """
    for name, series in (("first", a), ("second", b)):
        refuse_repeated_seeds(series.index, f"paired_mean_ci: the {name} series", "a pairing by seed")
        if series.index.isna().any():  # two rows without a seed would pair up with each other
            raise ConfigError(f"paired_mean_ci: the {name} series holds {int(series.index.isna().sum())} values "
                              f"without a seed (NaN); a pairing by seed needs every value's seed")
    common = a.index.intersection(b.index)
    return mean_ci((a.loc[common] - b.loc[common]).to_numpy(dtype=float), confidence)


def paired_differences(table: pd.DataFrame, baseline: str, value: str = "acc", setting: str = "prune_ratio",
                       method: str = "method", seed: str = "seed", methods: Sequence[str] | None = None,
                       confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per setting and method: mean of (method − ``baseline``) over the seeds both ran, with its interval.

    Pairing by seed removes what the seed does to both (warm start, data order); only seeds present for both
    methods count (``n``). ``methods`` picks the methods compared (a string is one method); the frame's
    ``attrs["confidence"]`` records the confidence of the intervals, which :func:`findings_from` and
    :func:`~sparselab.plots.plot_paired_differences` state."""
    _need(table, [value, setting, method, seed])
    _keyed(table, [setting, method, seed])
    _numeric(table, value)
    _check_confidence(confidence)
    if isinstance(methods, str):  # one method, not its characters
        methods = [methods]
    if baseline not in set(table[method]):
        raise ConfigError(f"baseline {baseline!r} is not among the methods {sorted(set(table[method]))}")
    unknown = [m for m in (methods or ()) if m not in set(table[method])]
    if unknown:
        raise ConfigError(f"methods {unknown} are not among the methods of the table {sorted(set(table[method]))}")
    refuse_repeated_runs(table, "paired_differences", "a pairing by seed", method, seed, setting)
    rows = []
    for s, at in table.groupby(setting, sort=False):
        base = at[at[method] == baseline].set_index(seed)[value]
        others = methods if methods is not None else [m for m in at[method].unique() if m != baseline]
        for m in others:
            mean, low, high, n = paired_mean_ci(at[at[method] == m].set_index(seed)[value], base, confidence)
            rows.append({setting: s, method: m, "baseline": baseline, "diff": mean, "low": low, "high": high,
                         "n": n})
    out = pd.DataFrame(rows)
    out.attrs.update(confidence=float(confidence), value=value)
    return out


def paired_against_all(table: pd.DataFrame, method: str, setting: str = "prune_ratio", value: str = "acc",
                       skip: Sequence[str] = ("dense",), confidence: float = CONFIDENCE) -> pd.DataFrame:
    """:func:`paired_differences` of ``method`` against every other method of ``table`` (except ``skip``), one
    frame; empty when ``method`` or every other method is missing. Its ``attrs`` record the ``confidence`` of the
    intervals and the compared ``value``, as those of :func:`paired_differences`.

    Example:
        >>> t = pd.DataFrame({"method": ["a", "a", "b", "b"], "prune_ratio": 0.5, "seed": [0, 1, 0, 1],
        ...                   "acc": [0.9, 0.8, 0.85, 0.8]})
        >>> round(float(paired_against_all(t, "a")["diff"].iloc[0]), 3)
        0.025
    """
    _check_confidence(confidence)
    empty = pd.DataFrame()
    empty.attrs.update(confidence=float(confidence), value=value)
    if table.empty:
        return empty
    _need(table, ["method", setting, "seed", value])
    if method not in set(table.method):
        return empty
    others = [m for m in dict.fromkeys(table.method) if m != method and m not in skip]
    frames = [paired_differences(table[table.method.isin([method, b])], b, value=value, setting=setting,
                                 methods=[method], confidence=confidence) for b in others]
    if not frames:
        return empty
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(confidence=float(confidence), value=value)
    return out


def verdict(low: float, high: float, expect: str = "positive") -> str:
    """``supports`` when the whole interval lies on the expected side of 0, ``contradicts`` when it lies on the
    other side, else ``inconclusive`` (also without an interval: NaN bounds from a single seed)."""
    if expect not in ("positive", "negative"):
        raise ConfigError(f"expect must be 'positive' or 'negative', got {expect!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    sign = 1 if expect == "positive" else -1
    if sign * low > 0 and sign * high > 0:
        return "supports"
    if sign * low < 0 and sign * high < 0:
        return "contradicts"
    return "inconclusive"


def direction(low: float, high: float) -> str:
    """For a difference without a claim: ``higher`` / ``lower`` when the whole interval lies above / below 0,
    else ``no clear difference`` (also without an interval)."""
    if math.isfinite(low) and math.isfinite(high) and low > 0:
        return "higher"
    if math.isfinite(low) and math.isfinite(high) and high < 0:
        return "lower"
    return "no clear difference"


def noninferior(low: float, high: float, margin: float) -> str:
    """For a claim "at most a small loss" (a loss under ``margin``): ``supports`` when the whole interval lies
    above ``-margin``, ``contradicts`` when it lies below, else ``inconclusive`` (also without an interval).

    Example:
        >>> noninferior(-0.006, 0.003, 0.01), noninferior(-0.03, -0.02, 0.01), noninferior(-0.02, 0.0, 0.01)
        ('supports', 'contradicts', 'inconclusive')
    """
    if (isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating))
            or not math.isfinite(margin) or margin < 0):
        raise ConfigError(f"margin must be a finite number >= 0 (the largest loss the claim allows, e.g. 0.01), got "
                          f"{margin!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > -margin:
        return "supports"
    if high < -margin:
        return "contradicts"
    return "inconclusive"


def finding(label: str, diff: float, low: float, high: float, n: int, expect: str | None = "positive",
            scale: float = 100.0, unit: str = "points", margin: float | None = None,
            confidence: float = CONFIDENCE) -> str:
    """One line: ``"P3B − uniform at 90 %: +1.8 points, 95 % CI [+0.9, +2.7], 5 seeds — supports"``.

    ``expect=None``: a difference without a claim, ending in :func:`direction` instead of a verdict;
    ``margin``: the claim is "a loss under ``margin``" (:func:`noninferior`); ``confidence``: that of the interval,
    as the line states it. Without an interval (one seed) or without a difference (no seed in common) the line says
    so instead of printing NaN.

    Example:
        >>> finding("A − B", 0.01, math.nan, math.nan, 1)
        'A − B: +1.00 points, no interval (1 seed) — inconclusive'
    """
    _check_confidence(confidence)
    if margin is not None:
        word = noninferior(low, high, margin)
    else:
        word = direction(low, high) if expect is None else verdict(low, high, expect)
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if not math.isfinite(diff):  # no seed in common (or only unmeasured ones): there is no difference to print
        return f"{label}: no difference measured ({seeds}) — {word}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{label}: {diff * scale:+.2f} {unit}, no interval ({seeds}) — {word}"
    return (f"{label}: {diff * scale:+.2f} {unit}, {confidence_label(confidence)} CI [{low * scale:+.2f}, "
            f"{high * scale:+.2f}], {seeds} — {word}")


def confidence_label(confidence: float) -> str:
    """``0.95`` as ``"95 %"``, ``0.995`` as ``"99.5 %"``: how a line or a figure names an interval's confidence.

    Example:
        >>> confidence_label(0.95), confidence_label(0.995)
        ('95 %', '99.5 %')
    """
    return f"{confidence * 100:.4g} %"


def findings_from(diffs: pd.DataFrame, setting: str = "prune_ratio", method: str = "method",
                  expect: str = "positive", names: dict[str, str] | None = None,
                  confidence: float | None = None) -> list[str]:
    """:func:`finding` for every row of :func:`paired_differences`; the lines state the confidence the intervals
    were computed with (``confidence``, else the table's ``attrs["confidence"]``, else 95 %). Differences of an
    accuracy or another share (the table's ``attrs["value"]``, :data:`FRACTIONS`) read in points, those of any
    other value (a loss) as they are, named by the value.

    Example:
        >>> t = pd.DataFrame({"method": ["a", "a", "b", "b"], "prune_ratio": 0.5, "seed": [0, 1, 0, 1],
        ...                   "loss": [0.5, 0.7, 0.3, 0.4]})
        >>> findings_from(paired_differences(t, "b", value="loss"))[0].split(",")[0]
        'a − b at 50 %: +0.25 loss'
    """
    names = names or {}
    if confidence is None:
        confidence = diffs.attrs.get("confidence", CONFIDENCE)
    value = diffs.attrs.get("value", "acc")
    scale, unit = (100.0, "points") if in_percent(value) else (1.0, str(value))
    out = []
    for _, r in diffs.iterrows():
        label = (f"{names.get(r[method], r[method])} − {names.get(r['baseline'], r['baseline'])} at "
                 f"{r[setting] * 100:g} %")
        out.append(finding(label, r["diff"], r["low"], r["high"], int(r["n"]), expect, scale=scale, unit=unit,
                           confidence=confidence))
    return out


def in_percent(value: str) -> bool:
    """Whether a result column holds a share in [0, 1] that is shown in % (its differences in points): an
    accuracy (``acc``, ``acc_pruned``, ...) or one of :data:`FRACTIONS`; a loss or a latency is not.

    Example:
        >>> in_percent("acc_best"), in_percent("achieved_ratio"), in_percent("loss")
        (True, True, False)
    """
    return is_accuracy(value) or value in FRACTIONS


def is_accuracy(value: str) -> bool:
    """Whether a result column holds an accuracy (``acc``, ``acc_pruned``, ``acc_best``, ...).

    Example:
        >>> is_accuracy("acc"), is_accuracy("achieved_ratio")
        (True, False)
    """
    return str(value).startswith("acc")


def warn_unmeasured(table: pd.DataFrame, where: str, value: str = "acc") -> None:
    """Warn (``RuntimeWarning``) when rows of ``table`` hold no finite ``value``: a mean over seeds leaves them
    out, so the warning names them (method, setting and seed where the table has those columns)."""
    values = pd.to_numeric(table[value], errors="coerce").to_numpy(dtype=float)
    bad = table[~np.isfinite(values)]
    if len(bad):
        keys = [c for c in bad.columns if c in ("method", "prune_ratio", "sparsity", "seed")]
        example = ", ".join(f"{k}={_plain(v)!r}" for k, v in bad.iloc[0][keys].items())
        example += ", ..." if len(bad) > 1 else ""
        warnings.warn(f"{where}: {len(bad)} of {len(table)} runs have no finite {value} ({example}); a NaN is left "
                      f"out of the means and the seed counts, an infinite value makes its mean infinite",
                      RuntimeWarning, stacklevel=3)


def _check_confidence(confidence: object) -> None:
    if (isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.integer, np.floating))
            or not 0 < confidence < 1):
        raise ConfigError(f"confidence must be a number in (0, 1) such as 0.95, got {confidence!r}")


def _number(value: object) -> float:
    """``value`` as a float; None or pandas' NA (a run that measured nothing) is NaN, anything else that is not a
    number is a :class:`ConfigError`."""
    if value is None or value is pd.NA:
        return math.nan
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"the values of an interval must be numbers (NaN or None for a run that measured nothing), "
                      f"got {value!r}")


def _numeric(table: pd.DataFrame, value: str) -> None:
    """Refuse a ``value`` column holding something other than numbers (NaN and None stand for unmeasured runs)."""
    for v in table[value]:
        try:
            _number(v)
        except ConfigError:
            raise ConfigError(f"column {value!r} of the result table must hold numbers (NaN or None for a run that "
                              f"measured nothing), got {v!r}") from None


def _keyed(table: pd.DataFrame, columns: Sequence[str]) -> None:
    """Refuse rows whose method, setting or seed is missing (NaN): grouping would drop them without a word."""
    for c in columns:
        missing = int(table[c].isna().sum())
        if missing:
            raise ConfigError(f"{missing} rows of the result table have no {c!r} (NaN); every run needs its method, "
                              f"setting and seed to be grouped and paired")


def _need(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"the result table has no column(s) {missing}; it has {list(table.columns)}")
