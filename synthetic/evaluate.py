"""Exact-match accuracy of a video LLM on held-out synthetic questions, asked as the app asks them.

Frames are sampled as the app samples them (`aim_core.video.frame_indices`), preprocessed by the model's own
processor from the chat-template prompt, and answered by plain greedy `model.generate`. Wrong answers to "which way"
and "right after" are named by what they read instead (`mistake`). "Which way" is scored apart by how many other shapes
are seen moving (`other_movers`), and "right after" by how many shapes are first seen after the asked one
(`later_sightings`), since that says why those kinds are hard.

    python -m synthetic.evaluate --model assets/demo-model --n 700 --frames 32
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from aim_core.video import frame_indices
from synthetic.scenes import KINDS, Question, Scene, make_scene, pick, questions, render, split_seeds


@dataclass(frozen=True)
class Report:
    accuracy: float
    per_kind: dict[str, float]
    counts: dict[str, int]  # questions asked per kind
    num_frames: int
    mistakes: dict[str, Counter[str]]  # per kind that `mistake` names, what its wrong answers named
    # "which way" by `count_group` of its question's `other_movers`: (accuracy, questions)
    direction_by_movers: dict[str, tuple[float, int]]
    # "right after" by `count_group` of its question's `later_sightings`: (accuracy, questions)
    after_by_later: dict[str, tuple[float, int]]


COUNT_GROUPS = ("0", "1", "2", "3", "4+")


def other_movers(scene: Scene, frames: np.ndarray, question: Question) -> int:
    """How many shapes besides the one a "which way" question asks about show which way they move in the sampled
    frame indices `frames`, by the rule that lets the question be asked (`Sprite.seen_moving`). With none, any moving
    shape's direction is the answer; with more, the asked one must be found."""
    name = asked_name(question)
    return sum(sprite.name != name and sprite.seen_moving(frames) for sprite in scene.sprites)


def later_sightings(scene: Scene, frames: np.ndarray, question: Question) -> int:
    """How many shapes are first seen after the one a "right after" question asks about, in the sampled frame indices
    `frames`. With one, the answer is the last shape to appear; with more, the next one must be told from those after
    it, which wrong answers name most (`mistake`)."""
    firsts = [(sprite.name, int(shown[0])) for sprite in scene.sprites if len(shown := sprite.shown_at(frames))]
    asked = next(first for name, first in firsts if name == asked_name(question))
    return sum(first > asked for _, first in firsts)


def asked_name(question: Question) -> str:
    """The shape a "which way" or "right after" question asks about: "... the red ring move?" -> "red ring"."""
    return question.text.rsplit("the ", 1)[-1].removesuffix("?").removesuffix(" move")


def count_group(count: int) -> str:
    return COUNT_GROUPS[min(count, len(COUNT_GROUPS) - 1)]


