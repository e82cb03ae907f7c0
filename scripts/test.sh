#!/usr/bin/env bash
# The test suite: installs the project with its test extra, checks style, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
