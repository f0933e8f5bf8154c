"""Accuracy against prefill FLOPs for AIM and the baselines, at equal FLOPs, on held-out synthetic questions.

    python -m benchmarks.synthetic_sweep --n 500

For each FLOPs budget (a fraction of no reduction's) every method turns its own knob to the least reduction that
fits, predicted with `aim_core.estimate_cost`; the table reports the accuracy and the FLOPs each really used. All
methods answer the same questions about the same sampled frames, through `VideoQA`, in one run. Also measured: the
long-video point (AIM on 4x the frames at the cost of 32 frames with no reduction, on questions about short events),
the two importance rankings (text-to-visual attention and AIM's PageRank) at AIM's default, and, per question kind,
where the default loses: its merging alone, its pruning alone, and its merging in the released code's rounds.

Writes benchmarks/results/synthetic_qa-seed<SEED>.md and .png (the plot needs kaleido and a Chromium): one file per
seed, because on 500 questions a gap under about two points between methods is noise, which only a second set of
questions shows. The plot is drawn from the table it writes, so the two always agree; `--plot-only` redraws it from
the table already there.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from aim_core import AIMConfig, VideoQA, estimate_cost, plan_for_budget
from aim_core.baselines import FastV, RandomDrop
from aim_core.config import TokenReduction
from aim_core.errors import SettingsError
from aim_core.merge import MAX_MERGE_ROUND

from .synthetic_qa import DEFAULT_MODEL, Result, evaluate, held_out_videos

RESULTS = Path(__file__).parent / "results"
BUDGETS = (0.5, 0.25, 0.15, 0.1, 0.06)


@dataclass(frozen=True)
class Method:
    """A family of settings along one knob in [0, 1]: 0 is no reduction, larger reduces more."""

    name: str
    setting: Callable[[float], TokenReduction]


METHODS = (
    # The paper's method (the stock vision tower): this sweep compares prefill FLOPs, as the paper does.
    Method("AIM (merge + prune)", lambda knob: AIMConfig.from_efficiency(knob).with_stock_tower()),
    # The paper's schedule leaves no visual token from about 3/4 of the depth on; a shallow model may still read the
    # video there, so the same knob with some visual tokens kept down to the last layer.
    Method("AIM, pruning until the last layer",
           lambda knob: AIMConfig.from_efficiency(knob).pruning_until_last_layer().with_stock_tower()),
    Method("merge only", lambda knob: AIMConfig(merge_keep=max(1 - knob, 0.01), prune_start=1.0, prune_end=1.0)),
    Method("prune only", lambda knob: AIMConfig(merge_keep=1.0, prune_start=max(1 - knob, 0.01),
                                                prune_end=min(1.0, max(1 - knob, 0.01) + 0.3))),
    Method("FastV (layer 2, last-token attention)", lambda knob: FastV(layer=2, keep=1 - knob)),
    Method("random token dropping", lambda knob: RandomDrop(keep=max(1 - knob, 0.01))),
)


def fraction(qa: VideoQA, setting: TokenReduction, num_frames: int, frames_budget: int) -> float:
    """Predicted prefill FLOPs of `setting` on `num_frames` frames, over no reduction's on `frames_budget` frames."""
    size = qa.adapter.processor.video_processor.size["height"]
    cost = qa.estimate(setting, num_frames, (size, size))
    return cost.flops / qa.estimate(AIMConfig.none(), frames_budget, (size, size)).flops


def least_reduction(qa: VideoQA, method: Method, budget: float, num_frames: int) -> TokenReduction | None:
    """The setting of `method` with the smallest knob whose predicted FLOPs fit `budget`; None if none does."""
    if fraction(qa, method.setting(1.0), num_frames, num_frames) > budget:
        return None
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (low, middle) if fraction(qa, method.setting(middle), num_frames, num_frames) <= budget else \
            (middle, high)
    return method.setting(high)


def most_frames_within(qa: VideoQA, budget: float, num_frames: int) -> int | None:
    """Uniform frame subsampling: the most frames whose unreduced prefill fits `budget`; None if not even one does
    (the prompt's text costs something too)."""
    fitting = [f for f in range(1, num_frames + 1) if fraction(qa, AIMConfig.none(), f, num_frames) <= budget]
    return max(fitting, default=None)


def cell(result: Result | None, baseline: Result) -> str:
    if result is None:
        return "cannot reach"
    return f"{100 * result.accuracy:.1f}% ({100 * result.flops / baseline.flops:.1f}% FLOPs)"


