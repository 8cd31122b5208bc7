"""The README's results section, written from the committed result files in ``docs/results/`` (nothing typed by
hand: ``scripts/results_report.py`` rewrites the section and its PNG figures, a test checks the README matches).

Example:
    >>> text = results_markdown()
    >>> text.startswith("## Results on this machine")
    True
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from ..atomic import atomic_write
from ..errors import ConfigError
from ..stats import mean_ci, paired_against_all, refuse_repeated_runs
from .committed import RESULTS, committed_results
from .diagnosis import diagnosis_summary
from .findings import art_findings, late_convergence_findings, p3b_findings
from .provenance import versions_note
from .selection import RULE, qualified

START, END = "<!-- results:start -->", "<!-- results:end -->"
FIGURES = "docs/results/figures"
#: the columns the section reads from each result file (a file without one of them is refused by name)
COLUMNS = {
    "setting_selection": ("candidate", "data", "dense_mean", "dense_std", "uniform_mean", "loss", "loss_low",
                          "loss_high", "qualifies"),
    "p3b_cpu-full": ("method", "prune_ratio", "seed", "acc"),
    "p3b_cpu-full_diagnosis": ("method", "prune_ratio", "seed", "acc", "baseline"),
    "late_convergence": ("preset", "seed", "cls", "patch"),
    "art_cpu-full": ("method", "sparsity", "seed", "acc"),
}


def _table(results: Callable[[str], pd.DataFrame], name: str) -> pd.DataFrame:
    """``results(name)``, refused with the columns it lacks when it is not empty but misses one the section
    reads."""
    table = results(name)
    missing = [c for c in COLUMNS[name] if c not in table.columns] if len(table) else []
    if missing:
        raise ConfigError(f"the result file {name!r} has no column(s) {', '.join(map(repr, missing))}; the results "
                          f"section reads {', '.join(COLUMNS[name])} (it has {', '.join(map(str, table.columns))})")
    return table


def _cell(values: pd.Series) -> str:
    mean, low, high, n = mean_ci(values * 100)
    if n == 0:  # every run of this cell measured nothing (NaN): no number, and no seed behind one
        return "not measured"
    if n < 2:
        return f"{mean:.1f} (1 seed)"
    return f"{mean:.1f} ± {(high - low) / 2:.1f}"


def _matrix(table: pd.DataFrame, setting: str, names: dict[str, str] | None = None) -> str:
    settings = sorted(s for s in table[setting].unique() if s > 0)
    header = "| method | " + " | ".join(f"{s * 100:g} %" for s in settings) + " |"
    lines = [header, "|---|" + "---|" * len(settings)]
    for method in dict.fromkeys(table.method):
        at = table[table.method == method]
        # dense fine-tuning's cell is over all its rows, whatever their setting
        refuse_repeated_runs(at[at.seed.notna()], "the result table", "a mean over seeds",
                             setting=None if method == "dense" else setting)
        if method == "dense":
            cells = [_cell(at.acc)] * len(settings)
        else:
            cells = [_cell(at[at[setting] == s].acc) if (at[setting] == s).any() else "—" for s in settings]
        lines.append(f"| {(names or {}).get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seeds(table: pd.DataFrame) -> str:
    """``N seeds``: the number of seeds measured per method (a range where methods differ), and how many more were
    run but not measured. A seed counts as measured for a method only when every run of it has a finite accuracy;
    a diverged or unmeasured (NaN) run would otherwise let the heading claim seeds that no number stands on.

    Example:
        >>> _seeds(pd.DataFrame({"method": ["a"] * 3, "seed": [0, 1, 2], "acc": [0.5, 0.6, float("nan")]}))
        '2 seeds (1 more not measured)'
    """
    finite = pd.to_numeric(table.acc, errors="coerce").map(math.isfinite)
    run = table.groupby("method").seed.nunique()
    unmeasured = table[~finite].groupby("method").seed.nunique().reindex(run.index, fill_value=0)
    measured = run - unmeasured
    text = (f"{measured.min()}" if measured.min() == measured.max() else f"{measured.min()}–{measured.max()}"
            ) + " seeds"
    if unmeasured.max() == 0:
        return text
    more = f"{unmeasured.max()}" if unmeasured.min() == unmeasured.max() else f"up to {unmeasured.max()}"
    return f"{text} ({more} more not measured)"


def _finite(value: object) -> float | None:
    """``value`` as a float, or None where it is no finite number (a diverged or unmeasured run, an empty cell)."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(number) if math.isfinite(number) else None


def _spread(mean: object, spread: tuple, digits: int, text: Callable[..., str], without: str) -> str:
    """A share and its spread (a std, or the bounds of an interval), in percent, as ``text`` writes them:
    ``not measured`` without a finite share, ``(without)`` in place of a missing spread (one seed has no
    standard deviation or interval)."""
    m, s = _finite(mean), [_finite(v) for v in spread]
    if m is None:
        return "not measured"
    if None in s:
        return f"{m * 100:.{digits}f} ({without})"
    return text(m * 100, *(v * 100 for v in s))


