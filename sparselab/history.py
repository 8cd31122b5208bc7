"""History: the one data product of a run, as tidy long-format tables.

Schema (every table also gets a ``run`` column when histories are merged with :meth:`History.concat`):

=========  ===========================================================================================
table      columns
=========  ===========================================================================================
metrics    step (int, optimizer steps done), epoch (int, 0-based; ``epoch`` of an end-of-epoch row is the
           epoch just finished), split (``train``/``val``/``test``), name (str), value (float)
blocks     step, epoch, block (str, e.g. ``blocks.3.attn`` or a layer name), metric (str), value (float)
events     step, epoch, block, gate (str), element (int), old (int), new (int) — a mask element whose hard
           state changed; 0 = pruned, 1 = kept (so ``old=0, new=1`` is a reactivation)
=========  ===========================================================================================

``meta`` is a free-form JSON-serialisable dict (run name, configuration).

Saved as JSON Lines (optionally gzip-compressed): a header line ``{"schema": ..., "meta": ...}`` then one
object per row with a ``table`` key.

Example:
    >>> h = History(meta={"run": "demo"})
    >>> h.log_metrics({"loss": 0.5, "acc": 0.9}, step=10, epoch=0, split="val")
    >>> h.log_events(step=10, epoch=0, block="blocks.0.mlp", gate="mlp_hid", elements=[3, 7], old=0, new=1)
    >>> h.metrics.pivot_table(index="step", columns="name", values="value").round(2).to_dict("records")
    [{'acc': 0.9, 'loss': 0.5}]
    >>> len(h.events)
    2
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import operator
import re
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .atomic import atomic_write
from .errors import CheckpointError, ConfigError

SCHEMA = "sparselab.history/1"
COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("step", "epoch", "split", "name", "value"),
    "blocks": ("step", "epoch", "block", "metric", "value"),
    "events": ("step", "epoch", "block", "gate", "element", "old", "new"),
}
SPLITS = ("train", "val", "test")


class History:
    """Tidy tables of everything a run measured; see the module docstring for the schema."""

    def __init__(self, meta: Mapping[str, Any] | None = None):
        self.meta: dict[str, Any] = dict(meta or {})
        self._rows: dict[str, list[tuple]] = {t: [] for t in COLUMNS}
        self._run: dict[str, list[str]] | None = None  # set by concat

    # ------------------------------------------------------------------ logging
    def log_metric(self, name: str, value: float, *, step: int, epoch: int, split: str = "train") -> None:
        """Record one scalar."""
        self.log_metrics({name: value}, step=step, epoch=epoch, split=split)

    def log_metrics(self, values: Mapping[str, float], *, step: int, epoch: int, split: str = "train") -> None:
        """Record several scalars of one moment (all of them, or none when one is not a number)."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        s, e = _whole("step", step), _whole("epoch", epoch)
        rows = [(s, e, split, str(name), _number(f"metric {name!r}", value)) for name, value in values.items()]
        self._rows["metrics"].extend(rows)

    def log_blocks(self, metric: str, values: Mapping[str, float], *, step: int, epoch: int) -> None:
        """Record one value per block (or layer) for ``metric`` (all of them, or none when one is not a number)."""
        s, e = _whole("step", step), _whole("epoch", epoch)
        rows = [(s, e, str(block), str(metric), _number(f"{metric} of {block!r}", value))
                for block, value in values.items()]
        self._rows["blocks"].extend(rows)

    def log_events(self, *, step: int, epoch: int, block: str, gate: str, elements: Iterable[int], old: int,
                   new: int) -> None:
        """Record mask elements of one gate whose hard state went from ``old`` to ``new`` (0 pruned, 1 kept)."""
        s, e, b, g = _whole("step", step), _whole("epoch", epoch), str(block), str(gate)
        o, n = _whole("old", old), _whole("new", new)
        if o not in (0, 1) or n not in (0, 1):
            raise ConfigError(f"old and new must be 0 (pruned) or 1 (kept), got old={old!r}, new={new!r}")
        rows = [(s, e, b, g, int(el), o, n) for el in elements]
        self._rows["events"].extend(rows)

    # ------------------------------------------------------------------ views
    def table(self, name: str) -> pd.DataFrame:
        """One table as a DataFrame (``metrics``, ``blocks`` or ``events``)."""
        if name not in COLUMNS:
            raise ConfigError(f"table must be one of {tuple(COLUMNS)}, got {name!r}")
        df = pd.DataFrame(self._rows[name], columns=list(COLUMNS[name]))
        if self._run is not None:
            df.insert(0, "run", self._run[name])
        return df

    @property
    def metrics(self) -> pd.DataFrame:
        return self.table("metrics")

    @property
    def blocks(self) -> pd.DataFrame:
        return self.table("blocks")

    @property
    def events(self) -> pd.DataFrame:
        return self.table("events")

    def to_pandas(self) -> dict[str, pd.DataFrame]:
        """All tables as DataFrames, keyed by table name."""
        return {name: self.table(name) for name in COLUMNS}

    def last(self, name: str, split: str = "val", default: float = math.nan) -> float:
        """The value of metric ``name`` on ``split`` at the latest step (of a History holding one run); of rows at
        the same step, the one logged later. ``default`` when the metric was never logged.

        Rows logged after later steps (ART logs ``overlap_final`` for earlier epochs at the end) do not count as
        the last. A History that a second :func:`~sparselab.training.fit` appends to restarts at step 0, so
        give each fit its own History to read its last value.

        Example:
            >>> h = History()
            >>> h.log_metric("acc", 0.9, step=20, epoch=1, split="test")
            >>> h.log_metric("acc", 0.5, step=10, epoch=0, split="test")  # logged late, for an earlier step
            >>> h.last("acc", "test")
            0.9
        """
        self._check_one_run("last")
        found: int | None = None
        value = default
        for row in self._rows["metrics"]:
            if row[3] == name and row[2] == split and (found is None or row[0] >= found):
                found, value = row[0], row[4]
        return value

    def series(self, name: str, split: str = "val") -> pd.Series:
        """Metric ``name`` on ``split`` indexed by step in ascending order (of a History holding one run); rows
        of the same step keep the order they were logged in.

        Example:
            >>> h = History()
            >>> for step, loss in [(20, 0.4), (10, 0.6)]:
            ...     h.log_metric("loss", loss, step=step, epoch=0)
            >>> h.series("loss", "train").to_dict()
            {10: 0.6, 20: 0.4}
        """
        self._check_one_run("series")
        df = self.metrics
        df = df[(df.name == name) & (df.split == split)].sort_values("step", kind="stable")
        return pd.Series(df.value.to_numpy(), index=df.step.to_numpy(), name=f"{split}/{name}")

    def _check_one_run(self, what: str) -> None:
        runs = list(dict.fromkeys(self._run["metrics"])) if self._run is not None else []
        if len(runs) > 1:
            raise ConfigError(f"History.{what} reads one run, but this History merges {len(runs)} runs "
                              f"({', '.join(map(repr, runs[:5]))}); take one with "
                              f"sparselab.history.select_run(history, run)")

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def __eq__(self, other: object) -> bool:
        # NaN counts as equal to NaN: a History that logged a NaN (ART's first-epoch exchange) equals its copy
        return (isinstance(other, History) and _same(self.meta, other.meta) and _same(self._rows, other._rows)
                and self._run == other._run)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._rows.items())
        return f"History({sizes}, meta keys={sorted(self.meta)})"

    # ------------------------------------------------------------------ merging
    @classmethod
    def concat(cls, histories: Sequence["History"], runs: Sequence[str] | None = None) -> "History":
        """Merge runs into one History whose tables carry a ``run`` column (names from ``runs``, else each
        History's ``meta['run']``, else its position)."""
        histories = list(histories)
        wrong = [f"{i} ({type(h).__name__})" for i, h in enumerate(histories) if not isinstance(h, History)]
        if wrong:
            raise ConfigError(f"History.concat merges History objects; got something else at position(s) "
                              f"{', '.join(wrong[:5])} (load a saved one with History.load)")
        if runs is None:
            runs = [h.meta.get("run", i) for i, h in enumerate(histories)]
        runs = [str(r) for r in runs]  # names are strings, as a saved History gives them back
        if len(runs) != len(histories) or len(set(runs)) != len(runs):
            raise ConfigError(f"need one distinct run name per history, got {list(runs)}")
        # a merged History keeps its own run names: each must name one run of the result
        owner: dict[str, str] = {}
        for run, h in zip(runs, histories):
            for name in (dict.fromkeys(n for t in COLUMNS for n in h._run[t]) if h._run is not None else [run]):
                if name in owner:
                    raise ConfigError(f"run {name!r} of {run!r} is also a run of {owner[name]!r}; the merged History "
                                      f"would mix their rows under one name (rename the runs before merging)")
                owner[name] = run
        out = cls(meta={"runs": {r: copy.deepcopy(h.meta) for r, h in zip(runs, histories)}})
        out._run = {t: [] for t in COLUMNS}
        for run, h in zip(runs, histories):
            for t in COLUMNS:
                out._rows[t].extend(h._rows[t])
                out._run[t].extend(h._run[t] if h._run is not None else [run] * len(h._rows[t]))
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "meta": self.meta, "rows": {k: list(v) for k, v in self._rows.items()},
                "run": self._run}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this History's contents in place (used when a run resumes from a checkpoint)."""
        if not isinstance(state, Mapping) or state.get("schema") != SCHEMA:
            schema = state.get("schema") if isinstance(state, Mapping) else None
            raise CheckpointError(f"not a sparselab History (schema {schema!r}, expected {SCHEMA!r})")
        rows = state.get("rows")
        if not isinstance(state.get("meta"), Mapping) or not isinstance(rows, Mapping) or set(COLUMNS) - set(rows):
            raise CheckpointError(f"a damaged sparselab History state: it needs 'meta' and 'rows' with the tables "
                                  f"{', '.join(COLUMNS)}")
        self.meta = dict(state["meta"])
        self._rows = {k: [tuple(r) for r in state["rows"][k]] for k in COLUMNS}
        self._run = {k: list(v) for k, v in state["run"].items()} if state.get("run") else None

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "History":
        h = cls()
        h.load_state_dict(state)
        return h

    def save(self, path: str | Path) -> Path:
        """Write JSON Lines (gzip when the name ends in ``.gz``) atomically; returns the path.

        ``meta`` must be what JSON carries back unchanged, so that :meth:`load` returns an equal History: numpy
        scalars are written as numbers, tuples as lists, and a key that is not a string is refused (JSON would
        turn ``0`` into ``"0"``).
        """
        meta = _json_meta(self.meta, "meta")
        opener = gzip.open if Path(path).suffix == ".gz" else open

        def write(tmp: str) -> None:
            with opener(tmp, "wt", encoding="utf-8") as f:
                header = {"schema": SCHEMA, "meta": meta, **({"run_column": True} if self._run is not None else {})}
                f.write(json.dumps(header) + "\n")
                for table, cols in COLUMNS.items():
                    runs = self._run[table] if self._run is not None else None
                    for i, row in enumerate(self._rows[table]):
                        obj = {"table": table, **dict(zip(cols, row))}
                        if runs is not None:
                            obj["run"] = runs[i]
                        f.write(json.dumps(obj) + "\n")

        path = atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "History":
        """Read a History written by :meth:`save` (gzip-compressed or not, whatever the name says).

        Anything else — another file type, a truncated or damaged file, a row missing a field — raises
        :class:`~sparselab.errors.CheckpointError` naming the file (and the line).
        """
        path = Path(path)
        if not path.is_file() or path.stat().st_size == 0:
            what = "is empty" if path.is_file() else ("is a folder" if path.is_dir() else "does not exist")
            raise CheckpointError(f"history file {path} {what}: expected a History written by sparselab "
                                  f"(History.save, e.g. history.jsonl.gz)")
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        line_no = 0
        try:
            with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8") as f:
                line_no = 1
                header = _json_line(f.readline(), path, line_no)
                if not isinstance(header, dict) or header.get("schema") != SCHEMA:
                    schema = header.get("schema") if isinstance(header, dict) else None
                    raise CheckpointError(f"{path} is not a sparselab History (schema {schema!r}, expected "
                                          f"{SCHEMA!r})")
                meta = header.get("meta", {})
                if not isinstance(meta, dict):
                    raise CheckpointError(f"{path} is not a sparselab History: its header's meta is not an object")
                h = cls(meta)
                if header.get("run_column"):  # a merged History keeps its run column even without rows
                    h._run = {t: [] for t in COLUMNS}
                for line_no, line in enumerate(f, start=2):
                    if not line.strip():
                        continue
                    obj = _json_line(line, path, line_no)
                    table = obj.get("table") if isinstance(obj, dict) else None
                    if table not in COLUMNS:
                        raise CheckpointError(f"{path}, line {line_no}: not a History row (its 'table' must be one "
                                              f"of {tuple(COLUMNS)}, got {table!r})")
                    missing = [c for c in COLUMNS[table] if c not in obj]
                    if missing:
                        raise CheckpointError(f"{path}, line {line_no}: a {table!r} row lacks "
                                              f"{', '.join(map(repr, missing))} (a row has "
                                              f"{', '.join(COLUMNS[table])})")
                    row = _loaded_row(table, obj, path, line_no)
                    if "run" in obj:
                        if h._run is None:
                            if len(h):
                                raise CheckpointError(f"{path}, line {line_no}: some rows name their run and earlier "
                                                      f"ones do not")
                            h._run = {t: [] for t in COLUMNS}
                        h._run[table].append(str(obj["run"]))  # run names are strings, as concat makes them
                    elif h._run is not None:
                        raise CheckpointError(f"{path}, line {line_no}: this row names no run, earlier ones do")
                    h._rows[table].append(row)
        except CheckpointError:
            raise
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
            where = f", line {line_no}" if line_no else ""
            kind = "a truncated or damaged gzip file" if gzipped else "not a text file"
            raise CheckpointError(f"{path}{where} cannot be read as a sparselab History: {kind} "
                                  f"({type(exc).__name__}: {exc})") from None
        return h


