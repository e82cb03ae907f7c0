#!/usr/bin/env bash
# Wheels for running the GPU suite (bench/gpu.py) on a lent GPU machine without network access whose Python
# (3.12) already has torch, transformers, tokenizers, pyarrow and pandas but not Ray or pydantic.
#
#   bash bench/device_wheels.sh          # fills .whl/ (git-ignored), under 64 MiB
#
# Ray's wheel is repacked without its Java jars and the dashboard's web client (neither is used by a
# Python job with the dashboard off): 79 -> ~45 MB. Then, on the GPU machine, with .whl carried:
#
#   bash bench/device_run.sh     # installs them into /tmp/site, runs the gpu tests and the GPU suite
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# Ray 2.60 and what it and the project need that the GPU image lacks (its other needs are there).
# typing-extensions: pydantic 2.14 needs >= 4.16 (installed with --no-deps, nothing else would check).
WANTED=(ray==2.60.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
        typing-extensions==4.16.0)
rm -rf .whl && mkdir -p .whl/raw
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d .whl/raw "${WANTED[@]}"
mv .whl/raw/*.whl .whl/ && rmdir .whl/raw
"$PY" - <<'EOF'
"""Repack Ray's wheel without ray/jars/ and the dashboard's built web client (and their RECORD lines)."""
import glob
import os
import zipfile

DROP = ("ray/jars/", "ray/dashboard/client/build/")
src = glob.glob(".whl/ray-*.whl")[0]
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith(DROP):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            dropped = tuple(d.encode() for d in DROP)
            data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(dropped))
        zout.writestr(item, data)
os.replace(tmp, src)
EOF
# The corpus words and the BERT-base tokenizer of the GPU suite come from all-MiniLM-L6-v2's tokenizer files
# (bench/workload.py minilm_folder): the package (88 MB with its weights) is not on the GPU machine.
mkdir -p .whl/minilm
"$PY" -c 'import sys; sys.path.insert(0, "."); from bench.workload import TOKENIZER_FILES, minilm_folder
import shutil; [shutil.copy(minilm_folder() / n, ".whl/minilm/" + n) for n in TOKENIZER_FILES]'
du -ch .whl/*.whl .whl/minilm | tail -1