def _recorded(selection: pd.DataFrame, column: str, default: float, scale: float = 1.0) -> str:
    """The value(s) of a rule threshold the selection rows recorded (``default``, the rule's, where no row has
    the column), scaled and joined by " / " where rows differ."""
    values = selection[column].dropna().unique().tolist() if column in selection.columns else []
    return " / ".join(f"{float(v) * scale:g}" for v in (values or [default]))


def _selection_rule(selection: pd.DataFrame) -> str:
    return (f"over ≥ {RULE.min_seeds} seeds, uniform allocation at {_recorded(selection, 'ratio', 0.9, 100)} % "
            f"must lose ≥ {_recorded(selection, 'min_loss', RULE.min_loss, 100)} points against dense fine-tuning "
            f"while dense fine-tuning's seed std stays below "
            f"{_recorded(selection, 'max_dense_std', RULE.max_dense_std, 100)} points")


def _selection(selection: pd.DataFrame) -> str:
    lines = ["| candidate | target | dense (%) ± std | uniform (%) | loss (points) [95 % CI] | qualifies |",
             "|---|---|---|---|---|---|"]
    for (_, r), qualifies in zip(selection.iterrows(), qualified(selection)):
        dense = _spread(r.dense_mean, (r.dense_std,), 2, lambda m, s: f"{m:.2f} ± {s:.2f}", "no std")
        uniform = _finite(r.uniform_mean)
        loss = _spread(r.loss, (r.loss_low, r.loss_high), 1, lambda m, lo, hi: f"{m:.1f} [{lo:.1f}, {hi:.1f}]",
                       "no interval")
        at = f" at {float(r.ratio) * 100:g} %" if "ratio" in selection.columns and pd.notna(r.ratio) else ""
        lines.append(f"| `{r.candidate}` | {r.data} | {dense} | "
                     f"{'not measured' if uniform is None else f'{uniform * 100:.2f}{at}'} | {loss} | "
                     f"{'**yes**' if qualifies else 'no'} |")
    return "\n".join(lines)


def _paired_link(table: pd.DataFrame, method: str, setting: str, link: str) -> list[str]:
    """The paired-differences figure's link, where :func:`result_figures` draws one (some pair to show)."""
    return [link, ""] if len(paired_against_all(table, method, setting=setting)) else []


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def results_markdown(results: Callable[[str], pd.DataFrame] = committed_results,
                     figures: str = FIGURES) -> str:
    """The section, from ``results(name)`` tables (default: the committed files)."""
    from .findings import P3B_NAMES

    parts = ["## Results on this machine (2 CPU cores)", "",
             "Written by `python scripts/results_report.py` from the result files committed in `docs/results/` "
             "(`scripts/select_setting.py` and `scripts/run_statistics.py` produce them); a test checks that this "
             "section is exactly what the script writes. Accuracies are test accuracy in %, mean ± half-width of "
             "the 95 % Student-t interval over seeds; differences are paired by seed.", ""]
    selection = _table(results, "setting_selection")
    if len(selection):
        parts += ["**The CPU setting**, chosen by a rule fixed before any method comparison "
                  f"(`sparselab.experiments.selection`): {_selection_rule(selection)}; "
                  "the first candidate that qualifies is the setting of the `cpu` and `cpu-full` scales.", "",
                  _selection(selection), ""]
    p3b = _table(results, "p3b_cpu-full")
    if len(p3b):
        parts += [f"**P3B against the structured baselines** (`cpu-full`: `vit_mini_patch7_28` pretrained on "
                  f"Fashion-MNIST classes 0-4, pruned while fine-tuned on 1 000 images of classes 5-9, compact "
                  f"model fine-tuned 2 more epochs; {_seeds(p3b)}; `docs/results/p3b_cpu-full.csv`, "
                  f"{versions_note(p3b)}):", "",
                  _matrix(p3b, "prune_ratio", P3B_NAMES), "",
                  f"![P3B accuracy against prune ratio]({figures}/p3b_accuracy.png)", "",
                  *_paired_link(p3b, "p3b", "prune_ratio", f"![P3B minus each other method, paired by seed]"
                                f"({figures}/p3b_paired.png)"),
                  "Findings (`sparselab.experiments.findings.p3b_findings`):", "", _bullets(p3b_findings(p3b)), ""]
        diag = _table(results, "p3b_cpu-full_diagnosis")
        summary = [line for line in diagnosis_summary(p3b, diag) if line]
        if summary:
            parts += ["Diagnosis of where P3B trails (`sparselab.experiments.diagnosis`, rules fixed in "
                      f"`diagnosis_conclusions`; `docs/results/p3b_cpu-full_diagnosis.csv`, {versions_note(diag)}):",
                      "", _bullets(summary), ""]
    late = _table(results, "late_convergence")
    if len(late):
        lines = [line for name, rows in late.groupby("preset", sort=False)
                 for line in late_convergence_findings(rows.set_index("seed")[["cls", "patch"]], str(name))]
        parts += ["**Late convergence, measured** (dense fine-tuning with the probes attached; for each block the "
                  "moment its normalised ΔΨ first reaches half of its final value, and the Spearman ρ of that moment "
                  "with depth — positive when deep blocks arrive later; `cpu` is the class split, `cpu-digits` "
                  f"Fashion-MNIST → digits; `docs/results/late_convergence.csv`, {versions_note(late)}):", "",
                  _bullets(lines), ""]
    art = _table(results, "art_cpu-full")
    if len(art):
        parts += [f"**ART / HyperSparse against the other methods** (`cpu-full`: LeNet-300-100, 20 000 "
                  f"Fashion-MNIST training images; {_seeds(art)}; `hypersparse_fast` / `_slow`: λ growing "
                  f"with η² / √η per epoch; `docs/results/art_cpu-full.csv`, {versions_note(art)}):", "",
                  _matrix(art, "sparsity"), "",
                  f"![ART accuracy against sparsity]({figures}/art_accuracy.png)", "",
                  *_paired_link(art, "hypersparse", "sparsity", f"![HyperSparse minus each other method, paired "
                                f"by seed]({figures}/art_paired.png)"),
                  "Findings (`sparselab.experiments.findings.art_findings`; for the two schedule ablations "
                  "*supports* means the paper's schedule keeps more accuracy):", "", _bullets(art_findings(art)), ""]
    return "\n".join(parts).rstrip() + "\n"