def _loaded_row(table: str, obj: Mapping[str, Any], path: Path, line_no: int) -> tuple:
    """One row of a saved History with the types the logging methods give it (whole steps, epochs and elements,
    number values, a known split, text names); a field of another kind is a :class:`CheckpointError` naming the
    file and line, rather than a row that reads back as text where a number belongs."""
    row = []
    for column in COLUMNS[table]:
        value = obj[column]
        if column in ("step", "epoch", "element", "old", "new"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif column == "value":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif column == "split":
            ok = value in SPLITS
        else:
            ok = isinstance(value, str)
        if ok and column in ("old", "new"):
            ok = value in (0, 1)
        if not ok:
            allowed = {"step": "a whole number", "epoch": "a whole number", "element": "a whole number",
                       "old": "0 or 1", "new": "0 or 1", "value": "a number", "split": f"one of {SPLITS}"}
            raise CheckpointError(f"{path}, line {line_no}: a {table!r} row's {column!r} must be "
                                  f"{allowed.get(column, 'text')}, got {value!r} (a damaged or edited file)")
        row.append(value)
    return tuple(row)


def _whole(name: str, value: Any) -> int:
    """``value`` as an int when it is a whole number (an int, a numpy or tensor integer, a float such as 3.0)."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    if not isinstance(value, (str, bytes)):
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            number = math.nan
        if number.is_integer():
            return int(number)
    raise ConfigError(f"{name} must be a whole number, got {value!r}")


def _number(name: str, value: Any) -> float:
    """``value`` as a float (NaN and ±inf included: a History records what was measured)."""
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ConfigError(f"{name} must be a number, got {value!r}")


def _json_line(line: str, path: Path, line_no: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}, line {line_no}: not a sparselab History (not JSON: {exc.msg})") from None


def _same(a: Any, b: Any) -> bool:
    """Equality of nested dicts, lists and tuples of values, where NaN equals NaN and a tuple equals the list
    JSON gives back for it."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _json_meta(value: Any, where: str) -> Any:
    """``value`` with numpy scalars as Python numbers and tuples as lists; a non-string key or a value JSON cannot
    hold is a :class:`ConfigError` naming where it sits."""
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"History.meta cannot be saved: {where} has the key {bad[0]!r}, which is not a string "
                              f"(JSON would give it back as {str(bad[0])!r}); use string keys")
        return {k: _json_meta(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_meta(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ConfigError(f"History.meta cannot be saved: {where} is a {type(value).__name__} ({value!r}); meta holds "
                      f"strings, numbers, booleans, None, lists and dicts")


def json_form(value: Any, nonfinite_as_text: bool = False) -> Any:
    """``value`` in a form JSON holds: dict keys as strings, tuples as lists, tensors, numpy arrays and scalars as
    numbers or lists, anything else as its ``repr``; ``nonfinite_as_text`` writes NaN and ±inf as text too (for a
    file that must be strict JSON).

    Example:
        >>> json_form({1: (0.5, float("nan")), "f": len}, nonfinite_as_text=True)
        {'1': [0.5, 'nan'], 'f': '<built-in function len>'}
    """
    if isinstance(value, dict):
        return {str(k): json_form(v, nonfinite_as_text) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_form(v, nonfinite_as_text) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return repr(value) if nonfinite_as_text and not math.isfinite(value) else value
    if hasattr(value, "tolist"):  # a tensor, a numpy array or scalar
        return json_form(value.tolist(), nonfinite_as_text)
    return repr(value)


def as_history(history: "History | str | Path", what: str) -> "History":
    """``history`` itself, or the History saved at that path; anything else is a :class:`ConfigError` saying what
    ``what`` (e.g. ``"plot_block_benefit"``) takes.

    Example:
        >>> as_history(History(), "a plot") == History()
        True
    """
    if isinstance(history, History):
        return history
    if isinstance(history, (str, Path)):
        return History.load(history)
    raise ConfigError(f"{what} takes a sparselab History (or the path of a saved one), got "
                      f"{type(history).__name__}")


# ------------------------------------------------------------------ block names and runs of a History
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(attn|mlp)$")
_KINDS = ("attn", "mlp")


def _parse(name: str) -> tuple[int, str] | None:
    m = _BLOCK_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def sort_block_names(names: Iterable[str]) -> list[str]:
    """Unique block names in depth order: layer number compared numerically, ``attn`` before ``mlp`` of the same
    layer; names that are not ``blocks.{layer}.{attn|mlp}`` follow in natural order.

    Example:
        >>> sort_block_names(["blocks.1.mlp", "head", "blocks.1.attn", "blocks.0.mlp"])
        ['blocks.0.mlp', 'blocks.1.attn', 'blocks.1.mlp', 'head']
    """
    def key(name: str) -> tuple:
        p = _parse(name)
        return (0, p[0], _KINDS.index(p[1])) if p else (1, _natural_key(name))

    return sorted(set(names), key=key)


def _run_names(tables: dict[str, pd.DataFrame]) -> list[str]:
    names: list[str] = []
    for df in tables.values():
        if "run" in df.columns:
            names.extend(df["run"].astype(str).unique().tolist())
    return list(dict.fromkeys(names))


def select_run(history: History, run: str | None = None) -> dict[str, pd.DataFrame]:
    """The ``metrics``, ``blocks`` and ``events`` tables of one run, without a ``run`` column.

    For a History merged with :meth:`History.concat`, ``run`` names the run (it may be left out when the History
    holds a single run). For a single-run History, ``run`` must be None or equal ``history.meta['run']``.

    Example:
        >>> a, b = History(meta={"run": "a"}), History(meta={"run": "b"})
        >>> b.log_blocks("keep_applied", {"blocks.0.attn": 0.5}, step=3, epoch=0)
        >>> select_run(History.concat([a, b]), "b")["blocks"].step.tolist()
        [3]
    """
    tables = history.to_pandas()
    if "run" not in tables["blocks"].columns:
        own = history.meta.get("run")
        if run is not None and str(run) != str(own):
            label = f"run {own!r}" if own is not None else "one run without a name"
            raise ConfigError(f"run={run!r} was given, but this History holds {label}; run= selects one run of a "
                              f"History merged with History.concat")
        return tables
    runs = _run_names(tables)
    if run is None:
        if len(runs) > 1:
            raise ConfigError(f"this History merges {len(runs)} runs ({', '.join(map(repr, runs))}); pass run= "
                              f"to choose one of them")
        run = runs[0] if runs else None
    elif str(run) not in runs:
        raise ConfigError(f"unknown run {run!r}; this History holds the runs: "
                          f"{', '.join(map(repr, runs)) or 'none'}")
    out = {}
    for name, df in tables.items():
        if run is not None:
            df = df[df["run"].astype(str) == str(run)]
        out[name] = df.drop(columns="run").reset_index(drop=True)
    return out
