"""What merging before the LLM does to the shapes in the demo model's frames: how often a round schedule folds a
visible shape's tokens into the same merged token as another shape's, or leaves it at most half of every merged token
it ends in. No model answers anything: the shipped model's visual tokens of the two sweeps' scenes, merged: the 16
pooled tokens a frame the LLM reads, and the tower's 64 a frame before LLaVA-OneVision's 2x2 pooling, to see whether
finer frames, as real checkpoints have (196 tokens a frame), would fold less.

    python -m benchmarks.merge_folding

A shape owns the tokens whose cell it mostly covers (`synthetic.train_demo_model.token_owners`). The released AIM
code's rounds (`merge_round=0.5`) fold all of set A each round; `AIMConfig()`'s (`MERGE_ROUND`) at most a quarter.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch

from aim_core import VideoQA
from aim_core.config import MERGE_ROUND
from aim_core.merge import MAX_MERGE_ROUND, merge_frames
from aim_core.video import frame_indices
from benchmarks.latency import RESULTS, save_table
from benchmarks.synthetic_qa import DEFAULT_MODEL
from synthetic.evaluate import held_out_questions
from synthetic.scenes import render
from synthetic.train_demo_model import token_owners


@dataclass
class Folding:
    shapes: int = 0  # (frame, visible shape owning a token) pairs
    mixed: int = 0  # of them, merged into one token with another shape's token
    drowned: int = 0  # of them, at most half of every merged token their tokens end in

    def add(self, owners: np.ndarray, source: np.ndarray) -> None:
        """Count one merge of `[frames, n]` token `owners` (a shape's index, -1 for none) whose `source` maps each
        token to the merged token it ended in."""
        for frame_owners, frame_source in zip(owners, source):
            for shape in np.unique(frame_owners[frame_owners >= 0]):
                ended_in = [frame_owners[frame_source == merged]
                            for merged in np.unique(frame_source[frame_owners == shape])]
                self.shapes += 1
                self.mixed += any(((members >= 0) & (members != shape)).any() for members in ended_in)
                self.drowned += all(2 * (members == shape).sum() <= len(members) for members in ended_in)


def visual_tokens(qa: VideoQA, frames: np.ndarray, unpooled: bool) -> torch.Tensor:
    """`[frames, n, hidden]` float tokens of the frames as the model encodes a video; with `unpooled`, without the
    pooling LLaVA-OneVision's `get_video_features` ends with (the projector's output of every patch)."""
    if not unpooled:
        return qa.adapter.encode_video(frames).tokens.float()
    with mock.patch.object(qa.model.model, "apply_pooling", lambda features: features):
        return qa.adapter.encode_video(frames).tokens.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,100000", help="the sweeps' question seeds, whose scenes are merged")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.25, help="the share of each frame's tokens merging keeps")
    parser.add_argument("--out", default=str(RESULTS / "merge_folding.md"))
    args = parser.parse_args()

    started = time.perf_counter()
    qa = VideoQA.from_pretrained(str(DEFAULT_MODEL))
    size = qa.adapter.processor.video_processor.size["height"]
    rounds = {f"the released code's (`merge_round={MAX_MERGE_ROUND}`)": MAX_MERGE_ROUND,
              f"`AIMConfig()`'s (`merge_round={MERGE_ROUND}`)": MERGE_ROUND}
    grids = {"16 (pooled: what the LLM reads)": False, "64 (the tower's, before pooling)": True}
    folding = {(grid, name): Folding() for grid in grids for name in rounds}
    scenes = 0
    for seed in (int(s) for s in args.seeds.split(",")):
        for scene, _ in held_out_questions(args.n, seed, args.frames):
            indices = frame_indices(scene.num_frames, args.frames)
            frames = render(scene, size, indices)
            for grid, unpooled in grids.items():
                tokens = visual_tokens(qa, frames, unpooled)
                owners = token_owners(scene, indices, math.isqrt(tokens.shape[1])).reshape(len(indices), -1)
                for name, merge_round in rounds.items():
                    folding[grid, name].add(owners, merge_frames(tokens, args.keep, merge_round).source.numpy())
            scenes += 1
    lines = [
        (f"Demo model, the {scenes} scenes of the sweeps' questions (seeds {args.seeds}), {args.frames} frames, each "
         f"frame's tokens merged to {args.keep:.0%}. Command: `python -m benchmarks.merge_folding` "
         f"({time.perf_counter() - started:.0f} s on {qa.model.device.type})."),
        "",
        "| tokens a frame | rounds | (frame, shape) pairs | folded with another shape | "
        "at most half of every merged token it ends in |",
        "|---|---|---|---|---|",
    ]
    for (grid, name), counts in folding.items():
        lines.append(f"| {grid} | {name} | {counts.shapes} | {100 * counts.mixed / counts.shapes:.1f}% | "
                     f"{100 * counts.drowned / counts.shapes:.1f}% |")
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