def result_figures(results: Callable[[str], pd.DataFrame] = committed_results) -> dict:
    """The section's figures by file stem (``p3b_accuracy``, ``p3b_paired``, ``art_accuracy``, ``art_paired``)."""
    from ..plots.stats import plot_accuracy_ci, plot_paired_differences

    out = {}
    for kind, setting, method in (("p3b", "prune_ratio", "p3b"), ("art", "sparsity", "hypersparse")):
        table = _table(results, f"{kind}_cpu-full")
        if table.empty:
            continue
        out[f"{kind}_accuracy"] = plot_accuracy_ci(table, setting=setting)
        diffs = paired_against_all(table, method, setting=setting)
        if len(diffs):
            out[f"{kind}_paired"] = plot_paired_differences(diffs, setting=setting)
    return out


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text between the results markers replaced by ``section``."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} … {END} markers")
    head, rest = readme.split(START, 1)
    if END not in rest:
        raise ValueError(f"the README's {END} marker comes before its {START} marker; the section goes between "
                         f"them, start first")
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}{END}{tail}"


def write_report(readme: Path, figures_dir: Path | None = RESULTS / "figures") -> None:
    """Rewrite the README's results section and (unless ``figures_dir`` is None) its PNG figures; the section links
    the figures where they are written (relative to the README's folder), or where the committed ones are
    (``docs/results/figures``) when ``figures_dir`` is None.

    Example:
        >>> write_report(Path("README.md"))  # doctest: +SKIP
    """
    from ..plots import export_figures

    readme = Path(readme)
    if figures_dir is None:
        check_figures_current(RESULTS / "figures")
    figures = FIGURES if figures_dir is None else Path(
        os.path.relpath(Path(figures_dir).resolve(), readme.resolve().parent)).as_posix()
    section = replace_section(readme.read_text(), results_markdown(figures=figures))
    if figures_dir is not None:  # the figures first: a failed export leaves the README as it was
        export_figures(result_figures(), figures_dir, formats=("png",))
        sources = json.dumps(figure_sources(), indent=1) + "\n"
        atomic_write(Path(figures_dir) / FIGURE_SOURCES, lambda tmp: Path(tmp).write_text(sources))
    readme.write_text(section)


#: the file beside the figures that names the result tables they were drawn from (a hash of each)
FIGURE_SOURCES = "made_from.json"


def figure_sources(results: Callable[[str], pd.DataFrame] | None = None) -> dict[str, str]:
    """A hash of each result table the figures are drawn from (:func:`result_figures`), by name: of the committed
    file's bytes (None: ``absent``), or of ``results(name)`` as CSV text where ``results`` is given."""
    def content(name: str) -> bytes:
        if results is not None:
            return _table(results, name).to_csv(index=False).encode()
        path = RESULTS / f"{name}.csv"
        return path.read_bytes() if path.is_file() else b"absent"

    return {name: hashlib.sha256(content(name)).hexdigest()[:16] for name in ("p3b_cpu-full", "art_cpu-full")}


def check_figures_current(folder: Path, results: Callable[[str], pd.DataFrame] | None = None) -> None:
    """Refuse to link the figures in ``folder`` when they were drawn from other result tables than ``results``
    holds now (or it does not say which): the text would then stand beside figures of other numbers."""
    path = Path(folder) / FIGURE_SOURCES
    made_from = json.loads(path.read_text()) if path.is_file() else {}
    changed = [name for name, digest in figure_sources(results).items() if made_from.get(name) != digest]
    if changed:
        raise ConfigError(f"the figures in {folder} were not drawn from the result tables {', '.join(changed)} as "
                          f"they are now ({path.name} says otherwise, or is missing): write the section with its "
                          f"figures (scripts/results_report.py without --no-figures)")
