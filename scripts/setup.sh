#!/usr/bin/env bash
# Creates or reuses .venv and installs bertbatch into it: torch==2.13.0 first, then the project with
# the extras named in $1 (e.g. "test"). Re-runs only when pyproject.toml changes. torch comes from
# $TORCH_INDEX_URL when set (PyPI's Linux wheel is the CUDA build: a CPU-only machine saves GBs with
# PyTorch's CPU index), else from pip's own configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-${extras:-base}-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  spec="."
  [ -n "$extras" ] && spec=".[${extras}]"
  .venv/bin/python -m pip install -q -e "$spec"
  touch "$stamp"
fi
