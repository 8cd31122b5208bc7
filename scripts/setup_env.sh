#!/usr/bin/env bash
# Create .venv and install sparselab with everything it needs (Debian packages included where apt exists).
# Safe to run repeatedly: each step is skipped when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${SPARSELAB_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

# --- Debian packages: real Fashion-MNIST; Chromium for static figure export (kaleido) and the browser tests ---
APT_PACKAGES=(dataset-fashion-mnist chromium chromium-driver)
if [ -n "${SPARSELAB_APT_EXTRA:-}" ]; then APT_PACKAGES+=(${SPARSELAB_APT_EXTRA}); fi
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] apt-get install ${missing[*]}"
    $SUDO apt-get update -qq || echo "[setup] apt-get update failed; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "[setup] WARNING: could not install ${missing[*]}; sparselab will look under data/ or download instead"
  else
    echo "[setup] no apt-get here: skipping Debian packages (${missing[*]})"
  fi
fi

# --- virtual environment ---
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.sparselab-installed"
WANT=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# torch first and pinned, so that no range ever pulls a multi-GB build from the network.
case "$(uname -m)" in
  x86_64) TORCH=("torch==2.14.1" "torchvision==0.29.1") ;;
  aarch64|arm64) TORCH=("torch==2.9.1" "torchvision==0.24.1") ;;
  *) TORCH=("torch" "torchvision") ;;
esac
echo "[setup] installing ${TORCH[*]} (large; a few minutes on first run)"
"${PIP[@]}" "${TORCH[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import torch, torchvision" || { echo "[setup] torch failed to install"; exit 1; }
echo "[setup] installing sparselab[dev]"
"${PIP[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import sparselab, timm, captum, plotly, ipywidgets, pytest, hypothesis, onnxruntime" \
  || { echo "[setup] sparselab failed to install"; exit 1; }
echo "$WANT" > "$STAMP"
echo "[setup] done ($VENV)"
