#!/usr/bin/env bash
# Install what the tests need on a fresh machine (Debian's chromium and ffmpeg, a venv at .venv with the pinned
# requirements, .venv-vllm for the vLLM plugin) and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null; }

missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v chromium >/dev/null || missing+=(chromium)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-test.txt
.venv/bin/python -m pytest "$@"
# The vLLM plugin's tests, in their own environment (.venv-vllm, made on first use: vLLM pins its own torch).
exec aim_vllm/run_tests.sh "$@"
