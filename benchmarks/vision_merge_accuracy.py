"""What merging inside the vision tower costs the demo model in accuracy, next to the paper's method alone and no
reduction: one run, the same held-out questions for every setting.

    python -m benchmarks.vision_merge_accuracy --n 500 --seed 0

Settings: no reduction; the paper's LLM setting (`AIMConfig()`, the stock tower), and the same merging in the released
code's rounds of all of set A; the paper's setting with the tower's patches merged to `vision_keep` (0.25 is the
efficiency knob's default, 0.75, which the app starts at).
"""

from __future__ import annotations

import argparse
import time

from aim_core import AIMConfig, VideoQA
from aim_core.config import DEFAULT_EFFICIENCY
from aim_core.merge import MAX_MERGE_ROUND
from benchmarks.latency import RESULTS, save_table
from benchmarks.synthetic_qa import DEFAULT_MODEL, evaluate, held_out_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--keeps", default="0.5,0.25", help="vision_keep values to try with the paper's LLM setting")
    parser.add_argument("--out", default=str(RESULTS / "vision_merge_accuracy.md"))
    args = parser.parse_args()

    started = time.perf_counter()
    qa = VideoQA.from_pretrained(str(DEFAULT_MODEL))
    size = qa.adapter.processor.video_processor.size["height"]
    videos = held_out_videos(args.n, args.seed, args.frames, size)
    settings = [("no reduction", AIMConfig.none()), ("`AIMConfig()` (the paper's setting: stock tower)", AIMConfig()),
                (f"`AIMConfig(merge_round={MAX_MERGE_ROUND})` (the released code's rounds)",
                 AIMConfig(merge_round=MAX_MERGE_ROUND))]
    knob = AIMConfig.from_efficiency(DEFAULT_EFFICIENCY)
    for keep in args.keeps.split(","):
        config = AIMConfig(vision_keep=float(keep))
        app_default = f" (the app's default, `from_efficiency({DEFAULT_EFFICIENCY})`)" if config == knob else ""
        settings.append((f"`AIMConfig(vision_keep={keep})`{app_default}", config))
    frames = videos[0].frames
    rows = []
    for name, config in settings:
        result = evaluate(qa, videos, config)
        cost = qa.estimate(config, args.frames, frames.frames.shape[1:3])
        rows.append((name, result, cost))
        print(f"{name}: {100 * result.accuracy:.1f}%", flush=True)
    base = rows[0][1].accuracy
    lines = [
        (f"Demo model, {rows[0][1].n} held-out test questions (seed {args.seed}), {args.frames} frames; exact-match "
         f"accuracy, and the FLOPs of a first answer (vision tower + prefill) against no reduction. Command: "
         f"`python -m benchmarks.vision_merge_accuracy --n {args.n} --seed {args.seed}` "
         f"({(time.perf_counter() - started) / 60:.0f} min on {qa.model.device.type})."),
        "",
        "| setting | accuracy | of no reduction | vision FLOPs | vision + prefill FLOPs | "
        + " | ".join(rows[0][1].per_kind) + " |",
        "|---|---|---|---|---|" + "---|" * len(rows[0][1].per_kind),
    ]
    for name, result, cost in rows:
        kinds = " | ".join(f"{100 * value:.0f}%" for value in result.per_kind.values())
        lines.append(f"| {name} | {100 * result.accuracy:.1f}% | {100 * result.accuracy / base:.1f}% | "
                     f"{100 * cost.vision_flops / cost.vision_flops_baseline:.0f}% | "
                     f"{100 * cost.total_flops / cost.total_flops_baseline:.1f}% | {kinds} |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
