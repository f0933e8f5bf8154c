"""The app as a Hugging Face Space: the model it opens on, Space-sized limits (among them: no visitor may switch the
model, which is everyone's), and the GPU time each request asks ZeroGPU for.

A request's GPU time is worked out from its predicted cost (`VideoQA.estimate`: the vision tower and the prefill of
this many frames of this video on this model, at the asked efficiency, and again with no reduction when compared)
and the answer's length, at a throughput assumed below (not measured on ZeroGPU). ZeroGPU stops a call that runs past
its duration, so the assumptions are generous.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from aim_core import AIMError

from . import zerogpu
from .callbacks import Callbacks
from .session import Limits, Runner, check_frames, check_video, config_for

SPACE_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"  # what a Space opens on; README.md's front matter preloads it
# Space-sized: uploads a browser sends in reasonable time, and frame counts one ZeroGPU call answers.
# One visitor's Load model would switch the model under everyone else: on a Space the model is the Space's.
SPACE_LIMITS = Limits(max_upload_bytes=1024**3, max_duration_seconds=2 * 3600, min_frames=8, max_frames=128,
                      max_new_tokens=64, switch_models=False)

SETUP_SECONDS = 10.0  # attaching a GPU to the call and moving the weights onto it
EFFECTIVE_FLOPS = 40e12  # bfloat16 FLOP/s the vision tower and prefill reach on a ZeroGPU slice: about a fifth of peak
SECONDS_PER_NEW_TOKEN = 0.06  # a `generate` step of a small model (mostly Python overhead, not arithmetic)
SAFETY = 2.0  # the prediction times this, since a call past its duration is killed
MIN_GPU_SECONDS = 20
MAX_GPU_SECONDS = 120  # the most ZeroGPU grants one call of a free account


def gpu_seconds(runner: Runner, video: Any, num_frames: Any, efficiency: Any, compare: Any = False) -> int:
    """The ZeroGPU duration to ask for one Ask (or `/answer` call) with these inputs. Bad inputs get the minimum:
    the call refuses them at once, with the message."""
    try:
        frames = check_frames(num_frames, runner.limits)
        info = check_video(video.get("path") if isinstance(video, dict) else video, runner.limits)
        config = config_for(efficiency)
    except AIMError:
        return MIN_GPU_SECONDS
    qa, frames = runner.registry.qa, min(frames, info.num_frames)
    estimate = qa.estimate(config, frames, (info.height, info.width))
    flops = estimate.total_flops + (estimate.total_flops_baseline if compare is True else 0)
    runs = 2 if compare is True else 1
    seconds = SETUP_SECONDS + SAFETY * (flops / EFFECTIVE_FLOPS
                                        + runs * runner.limits.max_new_tokens * SECONDS_PER_NEW_TOKEN)
    return int(min(MAX_GPU_SECONDS, max(MIN_GPU_SECONDS, math.ceil(seconds))))


def gpu_callbacks(callbacks: Callbacks) -> tuple[Callable[..., Iterator[tuple]], Callable[..., Iterator[tuple]]]:
    """`(ask, answer_api)`: the two callbacks that run the model, each holding a ZeroGPU GPU while it runs, for the
    duration its inputs need; the callbacks themselves where `spaces` is not installed."""
    runner = callbacks.runner

    def ask_seconds(video, question, efficiency, num_frames, compare, *rest, **named) -> int:
        return gpu_seconds(runner, video, num_frames, efficiency, compare)

    def answer_seconds(video, question, efficiency, frames=None, *rest, **named) -> int:
        return gpu_seconds(runner, video, frames, efficiency)

    return zerogpu.gpu(callbacks.ask, ask_seconds), zerogpu.gpu(callbacks.answer_api, answer_seconds)
