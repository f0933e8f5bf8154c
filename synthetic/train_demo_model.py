"""Train the offline demo model: a small stock LLaVA-OneVision that answers synthetic long-video questions.

    python -m synthetic.train_demo_model --out assets/demo-model --seed 0

From scratch, on CPU, seeded: the data of every step depends only on (seed, stage, step) and every stage ends after
its number of steps, so a run is reproducible from its seed on any machine, up to floating-point differences. It
takes about 3.8 hours on 2 cores (`STAGES`); a checkpoint every few hundred steps lets it stop and go on where it
stopped:

    python -m synthetic.train_demo_model --out assets/demo-model --seed 0 --run out/demo-model-run --resume

The run folder keeps the checkpoint and the log (copied next to the model at the end). The prompt is exactly the
chat template's generation prompt for one video and one question; the loss is on the answer and the closing
<|im_end|>.

Three stages, because trained only end to end from answers, a random vision tower and language model spend far
longer than the training budget learning the answers' priors before they start to look at the video:

1. language: the language model learns to answer from *target features*, what the projector should output for each
   pooled visual token given where the scene's shapes are (`TargetFeatures`). These cost no vision tower, so the
   language model sees many short videos first, then long ones.
2. vision: the vision tower and projector learn to produce the target features from pixels (regression).
3. joint: the whole model, from pixels, on the answers, with the regression kept as an auxiliary loss.

In the language and joint stages, linear probes (`Probes`, dropped after training) also read, from each video
token, facts about the shape under it that the harder questions build on: when the shape was first seen, where it
started, which way it has moved, and which shape appeared just before it; and, from the values one head group of
layer 4 takes from each token, that token's own colour and shape (the values the "right after" guide copies). The
direction is read through the direction words' own input embeddings, so a moved shape's tokens come to hold the
answer's word as they hold their colour's (`PROBES`). One more probe reads a "which way" question's answer from the
asked shape's name in the question (`NAME_PROBE`). The late stages ask "which way" and "right after" three times a
video each (`Stage.focus`). The last five stages also guide where those two questions' asked name looks (`GUIDES`):
some heads' attention from the name to the tokens of the shape the answer is read from.

The last three stages teach the language model to do without what AIM takes away: each step its questions may lose
the video after a drawn layer (`Stage.video_layers`, exactly AIM's pruning of every video token from there on), and
half the steps of the first two, all of the last's, show the frames merged as AIM merges them (`merged_features`).

All the questions about one video share the prompt up to and including the video tokens, so the language model
runs each video's prefix once, then all its questions' remaining tokens in one row on top of its KV cache, each
question masked to see only the prefix and itself. This gives the same logits as running each full prompt on its
own (a test checks it).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
from transformers.models.qwen2.modeling_qwen2 import rotate_half

from aim_core.merge import MAX_MERGE_ROUND, merge_frames, unmerge
from aim_core.random_models import LlavaOnevisionShape, build_llava_onevision, build_tokenizer
from aim_core.video import frame_indices
from synthetic.evaluate import asked_name, chat_prompt, evaluate, format_report
from synthetic.scenes import (
    COLOURS,
    DIRECTIONS,
    KINDS,
    NUMBERS,
    SHAPES,
    Question,
    Scene,
    Sprite,
    make_scene,
    pick,
    questions,
    questions_seen,
    render,
    sampling_grids,
    split_seeds,
)

# 64 px frames in 8 px patches: 8x8 patches, pooled to 4x4 = 16 visual tokens per frame (+1 newline per video).
# RoPE base 1e6, as the published Qwen2 models: at 1e4 only about 5 of a 32-wide head's 16 frequencies turn less
# than a radian over a 32-frame video's ~530 positions, and a question looks its shapes up by content across all of
# them. Fresh language models trained 600 steps on 4- and 8-frame videos (target features, "which way" asked often)
# answered 32-frame validation videos at 0.51 with 1e6 against 0.41 with 1e4, level at 8 frames (0.63 each). The full
# recipe with it (run demo-v5) tested level with 1e4's at 32 frames (81.7% vs 81.6%) and ahead at 128 (70.0% vs
# 61.9%): it helps videos longer than those trained on, not the trained lengths.
SHAPE = LlavaOnevisionShape(
    image_size=64,
    patch_size=8,
    vision_hidden=96,
    vision_layers=4,
    vision_heads=4,
    text_hidden=192,
    text_layers=12,
    text_heads=6,
    text_kv_heads=2,
    text_intermediate=576,
    max_positions=4096,
    rope_theta=1e6,
)
POOLED = 4  # pooled visual tokens per frame side
WORDS = (*COLOURS, *SHAPES, *DIRECTIONS)  # the words that name what a scene shows


@dataclass(frozen=True)
class Stage:
    """A stretch of training: which parameters learn from which loss, on videos of which lengths."""

    name: str  # "language", "vision" or "joint"
    steps: int
    lr: float
    frames: tuple[int, ...] = (1,)  # frames per video, drawn uniformly at each step
    videos: int = 8  # videos per step ("vision": frames per step)
    questions_per_kind: int = 2  # per video; the questions share the video's prefix, so more of them cost little
    focus: tuple[str, ...] = ()  # kinds asked more often, on only the videos that have one (`training_batch`)
    focus_questions: int = 3  # per video, of each focus kind
    guided: bool = False  # whether the `GUIDES` pull on its questions' attention
    # In how many decoder layers the questions see the video, one drawn per step (`video_layers_at`); () = all.
    video_layers: tuple[int, ...] = ()
    merged: float = 0.0  # share of steps that show the language model merged frames (`merged_features`)


# About 3.8 hours on 2 cores, by run r4 of this recipe: alone at 2 threads its stages took 498, 749, 1,573, 1,766,
# 1,141, about 1,550 (the sixth shared the cores for part of its 3,168 s; 1.5 s a step alone), 1,526, 1,327, 1,218,
# 1,475 and 756 s. Short videos first: how many videos the language model sees decides how soon it
# learns to look up the words of a question among the visual tokens, and short ones are cheap. "Which way" and "right
# after" stay near chance when asked as often as the other kinds: they need several questions a video, for many steps,
# before the answers follow what the tokens know (probed) of their shape's direction and predecessor. Those stages come
# last, after every other kind has been learnt, and still ask one question of each other kind.
# Learning rates are half the 8-layer recipe's (the joint stage's 2e-4, a third below its 3e-4): at 2e-3 the
# 12-layer language model learnt the short videos so slowly that it was still far behind after the middle stage
# (300 steps of the first language stage: loss 0.39 at 2e-3, 0.31 at 1e-3, 0.32 at 5e-4 with better answers).
FOCUS = ("after", "direction")
# AIM prunes the video from the middle layers on and merges each frame's tokens before the LLM; the published models it
# was made for read the video early and take merged tokens untrained, this one must learn both. It learns merged tokens
# in the released AIM code's rounds (all of set A each round), which `AIMConfig()` merged in until run r4, so every
# `AIMConfig()` below is `AIMConfig(merge_round=0.5)` today. An earlier recipe, the same first eight stages then guided
# stages of 1,001 and 2,002 steps with neither (run r1), read "which appears first" from the video in the last layers
# (100% of test questions, 86% with `AIMConfig(merge_keep=1.0)`) and lost "last" and "which way" to merging (99% -> 75%
# and 96% -> 71% with `AIMConfig(prune_start=1.0, prune_end=1.0)`): 76.8% under `AIMConfig()` against 93.7% unreduced
# (504 questions, seed 0). 600 steps on top of it with the cut alone: pruning alone 92.1% (600 steps without: 88.5%),
# `AIMConfig()` 82.3% (79.8%), merging alone 82.7% (84.3%). 600 with both, half the steps merged: `AIMConfig()` 85.9% of
# 94.2%, merging alone 86.1%; 600 more with every step merged (run r3): 87.5% of 93.8%, merging alone 88.5%, in 4.4 h
# all told. Merging alone kept rising with the merged steps, so here the last two guided stages take both reductions
# (half their steps merged; 2,200 steps in place of the earlier recipe's 3,003 unreduced ones) and a last stage merges
# every step: 1,700 merged steps against r3's 900, in 1,403 steps fewer. Run r4 of this recipe kept 96.0% and 96.4%
# under `AIMConfig()` (the two sweeps), 99.4% and 99.2% merging in rounds of a quarter (today's default). More merged
# training does not close that gap: a twelfth stage on top of r4, this last one with every step merged to a quarter (790
# s), kept 96.0% and 94.9% (quarter rounds 100.4% and 99.6%; unreduced 94.0% of the 32-frame test). At 16 tokens a frame
# the released rounds (16 -> 8 -> 4, all of set A each time) fold a small shape in with another far more often
# (`benchmarks.merge_folding`).
GUIDED = Stage("joint", 1200, 1e-4, frames=(16, 32), videos=4, questions_per_kind=1, focus=FOCUS, guided=True)
REDUCED = replace(GUIDED, video_layers=(6, 8, 10, 12), merged=0.5)
STAGES = (
    Stage("vision", 2000, 1e-3, videos=64),
    Stage("language", 1200, 1e-3, frames=(1, 2), videos=12),
    Stage("language", 2000, 1e-3, frames=(2, 4, 8), videos=8),
    Stage("language", 1800, 5e-4, frames=(8, 16, 32), videos=4),
    Stage("language", 1000, 5e-4, frames=(4, 8, 16, 32), videos=6, questions_per_kind=1, focus=FOCUS),
    Stage("joint", 1000, 2e-4, frames=(8, 16, 32, 64), videos=4, questions_per_kind=1, focus=FOCUS),
    GUIDED,
    replace(GUIDED, steps=1000),
    # The last three also teach the language model to do without what AIM takes away (`REDUCED`).
    replace(REDUCED, steps=1000),
    REDUCED,
    replace(REDUCED, steps=600, merged=1.0),
)


def build(seed: int) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """A randomly initialised model of SHAPE with a tokenizer trained on every word the questions use."""
    texts = sorted({q.text for s in split_seeds("train", 300) for q in questions(make_scene(s))})
    # Repeated so that every word is one token both inside a question (" red") and where no space precedes it: an
    # answer follows the generation prompt's newline ("red"), a chat role its <|im_start|>. Answers that share a
    # first token ("r" of "ring" and "right") would leave the choice to a later token, which must look again.
    words = [*COLOURS, *SHAPES, *DIRECTIONS, *NUMBERS, "yes", "no", "user", "assistant"]
    tokenizer = build_tokenizer([*texts, *[" ".join(words)] * 50, *words * 50], vocab_size=400)
    return build_llava_onevision(SHAPE, tokenizer, seed=seed)


def word_vectors(
    model: LlavaOnevisionForConditionalGeneration, processor: LlavaOnevisionProcessor
) -> dict[str, torch.Tensor]:
    """{word: the unit direction of the input embedding of " word"} for every word of `WORDS`."""
    embeddings = model.get_input_embeddings().weight.detach()
    token = processor.tokenizer.convert_tokens_to_ids
    return {w: F.normalize(embeddings[token("Ġ" + w)], dim=0) for w in WORDS}


class TargetFeatures:
    """What the projector should output for each pooled visual token: for every shape overlapping the token's cell,
    its overlap times (colour vector + shape vector + pair vector + position code); nothing for the background.

    The colour and shape vectors are the directions of the language model's initial input embeddings of the words
    the questions use (" red", " ring"), so from the first step a question word and the tokens it asks about point
    the same way. The pair vector (a fixed random direction per colour and shape) tells "the red ring" apart without
    comparing sums: a cell half covered by the red ring and one fully covered by a red circle score the same on
    red + ring, and questions about one object ("which way", "right after", "does a red ring appear") need that
    difference. The position code (x and y along two fixed random directions) is what "which way does it move"
    needs: the language model's own positions only say where a token is in the sequence.
    """

    def __init__(self, model: LlavaOnevisionForConditionalGeneration, processor: LlavaOnevisionProcessor, seed: int):
        words = word_vectors(model, processor)
        self.colours = {c: words[c] for c in COLOURS}
        self.shapes = {s: words[s] for s in SHAPES}
        generator = torch.Generator().manual_seed(seed)
        hidden = model.config.text_config.hidden_size
        self.x, self.y = (F.normalize(torch.randn(hidden, generator=generator), dim=0) for _ in range(2))
        self.pairs = {
            f"{c} {s}": F.normalize(torch.randn(hidden, generator=generator), dim=0) for c in COLOURS for s in SHAPES
        }
        self.newline = model.model.image_newline

    def __call__(self, scene: Scene, frames: np.ndarray) -> torch.Tensor:
        """[len(frames) * 16, hidden] targets of the pooled tokens of the given frame indices, in the model's order."""
        out = torch.zeros(len(frames), POOLED, POOLED, len(self.x))
        for sprite in scene.sprites:
            for k in sprite.shown_at(frames):
                cx, cy = sprite.centre(frames[k])
                overlap = torch.tensor(_cover(sprite, float(cx), float(cy)), dtype=torch.float32)[..., None]
                code = self.colours[sprite.colour] + self.shapes[sprite.shape] + self.pairs[sprite.name]
                code = code + 2 * (float(cx) - 0.5) * self.x + 2 * (float(cy) - 0.5) * self.y
                out[k] += overlap * code
        return out.flatten(0, 2)

    def with_newline(self, scene: Scene, frames: np.ndarray) -> torch.Tensor:
        """The targets followed by the model's newline embedding: a stand-in for the whole video's features."""
        return torch.cat([self(scene, frames), self.newline[None]])


