"""Tiny random-weight Qwen2.5-VL and Qwen3-VL checkpoints, and a way to run vLLM on them under a given setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aim_vllm.testing import save_tiny_model

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
RUNNER = Path(__file__).with_name("run_vllm.py")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny_model(root / family, family) for family in FAMILIES}


def run_vllm(model_dir: Path, requests: list[dict], **env: str) -> dict:
    """vLLM's outputs for `requests` in a fresh process whose environment has `env` added (a value of "" unsets)."""
    environment = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
    environment.pop("AIM_VLLM_MERGE_KEEP", None)
    environment.update({key: value for key, value in env.items() if value != ""})
    done = subprocess.run([sys.executable, str(RUNNER), str(model_dir), json.dumps(requests)], env=environment,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"vLLM failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))
