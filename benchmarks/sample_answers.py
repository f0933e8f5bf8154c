"""What the demo model answers to the questions the app suggests for its sample videos, unreduced and reduced.

    python -m benchmarks.sample_answers

Each suggested question is asked at the frames its example sets (`app.samples.example_rows`), as the app asks it,
under no reduction, the paper's setting (`AIMConfig()`, which is the app's default for the demo model: efficiency
0.75, the tower left whole, `Runner.vision_merge_pays`) and the slider further up, at 0.9. Below the table, the same
count over every question the samples list, suggested or not.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from aim_core import AIMConfig, VideoQA, sample_frames
from aim_core.config import DEFAULT_EFFICIENCY
from app.samples import SampleQuestion, example_frames, example_rows, find_samples
from app.ui import DEFAULT_FRAMES
from benchmarks.latency import RESULTS, save_table
from benchmarks.synthetic_qa import DEFAULT_MODEL
from synthetic.evaluate import normalise

SETTINGS = {
    "no reduction": AIMConfig.none(),
    f"`AIMConfig()` (the app's default, {DEFAULT_EFFICIENCY})": AIMConfig(),
    "the app at 0.9": AIMConfig.from_efficiency(0.9).with_stock_tower(),
}


Row = tuple[str, str, int, str, list[str]]  # video, question, frames, expected answer, answers under `SETTINGS`


def answered(qa: VideoQA, video: Path, question: SampleQuestion, default_frames: int) -> Row:
    """The question asked at its example's frames, with the model's normalised one-word answer under each setting."""
    num_frames = example_frames(question, default_frames)
    frames = sample_frames(video, num_frames)
    got = [normalise(qa.answer(frames, question.text, config=config, max_new_tokens=8).text)
           for config in SETTINGS.values()]
    return video.name, question.text, num_frames, question.answer, got


def right_counts(rows: list[Row]) -> list[int]:
    """How many of `rows` each of `SETTINGS` answered right."""
    return [sum(row[4][i] == row[3] for row in rows) for i in range(len(SETTINGS))]


def table(rows: list[Row]) -> list[str]:
    """Markdown lines: a row per question, a wrong answer marked, and the right answers per setting."""
    lines = ["| video | question | frames | answer | " + " | ".join(SETTINGS) + " |",
             "|---|---|---|---|" + "---|" * len(SETTINGS)]
    for video, question, frames, expected, got in rows:
        cells = " | ".join(answer if answer == expected else f"{answer} (wrong)" for answer in got)
        lines.append(f"| {video} | {question} | {frames} | {expected} | {cells} |")
    lines.append("| **right** | | | | " + " | ".join(f"**{r} of {len(rows)}**" for r in right_counts(rows)) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "sample_answers.md"))
    args = parser.parse_args()

    started = time.perf_counter()
    qa = VideoQA.from_pretrained(str(DEFAULT_MODEL))
    samples = find_samples()
    every = {(str(sample.video), question.text): answered(qa, sample.video, question, DEFAULT_FRAMES)
             for sample in samples for question in sample.questions}
    suggested = [every[video, question] for video, question, _, _ in example_rows(samples, DEFAULT_FRAMES)]
    lines = [
        (f"The app's suggested questions for its {len(samples)} sample videos, asked at the frames each example sets, "
         f"one-word answers. Command: `python -m benchmarks.sample_answers` "
         f"({time.perf_counter() - started:.0f} s on {qa.model.device.type})."),
        "",
        *table(suggested),
        "",
        (f"Over all {len(every)} questions the samples list (suggested or not), right: "
         + ", ".join(f"{name} {right} of {len(every)}"
                     for name, right in zip(SETTINGS, right_counts(list(every.values())))) + "."),
    ]
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
