"""Rewrite the README's results section and its PNG figures (docs/results/figures/) from the committed result files
in docs/results/ (sparselab.experiments.report).

Usage: .venv/bin/python scripts/results_report.py [--no-figures]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sparselab.experiments.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-figures", action="store_true", help="only the text (figures need kaleido + Chromium)")
    args = parser.parse_args()
    write_report(ROOT / "README.md", None if args.no_figures else ROOT / "docs" / "results" / "figures")
    print("README.md results section rewritten")


if __name__ == "__main__":
    main()
