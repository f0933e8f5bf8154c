"""The whole wait of a question about a video, stage by stage, against no reduction, measured side by side in one run.

    python -m benchmarks.end_to_end                   # LLaVA-OneVision-0.5B's real shapes, 16 frames, CPU
    python -m benchmarks.end_to_end --frames 32 --dtype bfloat16        # on a GPU
    python -m benchmarks.end_to_end --family qwen2_5_vl --frames 8      # Qwen2.5-VL-3B's real shapes

A first question pays for everything: decoding the frames from a video file, the vision tower and projector, merging,
the LLM prefill; a follow-up about the same video finds the frames and the tower's output cached and pays for the
prefill alone. The model has random weights (no downloads here) but the real shapes: SigLIP-so400m as
llava-onevision-qwen2-0.5b-ov ships it (26 blocks, 384 px, 729 patches a frame, pooled to 196 tokens) and the
Qwen2-0.5B language model, or Qwen2.5-VL-3B-Instruct's (a 32-block windowed tower, merged within its windows:
`aim_core.packed_vision_patch`), so the work is the real model's. Settings run interleaved and
report medians; every ratio compares numbers from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aim_core import AIMConfig, Answer, VideoQA
from aim_core.random_models import (
    LLAVA_ONEVISION_0_5B_SHAPE,
    QWEN2_5_VL_3B_REAL_SHAPE,
    build_llava_onevision,
    build_qwen_vl,
)
from aim_core.video import write_video
from benchmarks.latency import RESULTS, device_label, save_table

QUESTIONS = ("What happens in this video?", "What colour is the moving shape?")


@dataclass
class Setting:
    name: str
    config: AIMConfig


def make_video(path: Path, seconds: int, fps: int) -> None:
    """A 640x360 H.264 clip: a bright square moving over a gradient (decodes like real footage, not like noise)."""
    y, x = np.mgrid[0:360, 0:640]
    frames = []
    for index in range(seconds * fps):
        frame = np.stack([(x // 3 + index) % 256, (y // 2) % 256, ((x + y) // 4) % 256], axis=-1).astype(np.uint8)
        left = (index * 7) % 560
        frame[140:220, left:left + 80] = (250, 40, 40)
        frames.append(frame)
    write_video(path, np.stack(frames), fps)


def ask(qa: VideoQA, video: Path, question: str, config: AIMConfig, frames: int, new_tokens: int) -> Answer:
    return qa.answer(video, question, config=config, num_frames=frames, max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("llava_onevision", "qwen2_5_vl"), default="llava_onevision")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="where to write the markdown table (default: results/end_to_end.md, or "
                                      "results/end_to_end-qwen2_5_vl.md)")
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    if args.family == "qwen2_5_vl":
        model, processor = build_qwen_vl(QWEN2_5_VL_3B_REAL_SHAPE, dtype=dtype)
        model_name = ("Qwen2.5-VL-3B's real shapes (a 32-block windowed vision tower of width 1280, 14 px patches; "
                      "the 36-layer LLM")
        out = RESULTS / "end_to_end-qwen2_5_vl.md"
    else:
        model, processor = build_llava_onevision(LLAVA_ONEVISION_0_5B_SHAPE, dtype=dtype)
        model_name = "LLaVA-OneVision-0.5B's real shapes (SigLIP-so400m, 26 blocks, 729 patches a frame; Qwen2-0.5B"
        out = RESULTS / "end_to_end.md"
    args.out = args.out or str(out)
    qa = VideoQA.from_model(model.to(args.device), processor)
    settings = [Setting("no reduction", AIMConfig.none()),
                Setting("AIM, paper (`AIMConfig()`: LLM only)", AIMConfig()),
                Setting("app default (efficiency 0.75: + vision tower)", AIMConfig.from_efficiency(0.75)),
                Setting("efficiency 0.9", AIMConfig.from_efficiency(0.9))]
    device_name = device_label(args.device)
    first: dict[str, list[Answer]] = {s.name: [] for s in settings}
    follow_up: dict[str, list[Answer]] = {s.name: [] for s in settings}
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "clip.mp4"
        make_video(video, seconds=max(8, args.frames // 2), fps=8)
        ask(qa, video, QUESTIONS[0], AIMConfig.from_efficiency(1.0), 2, 1)  # warm-up
        for repeat in range(args.repeats):
            for setting in settings:
                qa.clear_cache()
                first[setting.name].append(ask(qa, video, QUESTIONS[0], setting.config, args.frames, args.new_tokens))
                follow_up[setting.name].append(ask(qa, video, QUESTIONS[1], setting.config, args.frames,
                                                   args.new_tokens))
                stats, again = first[setting.name][-1].stats, follow_up[setting.name][-1].stats
                print(f"  [{repeat + 1}/{args.repeats}] {setting.name}: first token {stats.time_to_first_token:.2f} s "
                      f"(frames {stats.video_decode_seconds:.2f}, vision {stats.vision_seconds:.2f}, "
                      f"prefill {stats.prefill_seconds:.2f}); follow-up {again.time_to_first_token:.2f} s", flush=True)

    def median(runs: dict[str, list[Answer]], name: str, value) -> float:
        return statistics.median(value(answer.stats) for answer in runs[name])

    base_first = median(first, "no reduction", lambda s: s.time_to_first_token)
    base_follow = median(follow_up, "no reduction", lambda s: s.time_to_first_token)
    base_vision = median(first, "no reduction", lambda s: s.vision_seconds)
    command = f"--family {args.family} --frames {args.frames} --repeats {args.repeats} --dtype {args.dtype}"
    lines = [
        (f"Device: {device_name}. Model: {model_name}; random weights, {args.dtype}), {args.frames} frames decoded "
         f"from a 640x360 H.264 file, "
         f"{args.new_tokens} new tokens, median of {args.repeats} interleaved run(s). \"First question\" is the whole "
         f"wait for the first token of an uncached video (frames, vision tower, merge, prefill); \"follow-up\" the "
         f"same about the same video, its frames and vision features cached. In the no-reduction first answer the "
         f"vision tower takes {100 * base_vision / base_first:.0f}% of the wait. "
         f"Command: `python -m benchmarks.end_to_end {command}`."),
        "",
        "| setting | tower tokens per step (a frame; Qwen: 2 frames), last block | visual tokens to LLM | "
        "vision + prefill TFLOPs | FLOPs cut | frames s | vision s | merge s | prefill s | "
        "first question: first token s | speedup | follow-up: first token s | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in settings:
        stats = first[setting.name][0].stats
        first_token = median(first, setting.name, lambda s: s.time_to_first_token)
        follow = median(follow_up, setting.name, lambda s: s.time_to_first_token)
        lines.append(
            f"| {setting.name} | {stats.vision_tokens_per_layer[-1]} | {stats.visual_tokens_after_merge} | "
            f"{stats.total_flops / 1e12:.2f} | {stats.total_reduction:.2f}x | "
            f"{median(first, setting.name, lambda s: s.video_decode_seconds):.2f} | "
            f"{median(first, setting.name, lambda s: s.vision_seconds):.2f} | "
            f"{median(first, setting.name, lambda s: s.merge_seconds):.2f} | "
            f"{median(first, setting.name, lambda s: s.prefill_seconds):.2f} | {first_token:.2f} | "
            f"**{base_first / first_token:.2f}x** | {follow:.2f} | **{base_follow / follow:.2f}x** |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
