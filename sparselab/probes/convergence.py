"""Late convergence, measured: when does each block's benefit arrive, and does that moment grow with depth?

P3B's premise is that deep blocks gain benefit only late in fine-tuning. This module turns a History with block
benefit rows (``benefit_cls`` / ``benefit_patch``, written by :class:`~sparselab.probes.BlockBenefit` or P3B) into
numbers:

- the normalised profile at each moment: ΔΨ_k / max_j ΔΨ_j (the paper's plots);
- for each block, its *half-benefit moment*: the first recorded moment at which its normalised ΔΨ reaches half
  of its final normalised value (blocks whose final value is not positive have none);
- the Spearman rank correlation of that moment with depth (block index): positive means deeper blocks arrive
  later, as the paper says; near 0 or negative contradicts it.

Example:
    >>> from sparselab.history import History
    >>> h = History()
    >>> for step, values in ((1, [1.0, 0.1, 0.0]), (2, [1.0, 0.6, 0.1]), (3, [1.0, 0.9, 0.8])):
    ...     h.log_blocks("benefit_cls", dict(zip(["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn"], values)),
    ...                  step=step, epoch=0)
    >>> half_benefit_moments(h).moment.tolist()
    [1, 2, 3]
    >>> round(late_convergence(h)["rho"], 2)
    1.0
"""
from __future__ import annotations

import math

import pandas as pd

from ..errors import ConfigError
from ..history import select_run, sort_block_names

#: what a moment can be: the optimizer step or the epoch of the History's rows
MOMENTS = ("step", "epoch")


def _raw_profiles(history, metric: str, run: str | None, by: str) -> pd.DataFrame:
    """Moments × blocks of the recorded ΔΨ (rows in time order, columns in depth order)."""
    if not isinstance(by, str) or by not in MOMENTS:
        raise ConfigError(f"by must be one of {', '.join(MOMENTS)} (what a moment is), got {by!r}")
    rows = select_run(history, run)["blocks"]
    rows = rows[rows.metric == metric]
    if rows.empty:
        raise ConfigError(f"the History has no {metric!r} rows; record block benefit with sparselab.probes."
                          f"BlockBenefit (or P3B) first")
    table = _last_rows(rows, by).pivot(index=by, columns="block", values="value").sort_index()
    return table[sort_block_names(table.columns)]


def _last_rows(rows: pd.DataFrame, by: str) -> pd.DataFrame:
    """The row of each (moment, block) with the latest step (of rows at one step, the one logged last), whatever
    order the rows were logged in; a NaN there stays NaN rather than letting an earlier value stand in for it."""
    return rows.sort_values("step", kind="stable").drop_duplicates([by, "block"], keep="last")


def _last_moments(history, metric: str, run: str | None, by: str) -> pd.Series:
    """Block → the last moment it was recorded at (a NaN value counts as recorded)."""
    rows = select_run(history, run)["blocks"]
    return rows[rows.metric == metric].groupby("block")[by].max()


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    top = table.max(axis=1).where(lambda m: m > 0)
    return table.div(top, axis=0)


def normalised_profiles(history, metric: str = "benefit_cls", run: str | None = None,
                        by: str = "step") -> pd.DataFrame:
    """Moments × blocks of ΔΨ_k / max_j ΔΨ_j (rows in time order, columns in depth order; NaN at a moment where
    no block has a positive benefit). ``run`` picks one run of a History merged with ``History.concat`` (required
    when it holds several); ``by`` is ``step`` or ``epoch``."""
    return _normalise(_raw_profiles(history, metric, run, by))


def half_benefit_moments(history, metric: str = "benefit_cls", run: str | None = None,
                         by: str = "step") -> pd.DataFrame:
    """Per block: its depth index, final normalised benefit and the first moment it reached half of that.

    The final value is the one at the last moment the block was recorded (of a moment's rows, the one at the
    latest step); where no block had a positive benefit then, or the block's benefit there is NaN, it is NaN with
    no moment rather than taken from an earlier moment."""
    prof = _normalise(_raw_profiles(history, metric, run, by))
    last = _last_moments(history, metric, run, by)
    out = []
    for depth, block in enumerate(prof.columns):
        series = prof[block].dropna()
        final = float(prof.at[last[block], block])
        moment = None
        if final > 0:
            reached = series[series >= 0.5 * final]
            moment = reached.index[0] if len(reached) else None
        out.append({"block": block, "depth": depth, "kind": block.rsplit(".", 1)[-1], "final": final,
                    "moment": moment})
    return pd.DataFrame(out)


def late_convergence(history, metric: str = "benefit_cls", run: str | None = None, by: str = "step") -> dict:
    """``rho``: Spearman correlation of the half-benefit moment with depth (NaN when fewer than three blocks
    have one, or all moments are equal); ``blocks``: the per-block table."""
    from scipy.stats import spearmanr

    table = half_benefit_moments(history, metric, run, by)
    have = table.dropna(subset=["moment"])
    rho = math.nan
    if len(have) >= 3 and have.moment.nunique() > 1:
        rho = float(spearmanr(have.depth, have.moment.astype(float)).statistic)
    return {"rho": rho, "blocks": table, "metric": metric, "n_blocks": int(len(have))}


__all__ = ["normalised_profiles", "half_benefit_moments", "late_convergence"]
