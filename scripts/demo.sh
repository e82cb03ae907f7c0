#!/usr/bin/env bash
# The demo: installs what it needs, then annotates the bundled sample corpus (output in ./out/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python jobs/ner_corpus.py "$@"
