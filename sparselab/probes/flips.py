"""Mask flips of a P3B run: how often each block's gate elements were pruned (1 → 0) and reactivated (0 → 1).

P3B recomputes its masks from scratch at every update, so an element pruned early can come back; the History's
``events`` table records every such change. :func:`mask_flips` counts them per block.

Example:
    >>> from sparselab.history import History
    >>> h = History()
    >>> h.log_events(step=10, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[1, 2, 3], old=1, new=0)
    >>> h.log_events(step=20, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[2], old=0, new=1)
    >>> mask_flips(h).to_dict("index")
    {'blocks.0.mlp': {'pruned': 3, 'reactivated': 1}}
"""
from __future__ import annotations

import pandas as pd

FLIPS = {"pruned": (1, 0), "reactivated": (0, 1)}


def mask_flips(history, run: str | None = None) -> pd.DataFrame:
    """Per block with events (rows in depth order): the gate elements ``pruned`` (1 → 0) and ``reactivated``
    (0 → 1) over the whole run. ``history`` may be a History or the path of a saved one; ``run`` picks one run of
    a merged History. A History without events gives an empty table with both columns."""
    from ..history import as_history, select_run

    return flip_counts(select_run(as_history(history, "mask_flips"), run)["events"])


def flip_counts(events: pd.DataFrame) -> pd.DataFrame:
    """:func:`mask_flips` of an ``events`` table of one run (``History.events``, or what ``select_run`` gives); the
    events of a merged History's several runs are refused rather than summed per block.

    Example:
        >>> flip_counts(pd.DataFrame({"block": ["blocks.0.mlp"], "old": [0], "new": [1]})).reactivated.tolist()
        [1]
    """
    from ..errors import ConfigError
    from ..history import sort_block_names

    missing = [c for c in ("block", "old", "new") if c not in getattr(events, "columns", ())]
    if missing:
        raise ConfigError(f"flip_counts takes an events table (columns block, old, new, as History.events has "
                          f"them); got {type(events).__name__} without {', '.join(missing)}")
    runs = list(dict.fromkeys(events["run"].astype(str))) if "run" in events.columns else []
    if len(runs) > 1:
        # the same block of different runs would be summed into one count
        raise ConfigError(f"these events come from {len(runs)} runs ({', '.join(map(repr, runs[:5]))}) of a merged "
                          f"History; count one run with mask_flips(history, run=...) or "
                          f"sparselab.history.select_run(history, run)['events']")
    order = sort_block_names(events.block) if len(events) else []
    counts = {kind: events[(events.old == old) & (events.new == new)].groupby("block").size()
              .reindex(order, fill_value=0).astype(int) for kind, (old, new) in FLIPS.items()}
    table = pd.DataFrame(counts, index=pd.Index(order, name="block"), columns=list(FLIPS))
    return table.fillna(0).astype(int)
