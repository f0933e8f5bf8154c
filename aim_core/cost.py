"""What a setting will cost before anything runs: tokens per layer and prefill FLOPs, and settings that fit a budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import DEFAULT_EFFICIENCY, AIMConfig, TokenReduction, no_pruning_before
from .errors import SettingsError
from .flops import DecoderShape, prefill_flops
from .merge import merged_count


@dataclass(frozen=True)
class CostEstimate:
    """The prefill of one question about one video under one setting.

    Attributes:
        num_frames: frames given to the model.
        visual_before_merge: visual tokens the stock model would see.
        visual_after_merge: visual tokens the LLM sees after merging.
        text_tokens: every other token of the prompt.
        tokens_per_layer: sequence length each decoder layer processes.
        flops: prefill FLOPs with the reduction; flops_baseline: with none.
    """

    num_frames: int
    visual_before_merge: int
    visual_after_merge: int
    text_tokens: int
    tokens_per_layer: list[int]
    flops: int
    flops_baseline: int

    @property
    def flops_reduction(self) -> float:
        """How many times fewer FLOPs than with no reduction."""
        return self.flops_baseline / self.flops


def estimate_cost(
    shape: DecoderShape,
    num_frames: int,
    tokens_per_frame: int,
    text_tokens: int,
    config: TokenReduction,
    unmerged_visual_tokens: int = 0,
    first_prunable_layer: int = 1,
) -> CostEstimate:
    """Predict the prefill of `num_frames` frames of `tokens_per_frame` visual tokens each, plus
    `unmerged_visual_tokens` that merging leaves alone (LLaVA-OneVision's newline) and `text_tokens` of text, on a
    model whose layers before `first_prunable_layer` keep every visual token (see `no_pruning_before`)."""
    before = num_frames * tokens_per_frame + unmerged_visual_tokens
    after = num_frames * merged_count(tokens_per_frame, config.merge_keep) + unmerged_visual_tokens
    keep = no_pruning_before(config.visual_keep_counts(shape.layers, after), first_prunable_layer)
    tokens_per_layer = [count + text_tokens for count in keep]
    return CostEstimate(
        num_frames=num_frames,
        visual_before_merge=before,
        visual_after_merge=after,
        text_tokens=text_tokens,
        tokens_per_layer=tokens_per_layer,
        flops=prefill_flops(tokens_per_layer, shape),
        flops_baseline=prefill_flops([before + text_tokens] * shape.layers, shape),
    )


@dataclass(frozen=True)
class BudgetPlan:
    """The most frames, and the least reduction for them, whose prefill fits a FLOPs budget."""

    num_frames: int
    efficiency: float
    config: AIMConfig
    estimate: CostEstimate
    budget: int


def plan_for_budget(
    shape: DecoderShape,
    budget_flops: int,
    tokens_per_frame: int,
    text_tokens: int,
    frame_choices: Sequence[int] = (8, 16, 32, 48, 64, 96, 128, 192, 256),
    max_efficiency: float = DEFAULT_EFFICIENCY,
    unmerged_visual_tokens: int = 0,
) -> BudgetPlan:
    """Choose frames and reduction to fit a prefill budget: AIM's long-video trade (more frames, same cost).

    Tries the frame counts from the most down and, for each, the lowest efficiency in `[0, max_efficiency]`
    that fits (cost falls monotonically with efficiency, so a bisection finds it).

    Example: the budget of 32 frames with no reduction is
    `estimate_cost(shape, 32, tokens_per_frame, text_tokens, AIMConfig.none()).flops`.
    """

    def cost(frames: int, efficiency: float) -> CostEstimate:
        return estimate_cost(shape, frames, tokens_per_frame, text_tokens, AIMConfig.from_efficiency(efficiency),
                             unmerged_visual_tokens)

    for frames in sorted(frame_choices, reverse=True):
        if cost(frames, max_efficiency).flops > budget_flops:
            continue
        low, high = 0.0, max_efficiency
        if cost(frames, low).flops > budget_flops:
            for _ in range(40):
                middle = (low + high) / 2
                low, high = (low, middle) if cost(frames, middle).flops <= budget_flops else (middle, high)
            low = high
        return BudgetPlan(frames, low, AIMConfig.from_efficiency(low), cost(frames, low), budget_flops)
    raise SettingsError(f"no setting with up to efficiency {max_efficiency} fits {budget_flops:.3g} FLOPs")
