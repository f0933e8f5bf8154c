"""`python -m aim_core VIDEO "question"`: answer a question about a video from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .config import DEFAULT_EFFICIENCY, AIMConfig
from .errors import AIMError
from .qa import Answer, VideoQA

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-model"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aim_core", description=__doc__)
    parser.add_argument("video", help="path to a video file")
    parser.add_argument("question", help="what to ask about the video")
    parser.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                        help=f"0 = no reduction (the stock model), 1 = most aggressive (default {DEFAULT_EFFICIENCY}, "
                             "the paper's setting)")
    parser.add_argument("--importance", choices=("text", "pagerank"), default="text",
                        help="how visual tokens are ranked when pruning")
    parser.add_argument("--prune-to-last-layer", action="store_true",
                        help="keep some visual tokens down to the last layer instead of none from about 3/4 of the "
                             "depth on (for shallow models that still read the video in their last layers)")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's method alone: merge and prune for the LLM, and run the stock vision tower "
                             "(by default the tower also merges patches from efficiency 0.25)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled uniformly from the video")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="hub id or local folder (default: the demo model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the answer and its stats")
    return parser.parse_args(argv)


def answer_as_dict(answer: Answer) -> dict:
    """The answer, its config and stats (None if it was cancelled before its first token) as plain JSON values."""
    stats = None
    if answer.stats is not None:
        stats = asdict(answer.stats)
        for name in ("flops_reduction", "decode_tokens_per_second", "total_flops", "total_flops_baseline",
                     "total_reduction", "first_answer_seconds"):
            stats[name] = getattr(answer.stats, name)
    # What was lost from a damaged or truncated file, as `SampledFrames.note` says it (empty for a sound one).
    note = answer.trace.frames.note if answer.trace is not None else ""
    return {"answer": answer.text, "config": asdict(answer.config), "stats": stats, "cancelled": answer.cancelled,
            "video_note": note}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = AIMConfig.from_efficiency(args.efficiency, importance=args.importance)
        if args.prune_to_last_layer:
            config = config.pruning_until_last_layer()
        if args.paper:
            config = config.with_stock_tower()
        qa = VideoQA.from_pretrained(args.model)
        stream = qa.stream(args.video, args.question, config=config, num_frames=args.frames,
                           max_new_tokens=args.max_new_tokens)
        for piece in stream:
            if not args.json:
                print(piece, end="", flush=True)
    except AIMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    answer = stream.answer
    if args.json:
        print(json.dumps(answer_as_dict(answer)))
        return 0
    stats = answer.stats
    print()
    if answer.trace is not None and answer.trace.frames.note:
        print(f"note: {answer.trace.frames.note}", file=sys.stderr)
    print(
        f"[{stats.num_frames} frames, visual tokens {stats.visual_tokens_before_merge} -> "
        f"{stats.visual_tokens_after_merge} after merging, prefill {stats.flops / 1e12:.3f} TFLOPs "
        f"({stats.flops_reduction:.2f}x fewer than no reduction), vision + prefill {stats.total_flops / 1e12:.3f} "
        f"TFLOPs ({stats.total_reduction:.2f}x fewer); frames {stats.video_decode_seconds:.2f} s, vision tower "
        f"{stats.vision_seconds:.2f} s{' (cached)' if stats.vision_cached else ''}, prefill "
        f"{stats.prefill_seconds:.2f} s, total {stats.total_seconds:.2f} s]",
        file=sys.stderr,
    )
    return 0
