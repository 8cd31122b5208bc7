"""Run the `cpu-full` statistics of both papers and record every run under docs/results/:

- ``p3b_cpu-full.csv``: P3B, its ablations and the structured baselines at 50 / 75 / 90 % plus dense fine-tuning,
  5 seeds each, on the setting the selection rule chose (hours on 2 quiet cores: 140 runs, a baseline's about a
  minute, one with P3B's reference probes two to three);
- ``art_cpu-full.csv``: HyperSparse, its λ-schedule ablations, L1, L2, GMP, movement, one-shot and layer-wise at
  90 / 98 / 99.5 %, 5 seeds each (under an hour);
- ``late_convergence.csv``: the late-convergence measure of dense fine-tuning with probes (Spearman ρ of each
  block's half-benefit moment with depth, class and patch probe) for the class split and Fashion-MNIST → digits,
  5 seeds (minutes).

Each finished run is written at once, so an interrupted run continues where it stopped when started again.
Every row names the code that ran it (its ``code`` column: the checkout's commit); continuing a file with other
code warns, since its tables would then pair rows of two versions. To record a new version, move the old files
(and their ``.settings.json``) away first: ``--fresh`` moves the files this call would continue to
``runs/previous_results/<time>/``, so that every row of the new files comes from the code that runs now.
``--diagnose N`` then runs the diagnosis (sparselab.experiments.diagnosis) for the N pairs (baseline,
ratio) where P3B trails most, into ``p3b_cpu-full_diagnosis.csv`` (about 15 minutes per pair).

Usage: .venv/bin/python scripts/run_statistics.py [--only p3b|art|late|diagnosis] [--diagnose N]
       [--p3b-preset cpu-full] [--art-preset cpu-full] [--fresh] [--out docs/results]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from sparselab.experiments import art, diagnosis, p3b
from sparselab.experiments.provenance import code_version, warn_other_code

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"
PARTS = ("p3b", "art", "late", "diagnosis")


def record_files(parts, out: Path, p3b_preset: str, art_preset: str) -> list[Path]:
    """The record files (with their settings files) that running ``parts`` writes to under ``out``."""
    names = {"p3b": [f"p3b_{p3b_preset}.csv"], "art": [f"art_{art_preset}.csv"], "late": ["late_convergence.csv"],
             "diagnosis": [f"p3b_{p3b_preset}_diagnosis.csv"]}
    return [out / f for part in parts for name in names[part] for f in (name, name + ".settings.json")]


def archive(paths, dest: Path) -> list[Path]:
    """Move the existing ``paths`` into ``dest`` (created); returns where they went."""
    moved = []
    for path in paths:
        if path.exists():
            dest.mkdir(parents=True, exist_ok=True)
            moved.append(Path(shutil.move(str(path), str(dest / path.name))))
    return moved


def late_convergence(path: Path, presets=("cpu", "cpu-digits"), seeds=(0, 1, 2, 3, 4)) -> None:
    """ρ per preset and seed, appended preset by preset (a preset already in the file is not run again)."""
    import pandas as pd

    done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["preset", "seed"])
    warn_other_code(path, done, "its presets are not run again (--fresh starts a new file)")
    for name in presets:
        if name in set(done.preset):
            continue
        rho = (p3b.late_convergence_by_seed(p3b.p3b_preset(name), list(seeds)).reset_index()
               .assign(preset=name, code=code_version()))
        done = pd.concat([done, rho[["preset", "seed", *[c for c in rho.columns if c not in ("preset", "seed")]]]],
                         ignore_index=True)
        p3b._write_record(path, done)
        print(rho.to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["p3b", "art", "late", "diagnosis"], default=None)
    parser.add_argument("--diagnose", type=int, default=1, help="how many trailing pairs to diagnose")
    parser.add_argument("--p3b-preset", default="cpu-full")
    parser.add_argument("--art-preset", default="cpu-full")
    parser.add_argument("--fresh", action="store_true",
                        help="move the record files this call would continue to runs/previous_results/<time>/ first")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the record files (default: docs/results)")
    args = parser.parse_args()
    out = args.out
    if args.fresh:
        parts = PARTS if args.only is None else (args.only,)
        dest = ROOT / "runs" / "previous_results" / time.strftime("%Y%m%d-%H%M%S")
        for path in archive(record_files(parts, out, args.p3b_preset, args.art_preset), dest):
            print(f"moved aside: {path}")
    torch.set_num_threads(2)
    if args.only in (None, "art"):
        preset = art.art_preset(args.art_preset)
        table, _ = art.compare(preset, record=out / f"art_{preset.name}.csv")
        print(art.summarize(table).to_string())
    if args.only in (None, "p3b"):
        preset = p3b.p3b_preset(args.p3b_preset)
        table, _ = p3b.compare(preset, record=out / f"p3b_{preset.name}.csv")
        print(p3b.summarize(table).to_string())
    if args.only in (None, "late"):
        late_convergence(out / "late_convergence.csv")
    if args.only in (None, "diagnosis") and args.diagnose > 0:
        preset = p3b.p3b_preset(args.p3b_preset)
        table, _ = p3b.compare(preset, record=out / f"p3b_{preset.name}.csv")
        pairs = diagnosis.trailing(table).head(args.diagnose)
        print(f"P3B trails in {len(pairs)} of the pairs to diagnose:\n{pairs.to_string()}")
        for _, pair in pairs.iterrows():
            diag = diagnosis.diagnose(preset, table, pair.baseline, pair.prune_ratio,
                                      record=out / f"p3b_{preset.name}_diagnosis.csv")
            print("\n".join(diagnosis.diagnosis_findings(table, diag, pair.baseline, pair.prune_ratio)))


if __name__ == "__main__":
    main()
