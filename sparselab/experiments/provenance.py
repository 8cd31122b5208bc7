"""Which code recorded a result row: the rows a comparison writes to its record carry a ``code`` column, the git
commit of the checkout that ran them (``+modified`` when the package's files differed from it) or, outside a
checkout, the package version. A record continued by other code, and a report over rows of several versions, say
so: a paired difference between rows of two versions mixes what the methods do with what the code changed.

Example:
    >>> import pandas as pd
    >>> versions_note(pd.DataFrame({"code": ["1a2b3c4d5e6f", "1a2b3c4d5e6f"]}))
    'recorded by code 1a2b3c4d5e6f'
    >>> versions_note(pd.DataFrame({"acc": [0.9]}))
    'code version not recorded'
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
#: the column of a result record that names the code that ran the row
CODE_COLUMN = "code"
NOT_RECORDED = "not recorded"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code this process runs: the ``git`` commit (12 hex digits) of the checkout sparselab is imported
    from, with ``+modified`` when files under ``sparselab/`` differ from it (changed, or new and not ignored);
    ``sparselab X.Y.Z`` for an installed package. Read once per process, so a long comparison keeps naming the
    code it started with even when the checkout moves on under it."""
    from .. import __version__

    if (ROOT / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], check=True,
                                    capture_output=True, text=True, timeout=10).stdout.strip()
            changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "sparselab"],
                                     check=True, capture_output=True, text=True, timeout=10).stdout.strip()
            if commit:
                return commit + ("+modified" if changed else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"sparselab {__version__}"


def row_versions(table: pd.DataFrame) -> dict[str, int]:
    """Rows per code version, in order of appearance; rows without one count under ``"not recorded"``."""
    if table.empty:
        return {}
    if CODE_COLUMN not in table.columns:
        return {NOT_RECORDED: len(table)}
    values = table[CODE_COLUMN].astype(object).where(table[CODE_COLUMN].notna(), NOT_RECORDED).astype(str)
    return {str(v): int(n) for v, n in values.value_counts(sort=False).items()}


def versions_note(table: pd.DataFrame) -> str:
    """One phrase for a report: the single version that recorded ``table``, or the versions its rows mix."""
    counts = row_versions(table)
    if not counts or list(counts) == [NOT_RECORDED]:
        return "code version not recorded"
    if len(counts) == 1:
        return f"recorded by code {next(iter(counts))}"
    return (f"rows of {len(counts)} code versions: {_listed(counts)}; paired differences across versions mix code "
            f"changes in")


def other_versions(table: pd.DataFrame, current: str | None = None) -> dict[str, int]:
    """The rows of ``table`` recorded by code other than ``current`` (default: :func:`code_version`)."""
    current = code_version() if current is None else current
    return {v: n for v, n in row_versions(table).items() if v != current}


def warn_other_code(path, table: pd.DataFrame, consequence: str, stacklevel: int = 2) -> None:
    """Warn (``RuntimeWarning``) when ``table``, read from ``path``, holds rows that other code recorded;
    ``consequence`` says what continuing it means.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_other_code("t.csv", pd.DataFrame({"acc": [0.9]}), "its rows stay")
        >>> "not recorded (1 rows); its rows stay" in str(caught[0].message)
        True
    """
    import warnings

    others = other_versions(table)
    if others:
        warnings.warn(f"{path} holds rows recorded by other code than this ({code_version()}): "
                      f"{_listed(others)}; {consequence}", RuntimeWarning, stacklevel=stacklevel + 1)


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} ({n} rows)" for v, n in counts.items())
