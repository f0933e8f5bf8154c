"""AIM settings: how much to merge before the LLM and where to prune inside it, and the efficiency knob over both."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch

from .errors import SettingsError
from .merge import MAX_MERGE_ROUND, MergeResult, merge_frames, merged_count

Importance = Literal["text", "pagerank", "last"]

# Each bipartite round of merging, before the LLM and inside the tower, folds at most this fraction of a frame's
# tokens. Rounds of all of set A (`MAX_MERGE_ROUND`, the released AIM code's: 196 -> 98 -> 49) force a small shape's
# tokens into whatever they match best, often another shape; smaller rounds let them wait for a better partner, at the
# same FLOPs. `benchmarks.merge_folding`: on the demo model's scenes at 25%, a shape folds with another in 19.1% of
# (frame, shape) pairs in rounds of all of set A, 2.2% in rounds of a quarter. Before the LLM, the paper's setting on
# the shipped demo model (the sweep, seeds 0 and 100000) keeps 96.0% and 96.4% of unreduced accuracy in rounds of all
# of set A, 99.4% and 99.2% in rounds of a quarter; quarter rounds did better on every demo model measured (demo-v8,
# demo-v10, r3, r4). Inside the tower (an earlier demo model, 1001 questions, vision_keep 0.25): 66.7% with rounds of
# all of set A, 81.8% of a quarter, 81.2% of a tenth, 83.2% unreduced; a quarter takes fewer rounds than a tenth.
MERGE_ROUND = 0.25


class TokenReduction(Protocol):
    """What `VideoQA` needs from a setting: AIM's (`AIMConfig`) or a baseline's (`aim_core.baselines`).

    Attributes:
        merge_keep: fraction of each frame's visual tokens that reach the LLM.
        importance: how a pruning layer ranks visual tokens (see `aim_core.patch`).
        vision_keep: fraction of each frame's patches left by merging inside the vision tower (1.0: the stock tower).
    """

    merge_keep: float
    importance: Importance
    vision_keep: float

    @property
    def frame_reduction_key(self) -> Hashable:
        """Identifies `reduce_frames`'s result for a video, for the cache."""

    def reduce_frames(self, tokens: torch.Tensor) -> MergeResult:
        """Reduce `[frames, n, dim]` visual tokens before the LLM."""

    def visual_keep_counts(self, num_layers: int, num_visual: int) -> list[int]:
        """Visual tokens each decoder layer processes at prefill."""


