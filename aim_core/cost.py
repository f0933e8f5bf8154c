"""What a setting will cost before anything runs: tokens per layer, prefill and vision FLOPs, and settings that fit a
budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import DEFAULT_EFFICIENCY, AIMConfig, TokenReduction, no_pruning_before, vision_keep_counts
from .errors import SettingsError
from .flops import DecoderShape, VisionShape, prefill_flops, vision_flops
from .merge import merged_count


@dataclass(frozen=True)
class VisionWork:
    """What the vision tower does for each step of a video.

    Attributes:
        shape: the tower's and projector's sizes.
        patches_per_step: patches a step (frame, temporal patch, tile) gives the tower.
        output_layer: the block whose output the model reads, where patches can be merged inside this tower
            (`aim_core.vision_patch`); None where they cannot, and `vision_keep` leaves the tower whole.
    """

    shape: VisionShape
    patches_per_step: int
    output_layer: int | None = None

    def keep_counts(self, config: TokenReduction) -> list[int]:
        """Patch tokens per step each block processes under `config`."""
        if self.output_layer is None:
            return [self.patches_per_step] * self.shape.layers
        return vision_keep_counts(self.shape.layers, self.patches_per_step, config.vision_keep, self.output_layer)

    def flops(self, steps: int, config: TokenReduction) -> int:
        return vision_flops(self.shape, steps, self.patches_per_step, self.keep_counts(config))


class PipelineFlops:
    """The ratios and sums of a cost's four FLOPs fields (`flops`, `flops_baseline`: the LLM prefill with and without
    the reduction; `vision_flops`, `vision_flops_baseline`: the vision tower and projector), shared by the predicted
    `CostEstimate` and the measured `aim_core.Stats`."""

    @property
    def flops_reduction(self) -> float:
        """How many times fewer prefill FLOPs than with no reduction."""
        return self.flops_baseline / self.flops

    @property
    def total_flops(self) -> int:
        """The whole pipeline a first question pays for: the vision tower and the prefill."""
        return self.vision_flops + self.flops

    @property
    def total_flops_baseline(self) -> int:
        return self.vision_flops_baseline + self.flops_baseline

    @property
    def total_reduction(self) -> float:
        """How many times fewer FLOPs the whole pipeline (vision + prefill) takes than with no reduction."""
        return self.total_flops_baseline / self.total_flops


@dataclass(frozen=True)
class CostEstimate(PipelineFlops):
    """One question about one video under one setting: the LLM's prefill and, where known, the vision tower's work.

    Attributes:
        num_frames: frames given to the model.
        visual_before_merge: visual tokens the stock model would see.
        visual_after_merge: visual tokens the LLM sees after merging.
        text_tokens: every other token of the prompt.
        tokens_per_layer: sequence length each decoder layer processes.
        flops: prefill FLOPs with the reduction; flops_baseline: with none.
        vision_flops: FLOPs of the vision tower and projector with the reduction (0 where not estimated);
            vision_flops_baseline: with none.
    """

    num_frames: int
    visual_before_merge: int
    visual_after_merge: int
    text_tokens: int
    tokens_per_layer: list[int]
    flops: int
    flops_baseline: int
    vision_flops: int = 0
    vision_flops_baseline: int = 0


def estimate_cost(
    shape: DecoderShape,
    num_frames: int,
    tokens_per_frame: int,
    text_tokens: int,
    config: TokenReduction,
    unmerged_visual_tokens: int = 0,
    first_prunable_layer: int = 1,
    vision: VisionWork | None = None,
) -> CostEstimate:
    """Predict the prefill of `num_frames` frames of `tokens_per_frame` visual tokens each, plus
    `unmerged_visual_tokens` that merging leaves alone (LLaVA-OneVision's newline) and `text_tokens` of text, on a
    model whose layers before `first_prunable_layer` keep every visual token (see `no_pruning_before`); and, given
    `vision`, the vision tower's work on those frames (`num_frames` counts steps: Qwen's temporal patches)."""
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
        vision_flops=0 if vision is None else vision.flops(num_frames, config),
        vision_flops_baseline=0 if vision is None else vision.flops(num_frames, AIMConfig.none()),
    )


@dataclass(frozen=True)
class BudgetPlan:
    """The most frames, and the least reduction for them, that fit a FLOPs budget (the prefill's, plus the vision
    tower's where it was given)."""

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
    vision: VisionWork | None = None,
) -> BudgetPlan:
    """Choose frames and reduction to fit a budget: AIM's long-video trade (more frames, same cost).

    With `vision` the budget covers the whole pipeline a first question pays for (vision tower + prefill, see
    `CostEstimate.total_flops`), so "4x the frames at the same cost" is true end to end; without it, the prefill
    alone, as the paper counts. `VideoQA.plan_for_budget` passes the model's vision tower.

    Tries the frame counts from the most down and, for each, the lowest efficiency in `[0, max_efficiency]`
    that fits (cost falls monotonically with efficiency, so a bisection finds it).

    Example: the budget of 32 frames with no reduction is
    `estimate_cost(shape, 32, tokens_per_frame, text_tokens, AIMConfig.none(), vision=vision).total_flops`.
    """

    def cost(frames: int, efficiency: float) -> int:
        return estimate_cost(shape, frames, tokens_per_frame, text_tokens, AIMConfig.from_efficiency(efficiency),
                             unmerged_visual_tokens, vision=vision).total_flops

    for frames in sorted(frame_choices, reverse=True):
        if cost(frames, max_efficiency) > budget_flops:
            continue
        low, high = 0.0, max_efficiency
        if cost(frames, low) > budget_flops:
            for _ in range(40):
                middle = (low + high) / 2
                low, high = (low, middle) if cost(frames, middle) <= budget_flops else (middle, high)
            low = high
        config = AIMConfig.from_efficiency(low)
        estimate = estimate_cost(shape, frames, tokens_per_frame, text_tokens, config, unmerged_visual_tokens,
                                 vision=vision)
        return BudgetPlan(frames, low, config, estimate, budget_flops)
    raise SettingsError(f"no setting with up to efficiency {max_efficiency} fits {budget_flops:.3g} FLOPs")
