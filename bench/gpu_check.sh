#!/usr/bin/env bash
# The GPU check of issue 14 on the device machine (its own image: torch, pytest-benchmark, scikit-learn/-image, but
# no jsonschema or torchdeq).  Carry `.whl` (wheels of jsonschema and its needs, and torchdeq==0.1.0; README "Measured
# speed" says how to download them) and run from the repository root:
#     DEQBENCH_GIT_REV=<sha> bash bench/gpu_check.sh [OUT_DIR]
# Results land in OUT_DIR (default $OUT on the device machine, else results/gpu).
set -euo pipefail
out="${1:-${OUT:-results/gpu}}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/deqbench-site .whl/*.whl
  export PYTHONPATH="/tmp/deqbench-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/nvidia-smi.csv" || true
# DEQBENCH_GPU_SECTIONS: a comma-separated subset / order of the sections (default: all, in the script's order).
python3 bench/gpu_check.py --out "$out" --deadline "${DEQBENCH_GPU_DEADLINE:-330}" \
  ${DEQBENCH_GPU_SECTIONS:+--sections "$DEQBENCH_GPU_SECTIONS"} 2>&1 | tee "$out/gpu_check.log"