REACHED_CELL = re.compile(r"([\d.]+)% \(([\d.]+)% FLOPs\)")  # reads back what `cell` writes: accuracy, FLOPs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--plot-only", action="store_true", help="redraw the .png from the seed's table; run nothing")
    args = parser.parse_args()
    name = f"synthetic_qa-seed{args.seed}"
    if args.plot_only:
        plot((RESULTS / f"{name}.md").read_text()).write_image(RESULTS / f"{name}.png", width=900, height=520, scale=2)
        return

    started = time.perf_counter()
    qa = VideoQA.from_pretrained(args.model)
    size = qa.adapter.processor.video_processor.size["height"]
    videos = held_out_videos(args.n, args.seed, args.frames, size)
    baseline = evaluate(qa, videos, AIMConfig.none())
    print(f"no reduction: {baseline.accuracy:.3f} on {baseline.n} questions", flush=True)

    curves: dict[str, list[Result | None]] = {}
    for method in METHODS:
        curves[method.name] = []
        for budget in BUDGETS:
            setting = least_reduction(qa, method, budget, args.frames)
            curves[method.name].append(None if setting is None else evaluate(qa, videos, setting))
            print(f"{method.name} at {budget:.0%}: {cell(curves[method.name][-1], baseline)}", flush=True)
    subsampled = []
    for budget in BUDGETS:
        frames = most_frames_within(qa, budget, args.frames)
        if frames is None:
            subsampled.append(None)
            print(f"frame subsampling at {budget:.0%}: cannot reach", flush=True)
            continue
        fewer = held_out_videos(args.n, args.seed, frames, size, answerable_from=args.frames)
        result = evaluate(qa, fewer, AIMConfig.none())
        result.flops_baseline = baseline.flops_baseline
        subsampled.append(result)
        print(f"{frames} frames at {budget:.0%}: {cell(result, baseline)}", flush=True)
    curves[f"uniform frame subsampling (of {args.frames})"] = subsampled

    default = evaluate(qa, videos, AIMConfig())
    pagerank = evaluate(qa, videos, AIMConfig(importance="pagerank"))
    to_last = evaluate(qa, videos, AIMConfig().pruning_until_last_layer())
    # Where the default loses, per kind: its two halves alone, and its merging in the released code's rounds.
    parts = {
        "AIM default, merging only (`AIMConfig(prune_start=1.0, prune_end=1.0)`)":
            evaluate(qa, videos, AIMConfig(prune_start=1.0, prune_end=1.0)),
        "AIM default, pruning only (`AIMConfig(merge_keep=1.0)`)": evaluate(qa, videos, AIMConfig(merge_keep=1.0)),
        f"AIM default, merging in the released code's rounds (`AIMConfig(merge_round={MAX_MERGE_ROUND})`)":
            evaluate(qa, videos, AIMConfig(merge_round=MAX_MERGE_ROUND)),
    }
    long_video = long_video_point(qa, args, size)

    lines = [
        (f"Demo model (`{Path(args.model).name}`), {baseline.n} held-out test questions (seed {args.seed}), "
        f"{args.frames} frames; exact-match accuracy, and in brackets the prefill FLOPs used against no reduction. "
        f"Command: `python -m benchmarks.synthetic_sweep --n {args.n} --seed {args.seed} --frames {args.frames}` "
        f"({(time.perf_counter() - started) / 60:.0f} min on {qa.model.device})."),
        "",
        (f"No reduction: **{100 * baseline.accuracy:.1f}%**. AIM's default (`AIMConfig()`): "
        f"**{100 * default.accuracy:.1f}%** ({100 * default.accuracy / max(baseline.accuracy, 1e-9):.1f}% of no "
        f"reduction's accuracy) at {baseline.flops / default.flops:.2f}x fewer FLOPs; with PageRank importance "
        f"{100 * pagerank.accuracy:.1f}%. The default pruning until the last layer (`AIMConfig(prune_end=1.0)`): "
        f"**{100 * to_last.accuracy:.1f}%** ({100 * to_last.accuracy / max(baseline.accuracy, 1e-9):.1f}%) at "
        f"{baseline.flops / to_last.flops:.2f}x fewer FLOPs."),
        "",
        "| method | " + " | ".join(f"budget {b:.0%}" for b in BUDGETS) + " |",
        "|---|" + "---|" * len(BUDGETS),
    ]
    lines += [f"| {name} | " + " | ".join(cell(r, baseline) for r in results) + " |" for name, results in
              curves.items()]
    lines += ["", "Per question kind, no reduction vs AIM's default and its variants:", ""]
    lines += kind_table({"no reduction": baseline, "AIM default": default,
                         "AIM default, pruning until the last layer": to_last, **parts})
    lines += ["", long_video]
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table + "\n")
    plot(table).write_image(RESULTS / f"{name}.png", width=900, height=520, scale=2)


