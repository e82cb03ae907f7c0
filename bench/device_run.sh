#!/usr/bin/env bash
# Everything a lent GPU machine (no package index, minutes of device time) is for, as one command, with
# .whl/ from `bash bench/device_wheels.sh` carried beside the working tree:
#
#   bash bench/device_run.sh     # what it found goes to $OUT: env.txt, gpu-tests.txt, gpu-suite.txt, steps.json, RESULTS.md
#
# 1. installs the carried wheels into /tmp/site (the machine's python3 has torch, transformers, pyarrow);
# 2. says what torch and Ray see (a Ray that misses the GPU would refuse every --device cuda run);
# 3. the gpu-marked tests (tests/test_gpu_infer.py: the only module whose imports all exist there);
# 4. the GPU suite (bench/gpu.py), sized by NER_DOCS / HF_DOCS: its steps are saved one by one, so a suite
#    cut off by SUITE_SECONDS still brings back the steps it finished (RESUME=1 goes on while the machine is warm,
#    with the same sizes: steps are saved by name). The parts' timeouts (60 + 200 + 300 s) keep the command
#    under the device tool's 600 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bertbatch-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD   # Ray's workers import the project from the working tree too
export RAY_DATA_DISABLE_PROGRESS_BARS=1
timeout 60 python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import ray
import torch
import transformers

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported(including_emulation=False), "| transformers", transformers.__version__)
ray.init(address="local", include_dashboard=False)
print("ray", ray.__version__, ray.cluster_resources())
ray.shutdown()
EOF
timeout "${TEST_SECONDS:-200}" python3 -m pytest -q -m gpu tests/test_gpu_infer.py -p no:cacheprovider \
  > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?"; tail -25 "$OUT/gpu-tests.txt"
timeout "${SUITE_SECONDS:-300}" python3 bench/run.py --suite gpu --ner-docs "${NER_DOCS:-30000}" \
  --hf-docs "${HF_DOCS:-1000}" ${RESUME:+--resume} > "$OUT/gpu-suite.txt" 2>&1
echo "gpu suite: exit $?"; tail -40 "$OUT/gpu-suite.txt"
cp bench/.work/gpu/steps.json bench/RESULTS.md "$OUT"/ 2>/dev/null
ls "$OUT"
