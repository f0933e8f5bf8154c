"""The runs of one browser session, for the trade-off plot: what each efficiency cost and whether its answer
agreed with the answer of no reduction (efficiency 0) to the same question about the same frames."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aim_core import Answer

MAX_POINTS = 500  # a session that asks more forgets its oldest runs


@dataclass(frozen=True)
class RunKey:
    """Runs are comparable when the same model answers the same question about the same frames."""

    model: str
    video: str
    num_frames: int
    question: str


@dataclass(frozen=True)
class RunPoint:
    key: RunKey
    efficiency: float
    flops: int
    flops_baseline: int
    prefill_seconds: float
    total_seconds: float
    answer: str
    total_flops: int
    total_flops_baseline: int
    first_answer_seconds: float

    @classmethod
    def of(cls, key: RunKey, efficiency: float, answer: Answer) -> RunPoint:
        stats = answer.stats
        return cls(key, efficiency, stats.flops, stats.flops_baseline, stats.prefill_seconds, stats.total_seconds,
                   answer.text, stats.total_flops, stats.total_flops_baseline, stats.first_answer_seconds)

    @property
    def flops_fraction(self) -> float:
        """Prefill FLOPs against no reduction's."""
        return self.flops / self.flops_baseline

    @property
    def total_flops_fraction(self) -> float:
        """Vision + prefill FLOPs against no reduction's."""
        return self.total_flops / self.total_flops_baseline

    @property
    def is_baseline(self) -> bool:
        return self.efficiency == 0


@dataclass
class History:
    points: list[RunPoint] = field(default_factory=list)

    def add(self, point: RunPoint) -> History:
        self.points = [*self.points, point][-MAX_POINTS:]
        return self

    def baseline(self, key: RunKey) -> RunPoint | None:
        """The latest no-reduction run for `key`, if there was one."""
        return next((point for point in reversed(self.points) if point.key == key and point.is_baseline), None)

    def agrees(self, point: RunPoint) -> bool | None:
        """Whether `point`'s answer matches the no-reduction answer; None while that is unknown."""
        baseline = self.baseline(point.key)
        return None if baseline is None else same_answer(point.answer, baseline.answer)

    def prefill_fraction(self, point: RunPoint) -> float | None:
        """`point`'s prefill time over the no-reduction run's; None while that is unknown."""
        baseline = self.baseline(point.key)
        if baseline is None or not baseline.prefill_seconds:
            return None
        return point.prefill_seconds / baseline.prefill_seconds

    def first_answer_fraction(self, point: RunPoint) -> float | None:
        """`point`'s wait for a first answer (frames, vision, merge, prefill) over the no-reduction run's; None while
        that is unknown."""
        baseline = self.baseline(point.key)
        if baseline is None or not baseline.first_answer_seconds:
            return None
        return point.first_answer_seconds / baseline.first_answer_seconds


def same_answer(first: str, second: str) -> bool:
    """Equal up to case, spacing and trailing punctuation ("Red." and "red" agree)."""
    return _normalised(first) == _normalised(second)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".!?,;:").strip().lower()
