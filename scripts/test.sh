#!/usr/bin/env bash
# The test suite: installs the project with its test and bench extras (the bench harness has tests),
# checks style, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,bench
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest --durations=15 "$@"