def _cover(sprite: Sprite, cx: float, cy: float, side: int = POOLED) -> np.ndarray:
    """[side, side]: how much of each cell of a side x side grid (the pooled tokens') the sprite's box covers when
    centred at (cx, cy), in cells."""
    half = sprite.size / 2
    return np.outer(_cell_overlap(cy, half, side), _cell_overlap(cx, half, side))


def _cell_overlap(centre: float, half: float, side: int) -> np.ndarray:
    """How much of each of `side` cells along one axis [centre - half, centre + half] covers, in cell widths."""
    edges = np.arange(side + 1) / side
    return np.clip(np.minimum(centre + half, edges[1:]) - np.maximum(centre - half, edges[:-1]), 0, None) * side


@dataclass(frozen=True)
class Probe:
    """A training-only linear read-out, from the language model's video tokens, of a fact about the shape under each
    token that the harder questions build on."""

    layer: int  # decoder layers before the probe
    classes: int
    weight: float  # of its cross-entropy, added to the answers' loss
    words: tuple[str, ...] = ()  # if given, the classes are these words, read through their fixed input embeddings
    value_head: int | None = None  # if given, it reads the values this key/value head of layer `layer` takes


# "direction" is read through the direction words' own input embeddings, early (layer 2) and at a larger weight: with
# a learnt head at a small weight (layer 3, 0.02) it reached 0.92 on the tokens in the previous recipe while the
# answers stayed near the starting-position prior (0.4-0.55). Fresh language models on target features, 4- and
# 8-frame videos, "which way" asked three times a video, lr 1e-3, 96 validation videos of 8 frames: "which way"
# 0.27 after 600 of 900 steps with the learnt head, 0.62 with this probe at weight 1 (the other kinds far behind)
# and 0.62 at weight 0.2 after a 600-step run (the other kinds within 0.1 of the learnt head's); after 900 steps the
# learnt head's run caught up (0.59). So the answers learn to read the direction sooner, not yet better.
# The value probes read each token's own colour and shape from what the "right after" guide's heads take from it
# (layer 4, heads 3-5, which share key/value head 1). The name found the next shape (0.71 of those heads' attention,
# even in wrong answers) but the values it found barely said which: a linear probe on them, trained at weight 0.1,
# read the colour at 0.16 over its first 100 steps (chance 0.17), 0.53 after 1,000. A stage of 2,002 steps on top of
# demo-v9 with them at weight 0.3 (colour 0.19 -> 0.97, shape 0.49 -> 0.99): 32-frame test 90.7% ("right after" 71%)
# against 90.0% (66%); at weight 1, 90.6% (69%); 1,002 steps at 0.1, 90.1% (68%) (demo-v10: 0.3). From the first
# language stage on, as here, one run of the whole recipe from seed 0 tested 93.1% ("which way" 96%, "right after" 83%,
# "what colour / shape is" 89% against demo-v10's 100%) but held up far worse under reduction: 77.4% at 13.6% of the
# prefill FLOPs against 93.7% unreduced (`benchmarks.synthetic_sweep`, seed 0), where demo-v10 keeps 87.9% of 90.9%.
PROBES: dict[str, Probe] = {
    "first_seen": Probe(2, 2, 0.02),
    "start_x": Probe(2, 8, 0.02),
    "start_y": Probe(2, 8, 0.02),
    "direction": Probe(2, len(DIRECTIONS), 0.2, words=DIRECTIONS),
    "before_colour": Probe(4, len(COLOURS), 0.02),
    "before_shape": Probe(4, len(SHAPES), 0.02),
    "value_colour": Probe(4, len(COLOURS), 0.3, value_head=1),
    "value_shape": Probe(4, len(SHAPES), 0.3, value_head=1),
}
WORD_PROBE_SCALE = 10.0  # logits of a word probe: this times the cosine of the hidden state and each word's embedding