def chat_prompt(processor: ProcessorMixin, question: str) -> str:
    """The generation prompt for one video and one question, from the processor's chat template."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def normalise(answer: str) -> str:
    return answer.strip().strip(".").lower()


@torch.no_grad()
def ask(model: PreTrainedModel, processor: ProcessorMixin, frames: np.ndarray, question: str) -> str:
    """The model's greedy answer to `question` about uint8 [T, H, W, 3] `frames`."""
    inputs = processor(text=chat_prompt(processor, question), videos=[frames], return_tensors="pt")
    output = model.generate(**inputs.to(model.dtype), max_new_tokens=4, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def mistake(scene: Scene, frames: np.ndarray, question: Question, answer: str) -> str | None:
    """What a wrong `answer` names, from the sampled frame indices `frames`: for "which way", whether some other
    shape seen moves that way (the answer read the wrong shape); for "right after", where the nearest seen shape with
    that colour (shape) comes in the order of first sightings, counted from the asked shape; None for other kinds."""
    shown = sorted((s for s in scene.sprites if len(s.shown_at(frames))), key=lambda s: s.shown_at(frames)[0])
    name = asked_name(question)
    asked = next((s for s in shown if s.name == name), None)
    if question.kind == "direction" and asked is not None:
        others = {s.direction for s in shown if s is not asked}
        return "another seen shape's direction" if answer in others else "no seen shape's direction"
    if question.kind == "after" and asked is not None:
        attribute = "colour" if "colour" in question.text else "shape"
        at = shown.index(asked)
        offsets = [k - at for k, s in enumerate(shown) if getattr(s, attribute) == answer]
        if not offsets:
            return "no seen shape's"
        nearest = min(offsets, key=lambda o: (abs(o), -o))
        if nearest == 0:
            return "the asked shape's own"
        return f"{nearest} after" if nearest > 0 else "an earlier shape's"
    return None


def held_out_questions(
    n: int, seed: int, answerable_from: int, not_from: int = 0, split: str = "test"
) -> list[tuple[Scene, list[Question]]]:
    """About `n` questions of `split`, the same number of each kind, with the scenes they are about.

    Videos are the seeds of `split` from offset `seed` on, with one question of each kind per video while that kind
    still needs questions, drawn with answers balanced (`scenes.pick`). Questions are those answerable from
    `answerable_from` uniformly sampled frames and, with `not_from`, not from that many (questions about short events).
    """
    quota = math.ceil(n / len(KINDS))
    asked = dict.fromkeys(KINDS, 0)
    chosen: list[tuple[Scene, list[Question]]] = []
    for video_seed in split_seeds(split, len(KINDS) * quota * 50, offset=seed):
        if all(count >= quota for count in asked.values()):
            break
        scene = make_scene(video_seed)
        wanted = tuple(kind for kind in KINDS if asked[kind] < quota)
        fitting = [q for q in questions(scene) if not_from < q.min_frames <= answerable_from]
        about_scene = list(pick(fitting, np.random.default_rng(video_seed), 1, wanted))
        if about_scene:
            for question in about_scene:
                asked[question.kind] += 1
            chosen.append((scene, about_scene))
    return chosen


def evaluate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    n: int,
    seed: int,
    num_frames: int,
    split: str = "test",
    size: int | None = None,
) -> Report:
    """Accuracy on the `held_out_questions` answerable from `num_frames` frames, each video rendered at `size` px
    (default: the processor's input size; the processor resizes any other size)."""
    size = size or processor.video_processor.size["height"]
    hits: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    mistakes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    by_movers: dict[str, list[bool]] = {group: [] for group in COUNT_GROUPS}
    by_later: dict[str, list[bool]] = {group: [] for group in COUNT_GROUPS}
    for scene, asked in held_out_questions(n, seed, num_frames, split=split):
        picked = frame_indices(scene.num_frames, num_frames)
        frames = render(scene, size, picked)
        for question in asked:
            answer = normalise(ask(model, processor, frames, question.text))
            hits[question.kind].append(answer == question.answer)
            if question.kind == "direction":
                by_movers[count_group(other_movers(scene, picked, question))].append(answer == question.answer)
            if question.kind == "after":
                by_later[count_group(later_sightings(scene, picked, question))].append(answer == question.answer)
            if answer != question.answer and (named := mistake(scene, picked, question, answer)) is not None:
                mistakes[question.kind][named] += 1
    per_kind = {kind: float(np.mean(h)) for kind, h in hits.items()}
    every = [ok for h in hits.values() for ok in h]
    counts = {kind: len(h) for kind, h in hits.items()}
    return Report(float(np.mean(every)), per_kind, counts, num_frames, mistakes, _scored(by_movers), _scored(by_later))


def _scored(groups: dict[str, list[bool]]) -> dict[str, tuple[float, int]]:
    """{group: (accuracy, questions)} for the groups that have questions."""
    return {group: (float(np.mean(hits)), len(hits)) for group, hits in groups.items() if hits}


def format_report(report: Report, title: str) -> str:
    kinds = " ".join(f"{kind} {acc:.3f} ({report.counts[kind]})" for kind, acc in report.per_kind.items())
    named = "; ".join(
        f"{kind}: " + ", ".join(f"{label} {count}" for label, count in counter.most_common())
        for kind, counter in report.mistakes.items()
        if counter
    )
    line = f"{title}: accuracy {report.accuracy:.3f} on {sum(report.counts.values())} questions | {kinds}"
    if named:
        line += f" | wrong answers named {named}"
    for scored_by, groups in (
        ("which way, by how many other shapes are seen moving", report.direction_by_movers),
        ("right after, by how many shapes are first seen after the asked one", report.after_by_later),
    ):
        if groups:
            line += f" | {scored_by}: " + ", ".join(f"{group} {acc:.3f} ({n})" for group, (acc, n) in groups.items())
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description="Exact-match accuracy of a saved model on held-out questions")
    parser.add_argument("--model", default="assets/demo-model", help="a folder saved by synthetic.train_demo_model")
    parser.add_argument("--n", type=int, default=700, help="questions, the same number of each kind")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="offset into the test split's videos")
    args = parser.parse_args()
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    report = evaluate(model, processor, args.n, args.seed, args.frames)
    print(format_report(report, f"{args.model}, test, {args.frames} frames"))


if __name__ == "__main__":
    main()
