"""Write the sample videos the app offers, with suggested questions and their answers.

    python -m synthetic.make_samples --out assets/samples

Each sample is a 256-frame, 256 x 256 px H.264 mp4 of a held-out (test split) scene that has a brief shape, and
`samples.json` lists, per video, one question of each kind answerable from the app's default 32 frames, plus the
questions about brief shapes that need 64 or 128 frames (`min_frames`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from aim_core.video import write_video
from synthetic.scenes import Question, make_scene, pick, questions, render, split_seeds

NUM_SAMPLES = 4
NUM_FRAMES, SIZE, FPS = 256, 256, 16
# Far from the test seeds `evaluate` walks through, so that samples and measured accuracy stay separate.
SEED_OFFSET = 50_000_000


def has_brief_question(every: list[Question]) -> bool:
    return any(q.min_frames == 128 and q.kind in ("exists", "which") for q in every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="assets/samples")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    samples = []
    for seed in split_seeds("test", 10_000, offset=SEED_OFFSET):
        if len(samples) == NUM_SAMPLES:
            break
        scene = make_scene(seed, NUM_FRAMES)
        every = questions(scene)
        if not has_brief_question(every):
            continue
        suggested = list(pick([q for q in every if q.min_frames <= 32], np.random.default_rng(seed), 1))
        brief = [q for q in every if q.min_frames > 32 and q.kind in ("exists", "which", "count")]
        name = f"sample-{len(samples) + 1}.mp4"
        write_video(out / name, render(scene, SIZE), FPS)
        samples.append(
            {
                "file": name,
                "seed": seed,
                "num_frames": NUM_FRAMES,
                "fps": FPS,
                "questions": [asdict(q) for q in suggested + brief],
            }
        )
        print(f"{name}: seed {seed}, {len(suggested)} questions at 32 frames, {len(brief)} about brief shapes")
    (out / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")


if __name__ == "__main__":
    main()