@dataclass(frozen=True)
class NameProbe:
    """A training-only linear read-out of a question's answer from the asked shape's name in the question."""

    kinds: tuple[str, ...]  # question kinds it reads the answer of
    layer: int
    weight: float


# The name probe reads a question's answer from the asked shape's name in the question (its last word: " ring" of
# "Which way does the red ring move?"), so that the name itself looks the shape up among the video tokens, as the
# name of a "does a red ring appear" question must, and the answer copies it from there. Without it the answer
# position looks up "a token that holds a direction", any shape's. Fresh language models on target features (4- and
# 8-frame videos, "which way" asked three times a video, 600 steps, lr 1e-3), every "which way" question of 150
# validation videos at 8 frames: 0.62 (0.68 with one other shape seen moving, 0.47 with three), 0.81 with this probe
# at layer 4, weight 0.1 (0.85 and 0.71), 0.90 after 1,200 steps; at 32 frames 0.36 against 0.68. At weight 0.3, 0.77;
# at 1, 0.72, the other kinds far slower. Asked of "right after" too, in runs that ask both kinds three times a video,
# it took "right after" at 32 frames from 0.21 to 0.40 and "which way" from 0.57 to 0.51 (8 frames). The whole recipe
# with it (run demo-v6) tested 83.7% against 81.7% without (demo-v5) at 32 frames, "which way" 45% against 38%.
NAME_PROBE = NameProbe(kinds=("direction",), layer=4, weight=0.1)


@dataclass(frozen=True)
class Guide:
    """A training-only pull on where a question's asked name looks: the loss is minus the log of the share of some
    heads' attention, at one layer, from the name's last token to the prefix, that lands on the tokens of one shape."""

    kind: str  # the question kind it guides
    target: str  # "asked": the named shape's tokens; "next": those of the shape first seen right after it
    layer: int
    heads: tuple[int, ...]
    weight: float


