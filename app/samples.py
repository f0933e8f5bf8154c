"""Bundled sample videos with suggested questions, read from the JSON files in assets/samples/.

A file holds a list of videos (or `{"samples": [...]}`); each names its "file" (or "video") relative to the JSON
file and lists questions as strings or as objects with a "text" (or "question") and, optionally, "min_frames": the
fewest frames that show the evidence, which the example then sets the frames slider to (at least the default):

    [{"file": "sample-1.mp4", "questions": [{"text": "Which colour appears first?", "min_frames": 64}, "Why?"]}]

Entries whose video is missing or lies outside assets/ are skipped: the app serves nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .models import ASSETS_DIR

SAMPLES_DIR = ASSETS_DIR / "samples"
QUESTIONS_PER_VIDEO = 3  # suggested in the examples table; more would push the inputs off the screen


@dataclass(frozen=True)
class SampleQuestion:
    text: str
    answer: str = ""
    min_frames: int | None = None


@dataclass(frozen=True)
class Sample:
    video: Path
    questions: tuple[SampleQuestion, ...]


def find_samples(directory: Path = SAMPLES_DIR) -> list[Sample]:
    """The samples described by the JSON files in `directory`, in file order; none if it does not exist."""
    samples = []
    for listing in sorted(directory.glob("*.json")):
        try:
            data = json.loads(listing.read_text())
        except (OSError, ValueError):
            continue
        entries = data.get("samples", data.get("videos", [])) if isinstance(data, dict) else data
        samples += [sample for entry in entries if (sample := _sample(entry, listing.parent)) is not None]
    return samples


def example_rows(samples: list[Sample], default_frames: int) -> list[list[str | int]]:
    """`[video path, question, frames, expected answer]` rows for `gr.Examples`, a few questions per video: some
    answerable from the default frames, each video's taken from further along its list so that together the examples
    ask every kind, and one that needs more, which shows what a long video costs and saves."""
    return [[str(sample.video), question.text, example_frames(question, default_frames), question.answer]
            for index, sample in enumerate(samples)
            for question in _suggested(sample.questions, default_frames, index)]


def example_frames(question: SampleQuestion, default_frames: int) -> int:
    """The frames an example asks its question at: the default, or more where the evidence needs them."""
    return max(default_frames, question.min_frames or 0)


def _suggested(questions: tuple[SampleQuestion, ...], default_frames: int, index: int) -> list[SampleQuestion]:
    short = [question for question in questions if (question.min_frames or 0) <= default_frames]
    long = [question for question in questions if (question.min_frames or 0) > default_frames]
    count = QUESTIONS_PER_VIDEO - 1 if long else QUESTIONS_PER_VIDEO
    start = index * count % len(short) if short else 0
    return (short[start:] + short[:start])[:count] + long[:1]


def _sample(entry: Any, folder: Path) -> Sample | None:
    if not isinstance(entry, dict):
        return None
    name = entry.get("file") or entry.get("video")
    if not isinstance(name, str):
        return None
    video = (folder / name).resolve()
    if not video.is_file() or not video.is_relative_to(ASSETS_DIR.resolve()):
        return None
    questions = tuple(question for item in entry.get("questions", []) if (question := _question(item)))
    return Sample(video, questions or (SampleQuestion("What happens in this video?"),))


def _question(item: Any) -> SampleQuestion | None:
    text = item.get("text") or item.get("question") if isinstance(item, dict) else item
    if not isinstance(text, str) or not text.strip():
        return None
    if not isinstance(item, dict):
        return SampleQuestion(text.strip())
    min_frames = item.get("min_frames")
    return SampleQuestion(text.strip(), str(item.get("answer") or ""),
                          min_frames if isinstance(min_frames, int) else None)