def kind_table(results: dict[str, Result]) -> list[str]:
    """Markdown rows: each setting's accuracy per kind, over all questions, and its prefill FLOPs against the first
    setting's (no reduction)."""
    baseline = next(iter(results.values()))
    kinds = list(baseline.per_kind)
    rows = ["| setting | " + " | ".join(kinds) + " | all | FLOPs |", "|---|" + "---|" * (len(kinds) + 2)]
    for label, result in results.items():
        rows.append(f"| {label} | " + " | ".join(f"{100 * result.per_kind[k]:.1f}%" for k in kinds)
                    + f" | {100 * result.accuracy:.1f}% | {100 * result.flops / baseline.flops:.1f}% |")
    return rows


def long_video_point(qa: VideoQA, args: argparse.Namespace, size: int) -> str:
    """AIM on 4x the frames within the prefill budget of `args.frames` frames with no reduction, on questions about
    short events (answerable from 4x the frames but not from `args.frames`)."""
    many = 4 * args.frames
    short = held_out_videos(args.n, args.seed, many, size, not_from=args.frames)
    plain = held_out_videos(args.n, args.seed, args.frames, size, answerable_from=many, not_from=args.frames)
    unreduced = qa.estimate(AIMConfig.none(), args.frames, (size, size))
    budget = unreduced.flops
    layout = qa.adapter.layout("", many, size, size)
    plan = plan_for_budget(qa.shape, budget, layout.tokens_per_step, layout.text_tokens, frame_choices=(many,),
                           max_efficiency=1.0, unmerged_visual_tokens=layout.unmerged)
    few = evaluate(qa, plain, AIMConfig.none())
    aim = evaluate(qa, short, plan.config.with_stock_tower())  # a prefill budget: the paper's method
    assert estimate_cost(qa.shape, many, layout.tokens_per_step, layout.text_tokens, plan.config,
                         layout.unmerged).flops <= budget
    line = (
        f"Long-video point, {few.n} questions about short events (answerable from {many} frames, not from "
        f"{args.frames}): no reduction on {args.frames} frames **{100 * few.accuracy:.1f}%** at "
        f"{few.flops / 1e9:.2f} GFLOPs of prefill; AIM on {many} frames (efficiency {plan.efficiency:.2f}) "
        f"**{100 * aim.accuracy:.1f}%** at {aim.flops / 1e9:.2f} GFLOPs of prefill."
    )
    # What a first question pays for: the vision tower too, which 4x the frames makes 4x longer unless the knob
    # merges inside it as well (`vision_keep`).
    whole_budget = unreduced.total_flops
    try:
        whole = qa.plan_for_budget(whole_budget, (size, size), frame_choices=(many,))
    except SettingsError:
        return line + f" Counting the vision tower too, no setting fits {many} frames in the cost of {args.frames}."
    end_to_end = evaluate(qa, short, whole.config)
    return line + (
        f" Counting the vision tower too (a first question's FLOPs): no reduction on {args.frames} frames "
        f"{whole_budget / 1e9:.2f} GFLOPs; AIM on {many} frames at efficiency {whole.efficiency:.2f} "
        f"(`vision_keep={whole.config.vision_keep}`, `merge_round={whole.config.merge_round}`) "
        f"**{100 * end_to_end.accuracy:.1f}%** at "
        f"{whole.estimate.total_flops / 1e9:.2f} GFLOPs."
    )


def plot(table: str) -> go.Figure:
    """Accuracy against FLOPs, one line per method, from the markdown `table` that `main` writes."""
    figure = go.Figure()
    for name, points in table_points(table).items():
        figure.add_trace(go.Scatter(x=[flops for flops, _ in points], y=[accuracy for _, accuracy in points],
                                    mode="lines+markers", name=name))
    baseline = float(re.search(r"No reduction: \*\*([\d.]+)%", table)[1])
    default = re.search(r"AIM's default \(`AIMConfig\(\)`\): \*\*([\d.]+)%.*? at ([\d.]+)x fewer FLOPs", table)
    figure.add_trace(go.Scatter(x=[100], y=[baseline], mode="markers", name="no reduction",
                                marker={"symbol": "star", "size": 14, "color": "black"}))
    figure.add_trace(go.Scatter(x=[100 / float(default[2])], y=[float(default[1])], mode="markers",
                                name="AIM default", marker={"symbol": "diamond", "size": 12}))
    figure.update_layout(title="Accuracy against prefill FLOPs (synthetic long-video QA, demo model)",
                         xaxis={"title": "prefill FLOPs, % of no reduction", "type": "log"},
                         yaxis={"title": "exact-match accuracy, %"}, template="plotly_white")
    return figure


def table_points(table: str) -> dict[str, list[tuple[float, float]]]:
    """{method: [(FLOPs % of no reduction, accuracy %)]} from the rows of the budget table; "cannot reach" skipped."""
    points = {}
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        found = [REACHED_CELL.fullmatch(cell) for cell in cells[1:]]
        if row.startswith("| ") and len(cells) == len(BUDGETS) + 1 and any(found):
            points[cells[0]] = [(float(m[2]), float(m[1])) for m in found if m]
    return points


if __name__ == "__main__":
    main()
