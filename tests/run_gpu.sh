#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): tests/test_gpu.py with nothing skipped (SDPA and FlashAttention), the
# 7B-shaped latency benchmark with each kernel, then the small models' whole wait (end to end). Needs torch with CUDA,
# the pinned transformers, PyAV and the flash-attn-4 package (`pip install flash-attn-4`). Tables go to the folder
# given (default benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
python="${PYTHON:-python3}"
AIM_REQUIRE_GPU=1 "$python" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider
"$python" -m benchmarks.latency --shape qwen2-7b --frames 32 --dtype bfloat16 --repeats 3 \
  --out "$out/latency-qwen2-7b-gpu.md"
"$python" -m benchmarks.latency --shape qwen2-7b --frames 32 --dtype bfloat16 --repeats 3 --attention flash_attention_4 \
  --out "$out/latency-qwen2-7b-gpu-flash_attention_4.md"
"$python" -m benchmarks.end_to_end --frames 32 --dtype bfloat16 --repeats 4 --out "$out/end_to_end-gpu.md"
"$python" -m benchmarks.end_to_end --family qwen2_5_vl --frames 16 --dtype bfloat16 --repeats 2 \
  --out "$out/end_to_end-qwen2_5_vl-gpu.md"
