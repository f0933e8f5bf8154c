"""Accuracy of the demo model on held-out synthetic long-video questions under one setting, asked through
`VideoQA` exactly as the app asks them.

    python -m benchmarks.synthetic_qa --seed 0 --n 500 --efficiency default --json
    python -m benchmarks.synthetic_qa --n 200 --efficiency 0.9 --frames 64

`--efficiency` is a number in [0, 1] or `default` (`AIMConfig()`). With `--json` the last line printed is a JSON
object with `accuracy`, `per_kind`, `flops` and `flops_baseline` (mean prefill FLOPs per question), `n`, and the
setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aim_core import AIMConfig, SampledFrames, VideoQA
from aim_core.config import TokenReduction
from aim_core.video import frame_indices
from synthetic.evaluate import held_out_questions, normalise
from synthetic.scenes import KINDS, Question, render

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
VIDEO_FPS = 16.0  # the rate the shipped sample videos play at (synthetic/make_samples.py)


@dataclass
class Video:
    """One held-out video, sampled as the app samples it, with the questions asked about it."""

    frames: SampledFrames
    questions: list[Question]


@dataclass
class Result:
    accuracy: float
    per_kind: dict[str, float]
    n: int
    flops: float
    flops_baseline: float
    prefill_seconds: float

    @property
    def flops_fraction(self) -> float:
        return self.flops / self.flops_baseline


def held_out_videos(n: int, seed: int, num_frames: int, size: int, answerable_from: int | None = None,
                    not_from: int = 0) -> list[Video]:
    """About `n` test-split questions, the same number of each kind, with `num_frames` frames of each video sampled
    as the app samples them.

    Questions are those answerable from `answerable_from` frames (default `num_frames`) and, with `not_from`, not
    from that many (questions about short events); so two calls that differ only in `num_frames` ask the same
    questions about the same videos seen through more or fewer frames.
    """
    videos = []
    for scene, asked in held_out_questions(n, seed, answerable_from or num_frames, not_from):
        indices = frame_indices(scene.num_frames, num_frames)
        frames = SampledFrames(render(scene, size, indices), indices / VIDEO_FPS, VIDEO_FPS,
                               scene.num_frames / VIDEO_FPS, None, "array")
        videos.append(Video(frames, asked))
    return videos


def evaluate(qa: VideoQA, videos: list[Video], config: TokenReduction, max_new_tokens: int = 4) -> Result:
    """Exact-match accuracy (after lower-casing and stripping a final full stop) under `config`."""
    hits: dict[str, list[bool]] = defaultdict(list)
    flops, baseline, prefill = [], [], []
    for video in videos:
        for question in video.questions:
            answer = qa.answer(video.frames, question.text, config=config, num_frames=len(video.frames),
                               max_new_tokens=max_new_tokens)
            hits[question.kind].append(normalise(answer.text) == question.answer)
            flops.append(answer.stats.flops)
            baseline.append(answer.stats.flops_baseline)
            prefill.append(answer.stats.prefill_seconds)
    every = [hit for kind_hits in hits.values() for hit in kind_hits]
    return Result(
        accuracy=float(np.mean(every)),
        per_kind={kind: float(np.mean(hits[kind])) for kind in KINDS if hits[kind]},
        n=len(every),
        flops=statistics.fmean(flops),
        flops_baseline=statistics.fmean(baseline),
        prefill_seconds=statistics.median(prefill),
    )


def parse_config(efficiency: str, importance: str) -> AIMConfig:
    if efficiency == "default":
        return AIMConfig(importance=importance)
    return AIMConfig.from_efficiency(float(efficiency), importance=importance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="offset into the test split's seeds")
    parser.add_argument("--n", type=int, default=500, help="questions (spread evenly over the kinds)")
    parser.add_argument("--efficiency", default="default", help="a number in [0, 1], or 'default'")
    parser.add_argument("--importance", choices=("text", "pagerank", "last"), default="text")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = parse_config(args.efficiency, args.importance)
    qa = VideoQA.from_pretrained(args.model)
    size = qa.adapter.processor.video_processor.size["height"]
    result = evaluate(qa, held_out_videos(args.n, args.seed, args.frames, size), config)
    print(f"{result.n} questions, {args.frames} frames, {config}")
    print(f"accuracy {result.accuracy:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in result.per_kind.items()))
    print(f"prefill {result.flops / 1e9:.3f} GFLOPs per question, {result.flops_baseline / result.flops:.2f}x fewer "
          f"than no reduction")
    if args.json:
        print(json.dumps({**asdict(result), "config": asdict(config), "frames": args.frames, "seed": args.seed}))


if __name__ == "__main__":
    main()
