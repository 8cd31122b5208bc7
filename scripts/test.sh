#!/usr/bin/env bash
# Run ruff and the whole test suite on a fresh machine: sets up .venv (and Debian packages) first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export SPARSELAB_OFFLINE=1
# lint and import order first (rules in pyproject.toml [tool.ruff]): seconds, and a clear message before the suite
.venv/bin/ruff check sparselab tests scripts benchmarks
exec .venv/bin/python -m pytest -q "$@"
