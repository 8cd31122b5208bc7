#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then run the transfer example
# (a ViT pretrained by sparselab on Fashion-MNIST, fine-tuned on handwritten digits).
# Outputs land under runs/. Safe to run again: the environment and the source model are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export SPARSELAB_OFFLINE="${SPARSELAB_OFFLINE:-1}"
.venv/bin/sparselab pretrain --model vit_mini_patch7_28
.venv/bin/sparselab train --model vit_mini_patch7_28 --pretrained fashion_mnist --data digits --image-size 28 \
  --epochs 10 --lr 5e-4 --batch-size 64 --out runs/transfer_example
