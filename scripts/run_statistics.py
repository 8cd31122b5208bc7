"""Run the `cpu-full` statistics of both papers and record every run under docs/results/:

- ``p3b_cpu-full.csv``: P3B, its ablations and the structured baselines at 50 / 75 / 90 % plus dense fine-tuning,
  5 seeds each, on the setting the selection rule chose (about an hour on 2 quiet cores);
- ``art_cpu-full.csv``: HyperSparse, its λ-schedule ablations, L1, L2, GMP, movement, one-shot and layer-wise at
  90 / 98 / 99.5 %, 5 seeds each (minutes);
- ``late_convergence.csv``: the late-convergence measure of dense fine-tuning with probes (Spearman ρ of each
  block's half-benefit moment with depth, class and patch probe) for the class split and Fashion-MNIST → digits,
  5 seeds (minutes).

Each finished run is written at once, so an interrupted run continues where it stopped when started again.
Every row names the code that ran it (its ``code`` column: the checkout's commit); continuing a file with other
code warns, since its tables would then pair rows of two versions. To record a new version, move the old files
(and their ``.settings.json``) away first.
``--diagnose N`` then runs the diagnosis (sparselab.experiments.diagnosis) for the N pairs (baseline,
ratio) where P3B trails most, into ``p3b_cpu-full_diagnosis.csv`` (about 15 minutes per pair).

Usage: .venv/bin/python scripts/run_statistics.py [--only p3b|art|late|diagnosis] [--diagnose N]
       [--p3b-preset cpu-full] [--art-preset cpu-full]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sparselab.experiments import art, diagnosis, p3b
from sparselab.experiments.provenance import code_version

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def late_convergence(path: Path, presets=("cpu", "cpu-digits"), seeds=(0, 1, 2, 3, 4)) -> None:
    """ρ per preset and seed, appended preset by preset (a preset already in the file is not run again)."""
    import pandas as pd

    done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["preset", "seed"])
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
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.only in (None, "art"):
        preset = art.art_preset(args.art_preset)
        table, _ = art.compare(preset, record=OUT / f"art_{preset.name}.csv")
        print(art.summarize(table).to_string())
    if args.only in (None, "p3b"):
        preset = p3b.p3b_preset(args.p3b_preset)
        table, _ = p3b.compare(preset, record=OUT / f"p3b_{preset.name}.csv")
        print(p3b.summarize(table).to_string())
    if args.only in (None, "late"):
        late_convergence(OUT / "late_convergence.csv")
    if args.only in (None, "diagnosis") and args.diagnose > 0:
        preset = p3b.p3b_preset(args.p3b_preset)
        table, _ = p3b.compare(preset, record=OUT / f"p3b_{preset.name}.csv")
        pairs = diagnosis.trailing(table).head(args.diagnose)
        print(f"P3B trails in {len(pairs)} of the pairs to diagnose:\n{pairs.to_string()}")
        for _, pair in pairs.iterrows():
            diag = diagnosis.diagnose(preset, table, pair.baseline, pair.prune_ratio,
                                      record=OUT / f"p3b_{preset.name}_diagnosis.csv")
            print("\n".join(diagnosis.diagnosis_findings(table, diag, pair.baseline, pair.prune_ratio)))


if __name__ == "__main__":
    main()
