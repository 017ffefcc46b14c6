#!/usr/bin/env bash
# The full-size method benchmark as one prepared command for a lent GPU machine (H100/H200).
#
# That machine has torch, transformers, numpy, PIL and safetensors but no diffusers, and no network.
# Here, once per session, in the repository root (the .whl folder is git-ignored through
# .git/info/exclude and travels with `carry`):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl "diffusers==$(.venv/bin/pip show diffusers | sed -n 's/^Version: //p')"
#
# then, through the device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540).
# The method benchmark imports no Prefect, fsspec or pandas, so diffusers is the only wheel it needs.
# What comes back under $OUT: gpu.txt (the device), method-sd14.json and method-sd14.log; the log
# ends with the markdown block for benchmarks/RESULTS.md.
set -euo pipefail
out="${OUT:-benchmarks/gpu-out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  python3 -c 'import torch, transformers, diffusers; print(torch.__version__, transformers.__version__, diffusers.__version__)'; } \
  | tee "$out/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$out/gpu.txt" || true
# K=6 key frames, 50 steps, 512 px; the seed in our dtype and in its default fp32, then stillmotion
timeout 500 python3 benchmarks/method.py --size sd14 --repeats 1 --json "$out/method-sd14.json" 2>&1 \
  | tee "$out/method-sd14.log"
