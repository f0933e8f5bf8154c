"""`python -m aim_core` end to end, in a subprocess, on a tiny model saved to disk like a hub checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest

from aim_core import AIMConfig, VideoQA, sample_frames
from aim_core.config import MERGE_ROUND
from aim_core.video import write_video


@pytest.fixture(scope="module")
def video_path(tmp_path_factory, random_frames):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, random_frames, fps=4)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "aim_core", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_json_answer_matches_the_python_api(tiny_llava_dir, video_path):
    result = run_cli(str(video_path), "What happens?", "--model", str(tiny_llava_dir), "--frames", "4",
                     "--efficiency", "0.75", "--max-new-tokens", "5", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    expected = VideoQA.from_pretrained(tiny_llava_dir).answer(sample_frames(video_path, 4), "What happens?",
                                                         config=AIMConfig.from_efficiency(0.75), max_new_tokens=5)
    assert printed["answer"] == expected.text
    assert printed["stats"]["tokens_per_layer"] == expected.stats.tokens_per_layer
    assert printed["stats"]["visual_tokens_after_merge"] == 4 * 4 + 1
    assert printed["stats"]["flops_reduction"] == pytest.approx(expected.stats.flops_reduction)
    assert printed["config"]["merge_keep"] == 0.25 and printed["config"]["merge_round"] == MERGE_ROUND


def test_pruning_to_the_last_layer_keeps_visual_tokens_longer(tiny_llava_dir, video_path):
    def prune_end_and_tokens_per_layer(*flags: str) -> tuple[float, list[int]]:
        result = run_cli(str(video_path), "What happens?", "--model", str(tiny_llava_dir), "--frames", "4",
                         "--max-new-tokens", "2", "--json", *flags)
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout.strip().splitlines()[-1])
        return printed["config"]["prune_end"], printed["stats"]["tokens_per_layer"]

    (paper_end, paper) = prune_end_and_tokens_per_layer()
    (last_end, to_last) = prune_end_and_tokens_per_layer("--prune-to-last-layer")
    assert (paper_end, last_end) == (AIMConfig().prune_end, 1.0)
    assert all(longer >= shorter for longer, shorter in zip(to_last, paper)) and to_last != paper
    assert to_last[-1] == paper[-1]  # no visual token in the last layer either way: only text is left


def test_paper_flag_runs_the_papers_method_alone(tiny_llava_dir, video_path):
    result = run_cli(str(video_path), "What happens?", "--model", str(tiny_llava_dir), "--frames", "4",
                     "--efficiency", "0.75", "--paper", "--max-new-tokens", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["config"] == asdict(AIMConfig())


def test_plain_output_streams_the_answer_and_summarises(tiny_llava_dir, video_path):
    result = run_cli(str(video_path), "What happens?", "--model", str(tiny_llava_dir), "--frames", "4",
                     "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "fewer than no reduction" in result.stderr
    assert "4 frames" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.mp4", "What?"], "missing.mp4"),
        (["{video}", "   "], "question is empty"),
        (["{video}", "What?", "--efficiency", "1.5"], "efficiency must be in [0, 1]"),
        (["{video}", "What?", "--frames", "0"], "num_frames"),
        (["{video}", "What?", "--model", "/nonexistent/model"], "cannot load model"),
    ],
)
def test_errors_are_one_clear_line(tiny_llava_dir, video_path, args, message):
    args = [a.replace("{video}", str(video_path)) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_llava_dir)]
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