# The guides teach the lookup that "which way" and "right after" fail at. In demo-v6, at 32 frames, a "which way"
# question's name put 0.3-0.4 of its attention at layers 2 and 3 (every head) on the asked shape's tokens and 0.4-0.5
# on other moving shapes' (eager attention, 40 validation questions), and every wrong answer of its test was
# another seen shape's direction. "Which way" looks at layer 2, where the tokens first hold their direction (the
# direction probe's layer); "right after" at layer 4, where they hold the shape seen before them (the before probes'),
# so the name finds the shape whose predecessor it names. One group of heads each (they share keys and values).
# Added as a last stage on top of demo-v6 (`--start-from`, `--start-stage 6`), 32-frame test, 700 questions:
# 600 steps without the guides 84.9% ("which way" 49%, "right after" 64%); 600 steps at weight 0.1, 85.6% (59%, 62%);
# 1,200 steps at weight 0.5, 88.4% (76%, 63%), its heads' share on the asked shape 0.72 and on the next one 0.71
# (demo-v7). A second guided stage of 1,000 steps on top (`--start-stage 7`): 89.6% (78%, 65%) at weight 0.5, 89.7%
# (80%, 64%) at 1.0; at 0.5 `AIMConfig()` kept 98.7% of it (seed-0 sweep questions), at 1.0 96.5% (demo-v8: 0.5).
# A third, of 1,001 steps (`--start-stage 8`): 90.0% (80%, 66%: demo-v9).
# "Right after" does not follow its guide yet: the name now looks at the right shape, but the answer does not read it.
# A linear head reading the answer from the name after the lookup, beside the third stage, did not change that:
# 89.0% (77%, 65%) at layer 6, weight 0.1; 90.0% (82%, 66%) at layer 5, weight 0.3; the head read 0.5 of the answers.
# Nor did six more 1,002-step stages on top of demo-v9 (32-frame test: 89.3-89.7%, "right after" 62-67%): the answer
# position guided to the next shape at layer 6 (it looked 0.65 there); the before probes at weight 0.2 (0.74/0.85 ->
# 0.84/0.89); those probes and the guide on just the frame where the next shape is first seen (0.94/0.96); probes and
# guide at layer 6; the answer position guided to the name at layer 6 (1.00 there), with and without the first-frame
# change. The lookup is not what fails: in wrong answers the name still puts 0.71 of its guided heads' attention on the
# next shape (0.81 in right ones; eager attention, 120 test questions). The read is: "right after" falls with the shapes
# first seen after the asked one (`synthetic.evaluate`: 75% with one, 65% with two, 44% with three).
# The values the guided heads take from the next shape barely held its colour; the value probes (`PROBES`) teach them
# that. A fourth stage of 2,002 steps with them (`--start-stage 9`): 90.7% (80%, 71%: demo-v10).
# Now the name holds the answer, and the answer position does not take it. Four 1,002-step stages on top of demo-v10
# did not change that (32-frame test): a linear head reading the "right after" answer from the name at layer 5 (it
# read 0.8 of them) 90.1% ("which way" 81%, "right after" 67%); with the before probes at weight 0.2 on the frame a
# shape is first seen, 89.9% (80%, 66%); that head at layer 6 through the final norm and lm_head (read 0.8 through the
# answer words' rows), with the answer position guided to the name at layer 6 (heads 0-2, weight 0.3, share 1.00),
# 90.1% (78%, 70%); the same through the rows of the question's words (" red", read 0.48), 90.7% (78%, 75%), but on
# 1,400 other test questions 89.9% (78%, 69.5%) where demo-v10 gives 90.7% (80%, 71.5%).
GUIDES = (
    Guide("direction", "asked", layer=2, heads=(0, 1, 2), weight=0.5),
    Guide("after", "next", layer=4, heads=(3, 4, 5), weight=0.5),
)


def token_owners(scene: Scene, frames: np.ndarray, side: int = POOLED) -> np.ndarray:
    """[len(frames), side, side]: the index in `scene.sprites` of the shape under each token of a side x side grid
    (the pooled tokens'), the one that covers most of its cell (at least a quarter of it, and twice any other shape);
    -1 where none does."""
    cover = np.zeros((len(scene.sprites), len(frames), side, side))
    for i, sprite in enumerate(scene.sprites):
        for k in sprite.shown_at(frames):
            cx, cy = sprite.centre(frames[k])
            cover[i, k] = _cover(sprite, float(cx), float(cy), side)
    order = np.sort(cover, axis=0)
    return np.where((order[-1] >= 0.25) & (order[-2] < order[-1] / 2), cover.argmax(0), -1)


def moment_labels(scene: Scene, frames: np.ndarray) -> dict[str, torch.Tensor]:
    """{label: [len(frames) * 16] class per pooled token, -100 where it does not apply} for the shape under the
    token (`token_owners`)."""
    shown = [s.shown_at(frames) for s in scene.sprites]
    owner = token_owners(scene, frames)
    first = {i: int(k[0]) for i, k in enumerate(shown) if len(k)}
    firsts = sorted(first.values())
    labels = {name: np.full(owner.shape, -100) for name in PROBES}
    for i, k0 in first.items():
        sprite = scene.sprites[i]
        x0, y0 = sprite.centre(frames[k0])
        earlier = [j for j, k in first.items() if k < k0]
        before = max(earlier, key=lambda j: first[j]) if earlier else None
        # Ties make the order unreadable, as they do for the questions (`_answerable`).
        before_known = before is not None and firsts.count(k0) == 1 and firsts.count(first[before]) == 1
        for k in shown[i]:
            mine = owner[k] == i
            labels["first_seen"][k][mine] = int(k == k0)
            labels["start_x"][k][mine] = min(int(x0 * 8), 7)
            labels["start_y"][k][mine] = min(int(y0 * 8), 7)
            if sprite.moved(frames[k0], frames[k]):
                labels["direction"][k][mine] = DIRECTIONS.index(sprite.direction)
            labels["value_colour"][k][mine] = list(COLOURS).index(sprite.colour)
            labels["value_shape"][k][mine] = SHAPES.index(sprite.shape)
            if before_known:
                labels["before_colour"][k][mine] = list(COLOURS).index(scene.sprites[before].colour)
                labels["before_shape"][k][mine] = SHAPES.index(scene.sprites[before].shape)
    return {name: torch.tensor(v.reshape(-1)) for name, v in labels.items()}


