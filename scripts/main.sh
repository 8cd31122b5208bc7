#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then run notebooks/01_p3b_transfer.ipynb at the `cpu` scale
# (P3B against the structured baselines on a source-pretrained ViT). The executed notebook, an HTML copy and the
# results (table, histories, compact models) land under runs/. Safe to run again: the environment and the
# source model are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export SPARSELAB_OFFLINE="${SPARSELAB_OFFLINE:-1}"
SCALE="${SCALE:-cpu}"
mkdir -p runs
# the source model the chosen scale needs, trained once on Fashion-MNIST and cached under data/: `cpu` minutes on
# 2 cores (vit_mini_patch7_28 on classes 0-4), `tiny` seconds (vit_nano_patch4_28, quick recipe), paper presets none
.venv/bin/sparselab pretrain --preset "$SCALE"
.venv/bin/papermill notebooks/01_p3b_transfer.ipynb runs/01_p3b_transfer.ipynb \
  -p scale "$SCALE" -p out_dir runs/01_p3b_transfer --cwd "$(pwd)" --execution-timeout 3600 --log-output
.venv/bin/jupyter nbconvert --to html runs/01_p3b_transfer.ipynb --output-dir runs --log-level WARN
# PNGs of the key figures next to the HTML report (kaleido drives Debian's Chromium)
.venv/bin/sparselab figures runs/01_p3b_transfer/histories.jsonl.gz --out runs/01_p3b_transfer_figures
echo "main job done: runs/01_p3b_transfer.ipynb, runs/01_p3b_transfer.html, runs/01_p3b_transfer_figures/*.png, runs/01_p3b_transfer/"