@dataclass(frozen=True)
class AIMConfig:
    """One AIM setting. The defaults are the paper's: keep 25% of each frame's tokens after merging, then prune
    visual tokens linearly from 50% of the LLM's depth until none is left at 79% of it. Merging goes in rounds of at
    most a quarter of a frame's tokens (`merge_round`), where the released code folds all of set A each round
    (`merge_round=0.5`): the same FLOPs, fewer small shapes folded into others (see `MERGE_ROUND`). The paper leaves
    the vision tower alone; `vision_keep` below 1 also merges patches inside it (see `vision_keep_counts`), which is
    where most of the wait goes for models up to a few billion parameters.

    Attributes:
        merge_keep: fraction of each frame's visual tokens kept by merging, in (0, 1]; 1.0 merges nothing.
        prune_start: fraction of depth of the first layer that drops visual tokens, in (0, 1]; 1.0 prunes nothing.
        prune_end: fraction of depth from which no visual token is left, in [prune_start, 1].
        importance: how visual tokens are ranked at a pruning layer: "text" (attention from the question's tokens,
            computed at the pruning layers only), "pagerank" (AIM's multi-modal importance over all tokens) or
            "last" (attention from the prompt's last token, as FastV ranks them).
        vision_keep: fraction of each frame's patches left by merging inside the vision tower, in (0, 1]; 1.0 runs
            the stock tower. The tower's output grid is restored before the projector, so the rest of the model is
            unchanged.
        merge_round: the most of a frame's tokens one bipartite round of merging before the LLM removes, in
            (0, 0.5]; 0.5 is the released code's (a round may fold all of set A).
    """

    merge_keep: float = 0.25
    prune_start: float = 0.5
    prune_end: float = 0.79
    importance: Importance = "text"
    vision_keep: float = 1.0
    merge_round: float = MERGE_ROUND

    def __post_init__(self) -> None:
        for name in ("merge_keep", "prune_start", "prune_end", "vision_keep", "merge_round"):
            value = getattr(self, name)
            # Before the ranges, whose comparisons raise TypeError on a string; a bool is an int to Python.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"{name} must be a number, got {value!r}")
        if not 0.0 < self.merge_keep <= 1.0:
            raise SettingsError(f"merge_keep must be in (0, 1], got {self.merge_keep}")
        if not 0.0 < self.prune_start <= 1.0:
            raise SettingsError(f"prune_start must be in (0, 1], got {self.prune_start}")
        if not self.prune_start <= self.prune_end <= 1.0:
            raise SettingsError(f"prune_end must be in [prune_start, 1], got {self.prune_end}")
        if self.importance not in ("text", "pagerank", "last"):
            raise SettingsError(f"importance must be 'text', 'pagerank' or 'last', got {self.importance!r}")
        if not 0.0 < self.vision_keep <= 1.0:
            raise SettingsError(f"vision_keep must be in (0, 1], got {self.vision_keep}")
        if not 0.0 < self.merge_round <= MAX_MERGE_ROUND:
            raise SettingsError(f"merge_round must be in (0, 0.5], got {self.merge_round}")

    @classmethod
    def none(cls) -> AIMConfig:
        """No reduction at all: the stock model."""
        return cls(merge_keep=1.0, prune_start=1.0, prune_end=1.0)

    @classmethod
    def from_efficiency(cls, efficiency: float, importance: Importance = "text") -> AIMConfig:
        """A setting from one knob: 0.0 is the stock model, 1.0 the most aggressive setting, monotone between.

        The knob walks through anchor settings, interpolating the LLM's fields linearly: 0.0 no reduction; 0.5
        merge to 50% and prune from 75% to 95% of depth; 0.75 the paper's default (`AIMConfig()`); 1.0 merge to
        1/16 and prune from 25% to 50% of depth. The vision tower's share moves in steps (`VISION_KEEP_STEPS`: all
        patches below 0.25, then 50%, 25% from 0.5, 12.5% from 0.9), so that neighbouring settings share the
        tower's cached output and a new setting on the same video runs only the LLM. Every field moves one way only,
        so the cost falls monotonically as the knob rises. `.with_stock_tower()` of a setting is the paper's method
        alone: merging before and pruning inside the LLM.
        """
        if isinstance(efficiency, bool) or not isinstance(efficiency, (int, float)) or math.isnan(efficiency):
            raise SettingsError(f"efficiency must be a number in [0, 1], got {efficiency!r}")
        if not 0.0 <= efficiency <= 1.0:
            raise SettingsError(f"efficiency must be in [0, 1], got {efficiency}")
        fields = [_interpolate(EFFICIENCY_ANCHORS, efficiency, i) for i in range(3)]
        merge_keep, prune_start, prune_end = (round(value, 6) for value in fields)
        vision_keep = min([1.0] + [keep for start, keep in VISION_KEEP_STEPS if efficiency >= start])
        return cls(merge_keep=merge_keep, prune_start=prune_start, prune_end=prune_end, importance=importance,
                   vision_keep=vision_keep)

    @property
    def merges(self) -> bool:
        return self.merge_keep < 1.0

    @property
    def frame_reduction_key(self) -> Hashable:
        return ("merge", self.merge_keep, self.merge_round)

    def reduce_frames(self, tokens: torch.Tensor) -> MergeResult:
        """Merge each frame's tokens to `merge_keep` of them by bipartite soft matching, in rounds of at most
        `merge_round` of them."""
        return merge_frames(tokens, self.merge_keep, self.merge_round)

    def visual_keep_counts(self, num_layers: int, num_visual: int) -> list[int]:
        """Visual tokens each of `num_layers` decoder layers keeps at prefill (see `visual_keep_counts`)."""
        return visual_keep_counts(num_layers, num_visual, self.prune_start, self.prune_end)

    def with_importance(self, importance: Importance) -> AIMConfig:
        return replace(self, importance=importance)

    def with_stock_tower(self) -> AIMConfig:
        """The same setting with the vision tower left whole: the paper's method alone, which reduces for the LLM."""
        return replace(self, vision_keep=1.0)

    def pruning_until_last_layer(self) -> AIMConfig:
        """The same setting with some visual tokens kept down to the last layer, instead of none from `prune_end`
        of the depth on: shallow models may still read the video in their last layers."""
        return replace(self, prune_end=1.0)