class Probes(torch.nn.Module):
    """The `PROBES` on the video tokens: a linear head each, or for word probes the words' unit input embeddings
    (`word_vectors`, fixed); and the `NAME_PROBE` on the questions, a linear head over `WORDS`."""

    def __init__(self, shape: LlavaOnevisionShape, word_vectors: dict[str, torch.Tensor]):
        super().__init__()
        hidden, head_dim = shape.text_hidden, shape.text_hidden // shape.text_heads
        self.heads = torch.nn.ModuleDict()
        for name, probe in PROBES.items():
            if probe.words:
                words = torch.stack([word_vectors[w] for w in probe.words])
                self.register_buffer(f"{name}_words", words, persistent=False)
            elif probe.value_head is None:
                self.heads[name] = torch.nn.Linear(hidden, probe.classes)
        self.name = torch.nn.Linear(hidden, len(WORDS))
        # After the name probe, so that the heads above start as they did in the runs before the value probes.
        for name, probe in PROBES.items():
            if probe.value_head is not None:
                self.heads[name] = torch.nn.Linear(head_dim, probe.classes)

    def logits(self, name: str, states: torch.Tensor) -> torch.Tensor:
        if PROBES[name].words:
            return WORD_PROBE_SCALE * F.normalize(states, dim=-1) @ getattr(self, f"{name}_words").T
        return self.heads[name](states)

    def forward(
        self,
        model: LlavaOnevisionForConditionalGeneration,
        states: tuple[torch.Tensor, ...],
        question_states: tuple[torch.Tensor, ...],
        batch: Batch,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The probes' weighted cross-entropy on `batch.probe_labels` and `batch.name_labels`, and each probe's
        accuracy on the tokens it applies to ("name" for the name probe).

        states: the prefix's hidden states, embeddings first, each [V, prefix length, hidden].
        question_states: the suffixes' hidden states, embeddings first, each [Q, S, hidden].
        """
        video = batch.frame_token_positions(model.config.video_token_index)
        loss, accuracy = states[0].new_zeros(()), {}
        values: dict[int, torch.Tensor] = {}  # {layer: [V, T * 16, kv heads, head_dim]}, shared by its value probes
        for name, probe in PROBES.items():
            target = batch.probe_labels[name]
            valid = target >= 0
            if not valid.any():
                continue
            read = states[probe.layer][:, video]  # [V, T * 16, hidden]
            if probe.value_head is not None:
                if probe.layer not in values:
                    values[probe.layer] = token_values(model, probe.layer, read)
                read = values[probe.layer][:, :, probe.value_head]
            logits = self.logits(name, read)
            loss = loss + probe.weight * F.cross_entropy(logits[valid], target[valid])
            accuracy[name] = float((logits.argmax(-1) == target)[valid].float().mean())
        named = (batch.name_labels >= 0).nonzero()[:, 0]
        if len(named):
            target = batch.name_labels[named]
            logits = self.name(question_states[NAME_PROBE.layer][named, batch.name_positions[named]])
            loss = loss + NAME_PROBE.weight * F.cross_entropy(logits, target)
            accuracy["name"] = float((logits.argmax(-1) == target).float().mean())
        return loss, accuracy


@dataclass
class Batch:
    """V videos of the same length and Q questions about them, each prompt split where the video tokens end."""

    scenes: list[Scene]
    frames: list[np.ndarray]  # frame indices sampled from each scene
    pixel_values: torch.Tensor  # [V, T, 3, H, W]
    prefix: torch.Tensor  # [1, P] token ids up to and including the last video token, the same for every video
    suffix: torch.Tensor  # [Q, S] question, generation prompt, answer, <|im_end|>; right-padded
    labels: torch.Tensor  # [Q, S] the next token where it is part of the answer, else -100
    lengths: torch.Tensor  # [Q] real (unpadded) tokens of each suffix row
    video_of: torch.Tensor  # [Q] which video each question is about
    questions: list[Question]
    probe_labels: dict[str, torch.Tensor]  # {`PROBES` label: [V, T * 16]} from `moment_labels`
    name_positions: torch.Tensor  # [Q] where in its suffix row each question names its shape; 0 if it names none
    name_labels: torch.Tensor  # [Q] the answer's index in WORDS for `NAME_PROBE.kinds`, else -100
    guided: torch.Tensor  # [Q, T * 16] bool: the video tokens its `GUIDES` entry pulls a question's name to

    def frame_token_positions(self, video_token: int) -> torch.Tensor:
        """[T * 16] where the pooled frame tokens are in the prefix: every video token but the closing newline."""
        return (self.prefix[0] == video_token).nonzero()[:-1, 0]


def make_batch(
    processor: LlavaOnevisionProcessor, scenes: list[Scene], frames: list[np.ndarray], asked: list[list[Question]]
) -> Batch:
    """Tokenise the prompts of `asked[v]` about `scenes[v]` shown at frame indices `frames[v]`."""
    tokenizer = processor.tokenizer
    videos = [render(scene, SHAPE.image_size, picked) for scene, picked in zip(scenes, frames)]
    inputs = processor(text=chat_prompt(processor, asked[0][0].text), videos=videos[:1], return_tensors="pt")
    pixels = processor.video_processor(videos=videos, return_tensors="pt")["pixel_values_videos"]
    ids = inputs["input_ids"][0]
    cut = int((ids == processor.video_token_id).nonzero().max()) + 1
    rows, video_of, flat, name_positions, name_labels, guided = [], [], [], [], [], []
    guides = {guide.kind: guide for guide in GUIDES}
    named_kinds = {*NAME_PROBE.kinds, *guides}
    for v, questions_about in enumerate(asked):
        owners = token_owners(scenes[v], frames[v]).reshape(-1)
        names = [sprite.name for sprite in scenes[v].sprites]
        for question in questions_about:
            tail = chat_prompt(processor, question.text).split(processor.video_token, 1)[1]
            prompt = tokenizer(tail, add_special_tokens=False)["input_ids"]
            answer = tokenizer(question.answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            rows.append((prompt, answer))
            video_of.append(v)
            flat.append(question)
            if question.kind in named_kinds:  # the asked name's last word, a shape (" ring"), is one token (`build`)
                name_end = tokenizer.convert_tokens_to_ids("Ġ" + asked_name(question).split()[-1])
                name_positions.append(len(prompt) - 1 - prompt[::-1].index(name_end))
            else:
                name_positions.append(0)
            probed = question.kind in NAME_PROBE.kinds
            name_labels.append(WORDS.index(question.answer) if probed else -100)
            if question.kind in guides:
                target = names.index(asked_name(question)) + (guides[question.kind].target == "next")
                guided.append(torch.from_numpy(owners == target))
            else:
                guided.append(torch.zeros(len(owners), dtype=torch.bool))
    if rows[0][0] != ids[cut:].tolist():
        raise AssertionError("the question tokens differ from the processor's: the prefix split is wrong")
    width = max(len(p) + len(a) for p, a in rows)
    suffix = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for k, (prompt, answer) in enumerate(rows):
        suffix[k, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        # Position j predicts token j + 1: the last prompt token predicts the first answer token.
        labels[k, len(prompt) - 1 : len(prompt) + len(answer) - 1] = torch.tensor(answer)
    lengths = torch.tensor([len(p) + len(a) for p, a in rows])
    moments = [moment_labels(scene, picked) for scene, picked in zip(scenes, frames)]
    probe_labels = {name: torch.stack([m[name] for m in moments]) for name in PROBES}
    return Batch(
        scenes,
        frames,
        pixels,
        ids[None, :cut],
        suffix,
        labels,
        lengths,
        torch.tensor(video_of),
        flat,
        probe_labels,
        torch.tensor(name_positions),
        torch.tensor(name_labels),
        torch.stack(guided),
    )


def video_features(model: LlavaOnevisionForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """[V, T * 16 + 1, hidden]: the projector's pooled tokens of each video, then the newline, as `generate` sees."""
    config = model.config
    return model.model.get_video_features(
        pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output


def answer_logits(
    model: LlavaOnevisionForConditionalGeneration,
    batch: Batch,
    features: torch.Tensor | None = None,
    video_layers: int | None = None,
) -> torch.Tensor:
    return answer_forward(model, batch, features, video_layers)[0]


def answer_forward(
    model: LlavaOnevisionForConditionalGeneration,
    batch: Batch,
    features: torch.Tensor | None = None,
    video_layers: int | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """[Q, S, vocab] logits of the suffix tokens, the prefix's hidden states ([V, P, hidden] after each layer) and the
    suffix tokens' ([Q, S, hidden] after each layer).
    `features` ([V, T * 16 + 1, hidden]) replace the model's own video features when given. With `video_layers`, the
    questions see the video tokens in the first that many decoder layers only, as if all were pruned after them.

    Each video's prefix runs once. Its questions then run one after another in one row, each attending to the whole
    prefix and to its own earlier tokens only, at the positions it would have alone: the prefix's keys and values are
    shared, not copied per question (copies made a 32-frame training step 1.3x slower), and the row holds no padding
    between questions, only after the last (rows of one slot per question, each as wide as the longest, were 20-44%
    padding)."""
    config, core = model.config, model.model
    if features is None:
        features = video_features(model, batch.pixel_values)
    embeds = core.get_input_embeddings()(batch.prefix).expand(len(features), -1, -1)
    is_video = (batch.prefix == config.video_token_index)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(is_video, features.to(embeds.dtype))
    cache = DynamicCache(config=core.language_model.config)
    states = core.language_model(
        inputs_embeds=embeds, cache=cache, use_cache=True, output_hidden_states=True
    ).hidden_states

    # Where each real suffix token goes: row `video`, column `column`, at `position` within its question.
    question = torch.arange(len(batch.lengths)).repeat_interleave(batch.lengths)  # [N] real tokens
    position = torch.arange(len(question)) - (batch.lengths.cumsum(0) - batch.lengths)[question]
    video = batch.video_of[question]
    column = torch.arange(len(question)) - torch.searchsorted(video, video)  # video_of is sorted (`make_batch`)
    shape = (len(features), int(column.max()) + 1)
    rows = torch.zeros(shape, dtype=batch.suffix.dtype)
    rows[video, column] = batch.suffix[question, position]
    owner = torch.full(shape, -1)  # which question each column holds; -1 for the padding after the last
    owner[video, column] = question
    positions = torch.zeros(shape, dtype=torch.long)
    positions[video, column] = position
    # Padding sees only the prefix and no real token sees it, so it changes nothing.
    own_question = (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] >= 0)
    own_question &= positions[:, None, :] <= positions[:, :, None]
    prefix_length = batch.prefix.shape[1]
    sees = torch.cat([torch.ones(*shape, prefix_length, dtype=torch.bool), own_question], dim=2)
    # Additive, not boolean: eager attention adds a 4-D mask to the scores as it is (diagnostics that read attention
    # weights run eager), so a boolean one would mask nothing there.
    blocked = torch.finfo(features.dtype).min
    mask = torch.where(sees, 0.0, blocked).to(features.dtype)[:, None]
    hooks = []
    if video_layers is not None:
        no_video = mask.clone()
        no_video[..., :prefix_length].masked_fill_(batch.prefix[0] == config.video_token_index, blocked)

        def without_video(_layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return args, {**kwargs, "attention_mask": no_video}

        late = core.language_model.layers[video_layers:]
        hooks = [layer.register_forward_pre_hook(without_video, with_kwargs=True) for layer in late]
    try:
        suffix = core.language_model(
            input_ids=rows,
            attention_mask=mask,
            position_ids=prefix_length + positions,
            cache=cache,
            use_cache=True,
            output_hidden_states=True,
        )
    finally:
        for hook in hooks:
            hook.remove()

    def by_question(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.new_zeros(*batch.suffix.shape, hidden.shape[-1])  # padding's logits are 0 and its labels -100
        out[question, position] = hidden[video, column]
        return out

    question_states = tuple(by_question(hidden) for hidden in suffix.hidden_states)
    return model.lm_head(by_question(suffix.last_hidden_state)), states, question_states


def token_values(model: LlavaOnevisionForConditionalGeneration, layer_index: int, states: torch.Tensor) -> torch.Tensor:
    """[..., kv heads, head_dim]: the values the attention of decoder layer `layer_index` takes from hidden states
    [..., hidden] entering that layer."""
    layer = model.model.language_model.layers[layer_index]
    return layer.self_attn.v_proj(layer.input_layernorm(states)).unflatten(-1, (-1, layer.self_attn.head_dim))


def guide_loss(
    model: LlavaOnevisionForConditionalGeneration,
    states: tuple[torch.Tensor, ...],
    question_states: tuple[torch.Tensor, ...],
    batch: Batch,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The `GUIDES`' weighted loss and, per guided kind, the mean share of the guided heads' prefix attention that
    lands on the guided tokens ("look_direction").

    The guided layer's attention is recomputed from its input hidden states, for the name's token only and over the
    prefix only: the question's own earlier tokens, which it also sees, are left out of the softmax.
    states: the prefix's hidden states, embeddings first, each [V, P, hidden].
    question_states: the suffixes' hidden states, embeddings first, each [Q, S, hidden].
    """
    language = model.model.language_model
    prefix_length = batch.prefix.shape[1]
    video = batch.frame_token_positions(model.config.video_token_index)
    loss, share = states[0].new_zeros(()), {}
    for guide in GUIDES:
        rows = [k for k, q in enumerate(batch.questions) if q.kind == guide.kind and batch.guided[k].any()]
        if not rows:
            continue
        rows = torch.tensor(rows)
        layer = language.layers[guide.layer]
        attention = layer.self_attn
        head_dim, groups = attention.head_dim, attention.num_key_value_groups
        prefix = layer.input_layernorm(states[guide.layer])  # [V, P, hidden]
        names = layer.input_layernorm(question_states[guide.layer][rows, batch.name_positions[rows]])  # [R, hidden]
        keys = attention.k_proj(prefix).unflatten(-1, (-1, head_dim))  # [V, P, kv heads, head_dim]
        queries = attention.q_proj(names).unflatten(-1, (-1, head_dim))  # [R, heads, head_dim]
        cos, sin = language.rotary_emb(prefix, torch.arange(prefix_length)[None])  # [1, P, head_dim]
        keys = keys * cos[0, :, None] + rotate_half(keys) * sin[0, :, None]
        cos, sin = language.rotary_emb(prefix, (prefix_length + batch.name_positions[rows])[None])  # [1, R, head_dim]
        queries = queries * cos[0, :, None] + rotate_half(queries) * sin[0, :, None]
        heads = torch.tensor(guide.heads)
        keys = keys[batch.video_of[rows]][:, :, heads // groups]  # [R, P, guided heads, head_dim]
        scores = torch.einsum("rhd,rphd->rhp", queries[:, heads], keys) * attention.scaling
        on_target = torch.zeros(len(rows), prefix_length, dtype=torch.bool)
        on_target[:, video] = batch.guided[rows]
        landed = scores.softmax(-1).masked_fill(~on_target[:, None], 0).sum(-1)  # [R, guided heads]
        loss = loss + guide.weight * -torch.log(landed + 1e-6).mean()
        share[f"look_{guide.kind}"] = float(landed.detach().mean())
    return loss, share


def training_batch(processor: LlavaOnevisionProcessor, stage: Stage, seed: int, step: int) -> Batch:
    """Fresh training scenes, each with a random uniform sampling grid and `stage.questions_per_kind` questions of each
    kind answerable from exactly the frames sampled (answers balanced by `pick`). A stage with `focus` kinds keeps
    only the videos that have a question of one of them, and asks `stage.focus_questions` of each."""
    rng = np.random.default_rng([seed, STAGES.index(stage), step])
    num_frames = int(rng.choice(stage.frames))
    scenes, frames, asked = [], [], []
    asks = {kind: stage.focus_questions if kind in stage.focus else stage.questions_per_kind for kind in KINDS}
    tries = stage.videos * (20 if stage.focus else 4)
    first_seed = (seed * len(STAGES) + STAGES.index(stage)) * 10_000_000 + step * tries
    for scene_seed in split_seeds("train", tries, offset=first_seed):
        if len(scenes) == stage.videos:
            break
        scene = make_scene(scene_seed)
        grids = sampling_grids(scene.num_frames, num_frames)
        picked = grids[rng.integers(len(grids))]
        seen = questions_seen(scene, picked)
        chosen = [q for kind in KINDS for q in pick(seen, rng, asks[kind], (kind,))]
        wanted = any(q.kind in stage.focus for q in chosen) if stage.focus else bool(chosen)
        if wanted:
            scenes.append(scene)
            frames.append(picked)
            asked.append(chosen)
    return make_batch(processor, scenes, frames, asked)


def validation_batches(processor: LlavaOnevisionProcessor, num_frames: int = 32, videos: int = 48) -> list[Batch]:
    """Fixed validation videos sampled as the app samples them, one question of each kind per video."""
    batches = []
    for seed in split_seeds("val", videos):
        scene = make_scene(seed)
        picked = frame_indices(scene.num_frames, num_frames)
        fitting = [q for q in questions(scene) if q.min_frames <= num_frames]
        batches.append(make_batch(processor, [scene], [picked], [list(pick(fitting, np.random.default_rng(seed), 1))]))
    return batches


@torch.no_grad()
def validate(
    model: LlavaOnevisionForConditionalGeneration, batches: list[Batch], targets: TargetFeatures | None = None
) -> dict[str, float]:
    """Exact-match accuracy per kind under teacher forcing (right when every answer token is the argmax given the ones
    before it: exactly when greedy decoding gives the answer), from the pixels, or from the targets if given."""
    model.eval()
    hits: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    for batch in batches:
        features = None
        if targets is not None:
            features = torch.stack([targets.with_newline(s, f) for s, f in zip(batch.scenes, batch.frames)])
        right = (answer_logits(model, batch, features).argmax(-1) == batch.labels) | (batch.labels == -100)
        for question, ok in zip(batch.questions, right.all(-1).tolist()):
            hits[question.kind].append(ok)
    model.train()
    scores = {kind: float(np.mean(h)) for kind, h in hits.items() if h}
    return {"all": float(np.mean([ok for h in hits.values() for ok in h])), **scores}


def video_layers_at(stage: Stage, seed: int, step: int) -> int | None:
    """In how many decoder layers the questions of this step see the video (None: all)."""
    if not stage.video_layers:
        return None
    # Its own generator, so that the step's data is the same with or without the cut.
    return int(np.random.default_rng([seed, STAGES.index(stage), step, 1]).choice(stage.video_layers))


MERGE_KEEPS = (0.25, 0.5)  # the share of each frame's tokens a merged step keeps, one drawn per step


def merge_keep_at(stage: Stage, seed: int, step: int) -> float | None:
    """The merge keep ratio of this step's frames (None: not merged)."""
    rng = np.random.default_rng([seed, STAGES.index(stage), step, 2])
    return float(rng.choice(MERGE_KEEPS)) if rng.random() < stage.merged else None


def merged_features(features: torch.Tensor, keep: float) -> torch.Tensor:
    """[V, T * 16 + 1, hidden]: each frame's tokens merged to `keep` of them as AIM merges before the language model
    (bipartite matching in the released code's rounds), every token then holding its cluster's mean: what the merged
    token that stands for it holds. The newline stays."""
    videos, length, hidden = features.shape
    frames = features[:, :-1].reshape(-1, POOLED * POOLED, hidden)
    merged = merge_frames(frames, keep, MAX_MERGE_ROUND)
    means = unmerge(merged.tokens, merged.source)
    return torch.cat([means.reshape(videos, length - 1, hidden), features[:, -1:]], dim=1)


def vision_batch(stage: Stage, seed: int, step: int) -> tuple[list[Scene], list[int]]:
    """`stage.videos` random frames of fresh training scenes, most of them showing a shape."""
    rng = np.random.default_rng([seed, STAGES.index(stage), step])
    first_seed = 500_000_000 + (seed * len(STAGES) + STAGES.index(stage)) * 10_000_000 + step * stage.videos
    scenes = [make_scene(s) for s in split_seeds("train", stage.videos, offset=first_seed)]
    return scenes, [int(rng.integers(scene.num_frames)) for scene in scenes]


def learning_rate(stage: Stage, step: int) -> float:
    """Cosine decay from `stage.lr` to a tenth of it over the stage's steps, after a 50-step warm-up."""
    warmup = min(1.0, (step + 1) / 50)
    return stage.lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / stage.steps)))


class Run:
    """A training run's folder: its checkpoint (model, probes, optimizer, where training is) and its log.

    A checkpoint is written every `CHECKPOINT_EVERY` steps and at the end of every stage, atomically (a stopped run
    never leaves half a file), so `--resume` continues from at most that many steps back.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint = folder / "checkpoint.pt"
        self.log_file = folder / "training.log"

    def log(self, line: str) -> None:
        print(line, flush=True)
        with self.log_file.open("a") as log:
            log.write(line + "\n")

    def save(self, model: nn.Module, probes: Probes, optimizer: torch.optim.Optimizer, stage: int, step: int) -> None:
        """Save the state after `step` steps of stage number `stage`."""
        state = {"model": model.state_dict(), "probes": probes.state_dict(), "optimizer": optimizer.state_dict()}
        partial = self.checkpoint.with_suffix(".partial")
        torch.save({**state, "stage": stage, "step": step}, partial)
        os.replace(partial, self.checkpoint)

    def load(self) -> dict | None:
        return torch.load(self.checkpoint, weights_only=True) if self.checkpoint.exists() else None


CHECKPOINT_EVERY = 200


def stage_parameters(
    model: LlavaOnevisionForConditionalGeneration, stage: Stage, probes: Probes
) -> list[torch.nn.Parameter]:
    """The parameters `stage` trains."""
    core = model.model
    if stage.name == "language":
        language = [*core.language_model.parameters(), *model.lm_head.parameters(), core.image_newline]
        return [*language, *probes.parameters()]
    if stage.name == "vision":
        return [*core.vision_tower.parameters(), *core.multi_modal_projector.parameters()]
    return [*model.parameters(), *probes.parameters()]


def run_stage(
    model: LlavaOnevisionForConditionalGeneration,
    processor: LlavaOnevisionProcessor,
    targets: TargetFeatures,
    index: int,
    seed: int,
    val: list[Batch],
    probes: Probes,
    run: Run,
    resumed: dict | None = None,
) -> None:
    """Train the parameters of stage `STAGES[index]` at `learning_rate`, from the checkpoint `resumed` if given."""
    stage = STAGES[index]
    params = stage_parameters(model, stage, probes)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)
    first_step = 0
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        first_step = resumed["step"]
    start, losses, probed = time.time(), [], []
    hits: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    for step in range(first_step, stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(stage, step)
        if stage.name == "vision":
            scenes, picked = vision_batch(stage, seed, step)
            videos = [render(scene, SHAPE.image_size, np.array([t])) for scene, t in zip(scenes, picked)]
            pixels = processor.video_processor(videos=[np.concatenate(videos)], return_tensors="pt")
            features = video_features(model, pixels["pixel_values_videos"])[0, :-1]
            wanted = torch.cat([targets(scene, np.array([t])) for scene, t in zip(scenes, picked)])
            loss = F.mse_loss(features, wanted) * wanted.shape[-1]
        else:
            batch = training_batch(processor, stage, seed, step)
            wanted = torch.stack([targets.with_newline(s, f) for s, f in zip(batch.scenes, batch.frames)])
            features = wanted if stage.name == "language" else video_features(model, batch.pixel_values)
            keep = merge_keep_at(stage, seed, step)
            shown = features if keep is None else merged_features(features, keep)
            logits, states, question_states = answer_forward(model, batch, shown, video_layers_at(stage, seed, step))
            right = ((logits.argmax(-1) == batch.labels) | (batch.labels == -100)).all(-1)
            for question, ok in zip(batch.questions, right.tolist()):
                hits[question.kind].append(ok)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100)
            if stage.name == "joint":
                loss = loss + F.mse_loss(features[:, :-1], wanted[:, :-1]) * wanted.shape[-1]
            probe_loss, probe_accuracy = probes(model, states, question_states, batch)
            loss = loss + probe_loss
            if stage.guided:
                looking, looked = guide_loss(model, states, question_states, batch)
                loss = loss + looking
                probe_accuracy = {**probe_accuracy, **looked}
            probed.append(probe_accuracy)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        if done % 100 == 0 or done == stage.steps:
            line = f"{index}:{stage.name} {stage.frames} step {done}/{stage.steps}: loss {np.mean(losses[-100:]):.4f}"
            if stage.name != "vision":
                line += " | train " + " ".join(f"{k} {np.mean(h[-100:]):.2f}" for k, h in hits.items() if h)
                names = {n for p in probed[-100:] for n in p}
                line += " | probes " + " ".join(
                    f"{n} {np.mean([p[n] for p in probed[-100:] if n in p]):.2f}"
                    for n in (*PROBES, "name", *(f"look_{guide.kind}" for guide in GUIDES))
                    if n in names
                )
            if stage.name != "vision" and (done % 500 == 0 or done == stage.steps):
                scores = validate(model, val, targets if stage.name == "language" else None)
                line += " | val@32 " + " ".join(f"{k} {v:.2f}" for k, v in scores.items())
            run.log(f"{line} | {time.time() - start:.0f}s")
        if done % CHECKPOINT_EVERY == 0 or done == stage.steps:
            run.save(model, probes, optimizer, index, done)


def train(
    seed: int, run: Run, resume: bool, start: tuple[Path, int] | None = None
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """Train through `STAGES`, from the run's checkpoint when `resume` is set and one exists; else, with `start`
    (a saved model, a stage number), from that model's weights at that stage, as if the run had got there."""
    torch.manual_seed(seed)
    model, processor = build(seed)
    # From the initial embeddings, before any checkpoint is loaded: the targets and word probes stay what they were
    # when training began.
    targets = TargetFeatures(model, processor, seed)
    probes = Probes(SHAPE, word_vectors(model, processor))
    checkpoint = run.load() if resume else None
    first_stage = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        probes.load_state_dict(checkpoint["probes"])
        first_stage = checkpoint["stage"]
        run.log(f"resumed from {run.checkpoint}: stage {checkpoint['stage']}, step {checkpoint['step']}")
    elif start is not None:
        saved, first_stage = start
        model.load_state_dict(LlavaOnevisionForConditionalGeneration.from_pretrained(saved).state_dict())
        run.log(f"started from {saved}'s weights (the seed's targets, fresh probes) at stage {first_stage}")
    else:
        run.log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {SHAPE}")
    model.train()
    val = validation_batches(processor)
    started = time.time()
    for index in range(first_stage, len(STAGES)):
        resumed = checkpoint if checkpoint is not None and index == checkpoint["stage"] else None
        if resumed is not None and resumed["step"] >= STAGES[index].steps:
            continue
        run_stage(model, processor, targets, index, seed, val, probes, run, resumed)
    run.log(f"trained for {(time.time() - started) / 60:.1f} min in this process")
    return model.eval(), processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to save the model, processor and tokenizer in")
    parser.add_argument("--run", type=Path, default=Path("out/demo-model-run"), help="checkpoint and log folder")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-from", type=Path, help="a saved model of this seed to begin with (no --resume)")
    parser.add_argument("--start-stage", type=int, default=0, help="the stage to begin at, with --start-from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-questions", type=int, default=700, help="held-out test questions per frame count")
    parser.add_argument("--eval-frames", type=int, nargs="*", default=[32, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = Run(args.run)
    run.log(f"$ python -m synthetic.train_demo_model {' '.join(sys.argv[1:])}")
    start = (args.start_from, args.start_stage) if args.start_from else None
    model, processor = train(args.seed, run, args.resume, start)
    # Half precision halves the files; the check below runs on what was saved, loaded back in float32.
    model.to(torch.float16).save_pretrained(args.out)
    processor.save_pretrained(args.out)
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(args.out, dtype=torch.float32).eval()
    for num_frames in args.eval_frames:
        report = evaluate(loaded, processor, args.eval_questions, seed=0, num_frames=num_frames)
        run.log(format_report(report, f"test, {num_frames} frames, saved fp16 model in fp32"))
    shutil.copyfile(run.log_file, Path(args.out) / "training.log")


if __name__ == "__main__":
    main()
