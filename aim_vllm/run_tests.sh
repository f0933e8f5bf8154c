#!/usr/bin/env bash
# Run the vLLM plugin's tests in .venv-vllm, creating it first if needed (aim_vllm/setup_env.sh). Extra arguments
# go to pytest. ~10 min on 2 cores: each of 8 settings starts its own vLLM engine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/aim_vllm/setup_env.sh"
PY="$ROOT/.venv-vllm/bin/python"
"$PY" -c "import pytest" 2>/dev/null || "$PY" -m pip install --quiet pytest
cd "$ROOT"
exec "$PY" -m pytest -p no:cacheprovider --rootdir aim_vllm -c /dev/null aim_vllm/tests "$@"
