"""The result files committed under ``docs/results/`` (the long CPU runs that notebooks show beside their own).

Example:
    >>> committed_results("no-such-file").empty
    True
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def committed_results(name: str) -> pd.DataFrame:
    """``docs/results/{name}.csv`` as a table (e.g. ``p3b_cpu-full``, ``art_cpu-full``); empty when it is not
    there (an installed package without the repository's docs)."""
    path = RESULTS / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()
