"""What a notebook or experiment leaves in its output folder: the results table and the Histories of its runs.

Example:
    >>> import tempfile, pandas as pd
    >>> from sparselab.history import History
    >>> out = tempfile.mkdtemp()
    >>> paths = save_run_files(out, pd.DataFrame({"acc": [0.9]}), [History(meta={"run": "a"})])
    >>> sorted(paths), History.load(paths["histories"]).meta["run"]
    (['histories', 'table'], 'a')
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..atomic import atomic_write
from ..errors import ConfigError
from ..history import History

TABLE_FILE = "results.csv"
HISTORIES_FILE = "histories.jsonl.gz"


def save_run_files(out_dir: str | Path, table: pd.DataFrame | None = None, histories: Sequence[History] = (),
                   runs: Sequence[str] | None = None) -> dict[str, str]:
    """Write ``table`` as ``results.csv`` and ``histories`` as ``histories.jsonl.gz`` under ``out_dir`` (created),
    each atomically; returns the paths written by kind (``table``, ``histories``).

    One History without ``runs`` is saved as it is; several are merged with :meth:`History.concat` under the
    names ``runs`` (default: each History's ``meta['run']``, which must then be distinct). A ``results.csv`` or
    ``histories.jsonl.gz`` that an earlier call left in ``out_dir`` and this call does not write (no table, no
    Histories) is removed, so that the folder never pairs this call's table with another call's Histories.

    Raises:
        ConfigError: ``out_dir`` is an existing file, or the run names are not one distinct name per History
            (names given without any History included).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {str(out)!r} is a file; give a folder for the results")
    histories = list(histories)
    if not histories and runs is not None and len(runs):
        # without this, the names would be dropped and an earlier call's Histories file removed without a word
        raise ConfigError(f"runs gives {len(runs)} run name(s) ({', '.join(map(repr, list(runs)[:5]))}) but no "
                          f"History was given: pass one History per name, or leave runs out")
    merged = None
    if histories:  # checked before anything is written
        merged = histories[0] if len(histories) == 1 and runs is None else History.concat(histories, runs)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    if table is not None:
        paths["table"] = str(atomic_write(out / TABLE_FILE, lambda tmp: table.to_csv(tmp, index=False)))
    if merged is not None:
        paths["histories"] = str(merged.save(out / HISTORIES_FILE))
    for kind, name in (("table", TABLE_FILE), ("histories", HISTORIES_FILE)):
        if kind not in paths and (out / name).is_file():
            (out / name).unlink()
    return paths
