"""Measure the CPU-scale candidate settings under the selection rule (sparselab.experiments.selection) and write
docs/results/setting_selection.csv (one row per candidate) and setting_selection_runs.csv (every run).

Usage: .venv/bin/python scripts/select_setting.py [--candidates cpu ...] [--seeds 0 1 2 3 4] [--ratio 0.9] [--append]

``--append`` measures only the given candidates and adds them after the ones already committed (the order of the
rule is the order of the rows).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from sparselab.experiments.p3b import p3b_preset
from sparselab.experiments.selection import RULE, select_setting

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=["cpu-digits"], help="P3B presets, in the order to try")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--append", action="store_true", help="keep the committed candidates and add these")
    args = parser.parse_args()
    torch.set_num_threads(2)
    summary, runs = select_setting([p3b_preset(c) for c in args.candidates], args.ratio, args.seeds)
    OUT.mkdir(parents=True, exist_ok=True)
    summary = summary.assign(min_loss=RULE.min_loss, max_dense_std=RULE.max_dense_std)
    if args.append and (OUT / "setting_selection.csv").exists():
        summary = pd.concat([pd.read_csv(OUT / "setting_selection.csv"), summary], ignore_index=True)
        runs = pd.concat([pd.read_csv(OUT / "setting_selection_runs.csv"), runs], ignore_index=True)
    summary.to_csv(OUT / "setting_selection.csv", index=False)
    runs.to_csv(OUT / "setting_selection_runs.csv", index=False)
    print(summary.to_string())


if __name__ == "__main__":
    main()