# (efficiency, merge_keep, prune_start, prune_end); the paper's default sits at 0.75.
EFFICIENCY_ANCHORS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 1.0, 1.0),
    (0.5, 0.5, 0.75, 0.95),
    (0.75, 0.25, 0.5, 0.79),
    (1.0, 0.0625, 0.25, 0.5),
)
# (efficiency from which, vision_keep): the patches the vision tower's blocks keep, in steps.
VISION_KEEP_STEPS: tuple[tuple[float, float], ...] = ((0.25, 0.5), (0.5, 0.25), (0.9, 0.125))
DEFAULT_EFFICIENCY = 0.75
# Merging inside the vision tower is spread over its blocks up to this fraction of its depth (over block 1 at
# least); the blocks after run on what is left.
VISION_MERGE_DEPTH = 0.1


def _interpolate(anchors: tuple[tuple[float, ...], ...], x: float, field: int) -> float:
    for (x0, *y0), (x1, *y1) in zip(anchors, anchors[1:]):
        if x0 <= x <= x1:
            t = (x - x0) / (x1 - x0)
            return y0[field] + t * (y1[field] - y0[field])
    raise SettingsError(f"{x} is outside the anchors")


def pruning_layers(num_layers: int, prune_start: float, prune_end: float) -> tuple[int, int] | None:
    """The layers `(l1, l2)` of the schedule: visual tokens start to go at `l1`, and r(l2 - 1) = 0 already (see
    `visual_keep_counts`), so they are all gone from `l2 - 1` on.

    `None` when nothing is pruned within the model's depth. Layer 0 never prunes: decoding takes the position of
    each new token from layer 0's cache, which must hold the whole prompt.
    """
    first = max(1, round(prune_start * num_layers))
    if prune_start >= 1.0 or first >= num_layers:
        return None
    return first, max(first + 1, round(prune_end * num_layers))


def no_pruning_before(keep_counts: Sequence[int], layer: int) -> list[int]:
    """`keep_counts` with every visual token kept before decoder layer `layer`, for models that still add to the
    visual tokens in their first layers (Qwen3-VL's deepstack features)."""
    return [keep_counts[0]] * min(layer, len(keep_counts)) + list(keep_counts[layer:])


def visual_keep_counts(num_layers: int, num_visual: int, prune_start: float, prune_end: float) -> list[int]:
    """Visual tokens each decoder layer processes at prefill under the progressive schedule.

    Before `l1` all are kept; from `l1` on the kept fraction falls linearly, r(l) = max(0, 1 - (l - l1 + 1) /
    (l2 - l1)), so none is left from `l2 - 1` on. Counts never increase with depth (the kept sets are nested).
    """
    layers = pruning_layers(num_layers, prune_start, prune_end)
    if layers is None:
        return [num_visual] * num_layers
    first, last = layers
    fractions = [1.0 if layer < first else max(0.0, 1 - (layer - first + 1) / (last - first)) for layer in
                 range(num_layers)]
    return [int(fraction * num_visual) for fraction in fractions]


def vision_keep_counts(num_layers: int, num_tokens: int, keep: float, output_layer: int = -1) -> list[int]:
    """Patch tokens per frame each vision block processes when merging inside the tower leaves `keep` of them.

    Block 0 sees every patch (its input is the bare patch embeddings); the count then falls linearly over blocks
    1 to M = max(1, round(VISION_MERGE_DEPTH * num_layers)) down to `merged_count(num_tokens, keep)`, and stays
    there until `output_layer`, the block whose output the model reads; blocks after it get the whole grid back.
    """
    output_layer %= num_layers
    target = merged_count(num_tokens, keep)
    if target == num_tokens or output_layer == 0:
        return [num_tokens] * num_layers
    last = min(output_layer, max(1, round(VISION_MERGE_DEPTH * num_layers)))
    return [num_tokens if layer == 0 or layer > output_layer else
            num_tokens - (num_tokens - target) * min(layer, last) // last for layer in range(num_layers)]
