#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: sets up .venv (and Debian packages) first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export SPARSELAB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
