"""The plugin in a real vLLM engine (CPU), on tiny random Qwen2.5-VL and Qwen3-VL models.

Each video: 8 frames of 64x64 px -> 4 temporal steps of 4x4 = 16 tokens, 64 video tokens in all.
"""

from __future__ import annotations

import math

import pytest

from aim_core.merge import merged_count

from .conftest import FAMILIES, run_vllm

STEPS, PER_STEP = 4, 16
REQUESTS = [{"seed": 1}, {"seed": 2, "mm_processor_kwargs": {"aim_merge_keep": 0.5}},
            {"seed": 1, "mm_processor_kwargs": {"aim_merge_keep": 1.0}}]


def saved_tokens(keep: float) -> int:
    return STEPS * (PER_STEP - merged_count(PER_STEP, keep))


@pytest.fixture(scope="module", params=FAMILIES)
def runs(request: pytest.FixtureRequest, model_dirs: dict) -> dict:
    """The same requests with the plugin on (25% by default), off (unset, and 1), and with vLLM's plugins off."""
    model_dir = model_dirs[request.param]
    return {
        "on": run_vllm(model_dir, REQUESTS, AIM_VLLM_MERGE_KEEP="0.25"),
        "unset": run_vllm(model_dir, REQUESTS[:1] + REQUESTS[1:2]),
        "one": run_vllm(model_dir, REQUESTS[:1], AIM_VLLM_MERGE_KEEP="1"),
        "stock": run_vllm(model_dir, REQUESTS[:1] + REQUESTS[1:2], VLLM_PLUGINS="lora_filesystem_resolver"),
    }


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a["prompt_len"] == b["prompt_len"]
    assert a["token_ids"] == b["token_ids"]
    assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a["logprobs"], b["logprobs"]))


def test_off_leaves_vllm_untouched(runs: dict) -> None:
    stock = runs["stock"]
    assert not stock["model_class"].startswith("AIM")
    for setting in ("unset", "one"):
        assert runs[setting]["model_class"] == stock["model_class"]
        for output, reference in zip(runs[setting]["outputs"], stock["outputs"]):
            assert_same_outputs(output, reference)


def test_prompt_holds_the_merged_token_count(runs: dict) -> None:
    unmerged = runs["stock"]["outputs"][0]["prompt_len"]
    default, half, full = runs["on"]["outputs"]
    assert default["prompt_len"] == unmerged - saved_tokens(0.25) == unmerged - 48
    assert half["prompt_len"] == unmerged - saved_tokens(0.5) == unmerged - 32  # per request
    assert full["prompt_len"] == unmerged


def test_keeping_every_token_reproduces_vllm_exactly(runs: dict) -> None:
    """Through the plugin's whole path (embeddings carrying positions, vLLM recomputing the prompt's M-RoPE
    positions from them) a merge that keeps everything gives vLLM's own outputs: positions, including the text's
    after the video, come out as vLLM places them unmerged."""
    assert runs["on"]["model_class"].startswith("AIM")
    assert_same_outputs(runs["on"]["outputs"][2], runs["stock"]["outputs"][0])


def test_generates_when_merging(runs: dict) -> None:
    for output in runs["on"]["outputs"][:2]:
        assert len(output["token_ids"]) == 6
        assert all(math.isfinite(x) for x in output["logprobs"])
    # merging changed what the model saw
    assert runs["on"]["outputs"][0]["logprobs"] != runs["stock"]["outputs"][0]["logprobs"]
