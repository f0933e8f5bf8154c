import math

import pytest
import torch
from conftest import background_with_objects

from aim_core import AIMConfig, DecoderShape, SettingsError, estimate_cost, plan_for_budget, prefill_flops
from aim_core.config import DEFAULT_EFFICIENCY, MERGE_ROUND, pruning_layers, visual_keep_counts
from aim_core.merge import MAX_MERGE_ROUND, merge_frames

# LLaVA-OneVision-7B's language model (Qwen2-7B), as in the paper's FLOPs table.
QWEN2_7B = DecoderShape(hidden=3584, query_width=3584, kv_width=512, intermediate=18944, heads=28, layers=28)


def test_paper_baseline_flops():
    flops = prefill_flops([6272 + 100] * 28, QWEN2_7B)
    assert flops / 1e12 == pytest.approx(99.63, rel=0.005)


def test_paper_aim_default_flops():
    """25% merging then the default schedule, pruning applied at the layer itself: 14.76 TFLOPs (6.75x)."""
    estimate = estimate_cost(QWEN2_7B, num_frames=32, tokens_per_frame=196, text_tokens=100, config=AIMConfig())
    assert estimate.visual_after_merge == 1568
    assert estimate.tokens_per_layer[:14] == [1668] * 14
    assert estimate.flops / 1e12 == pytest.approx(14.76, rel=0.005)
    assert estimate.flops_baseline / 1e12 == pytest.approx(99.63, rel=0.005)
    assert estimate.flops_reduction == pytest.approx(6.75, rel=0.005)


def test_pruning_one_layer_later_costs_what_the_released_code_does():
    counts = visual_keep_counts(28, 1568, 0.5, 0.79)
    shifted = [1568] + counts[:-1]
    assert prefill_flops([c + 100 for c in shifted], QWEN2_7B) / 1e12 == pytest.approx(15.53, rel=0.005)


def test_schedule_matches_the_paper_for_28_layers():
    assert pruning_layers(28, 0.5, 0.79) == (14, 22)
    counts = visual_keep_counts(28, 1568, 0.5, 0.79)
    assert counts[:14] == [1568] * 14
    assert counts[14] == int((1 - 1 / 8) * 1568)
    assert counts[20] == int((1 - 7 / 8) * 1568)
    assert counts[21:] == [0] * 7


@pytest.mark.parametrize("layers", [4, 8, 24, 28, 32, 80])
def test_schedule_scales_to_any_depth(layers):
    counts = visual_keep_counts(layers, 1000, 0.5, 0.79)
    assert counts[0] == 1000  # layer 0 never prunes
    assert all(b <= a for a, b in zip(counts, counts[1:]))
    assert counts[-1] == 0
    first = counts.index(next(c for c in counts if c < 1000))
    assert abs(first - 0.5 * layers) <= 1


def test_no_pruning_when_start_is_past_the_last_layer():
    assert pruning_layers(8, 1.0, 1.0) is None
    assert visual_keep_counts(8, 50, 0.95, 1.0) == [50] * 8
    none = AIMConfig.none()
    assert pruning_layers(28, none.prune_start, none.prune_end) is None and not none.merges


def test_default_is_the_paper_setting_in_small_rounds_and_the_knob_adds_vision_merging_to_it():
    default = AIMConfig()
    assert (default.merge_keep, default.prune_start, default.prune_end, default.vision_keep) == (0.25, 0.5, 0.79, 1.0)
    assert default.merge_round == MERGE_ROUND < MAX_MERGE_ROUND
    knob = AIMConfig.from_efficiency(DEFAULT_EFFICIENCY)
    assert knob.vision_keep == 0.25 and knob.merge_round == MERGE_ROUND
    # The app's "Merge inside the vision tower" switch (and the CLI's --paper) leaves the tower alone and nothing else.
    assert knob.with_stock_tower() == default
    assert knob.frame_reduction_key == default.frame_reduction_key
    assert AIMConfig(merge_round=MAX_MERGE_ROUND).frame_reduction_key != default.frame_reduction_key


def test_the_default_merges_in_small_rounds_and_the_released_code_in_rounds_of_all_of_set_a():
    tokens, objects = background_with_objects(), [10, 36]
    default, released = AIMConfig(), AIMConfig(merge_round=MAX_MERGE_ROUND)
    small, forced = default.reduce_frames(tokens), released.reduce_frames(tokens)
    assert torch.equal(small.source, merge_frames(tokens, 0.25, MERGE_ROUND).source)
    assert torch.equal(forced.source, merge_frames(tokens, 0.25).source)
    assert small.tokens.shape == forced.tokens.shape == (2, 16, 16)
    for index in objects:  # a lone object keeps its own token in small rounds, not in rounds of all of set A
        assert (small.sizes.gather(1, small.source[:, index : index + 1]) == 1).all()
        assert (forced.sizes.gather(1, forced.source[:, index : index + 1]) > 1).all()


def test_efficiency_zero_is_no_reduction():
    assert AIMConfig.from_efficiency(0.0) == AIMConfig.none()
    estimate = estimate_cost(QWEN2_7B, 32, 196, 100, AIMConfig.from_efficiency(0.0))
    assert estimate.flops == estimate.flops_baseline


def test_cost_falls_monotonically_with_efficiency():
    costs = [estimate_cost(QWEN2_7B, 32, 196, 100, AIMConfig.from_efficiency(e / 100)).flops for e in range(101)]
    assert all(b <= a for a, b in zip(costs, costs[1:]))
    assert costs[-1] < costs[75] < costs[50] < costs[0]


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, "0.5", None, True])
def test_efficiency_out_of_range(bad):
    with pytest.raises(ValueError):
        AIMConfig.from_efficiency(bad)


@pytest.mark.parametrize("fields", [{"merge_keep": 0}, {"merge_keep": 1.2}, {"prune_start": 0},
                                    {"prune_start": 0.6, "prune_end": 0.5}, {"importance": "random"},
                                    {"vision_keep": 0}, {"vision_keep": 1.5}, {"merge_round": 0},
                                    {"merge_round": 0.6}, {"merge_keep": "0.25"}, {"prune_start": None},
                                    {"vision_keep": True}, {"merge_round": math.nan}])
def test_bad_config_fields(fields):
    with pytest.raises(SettingsError):
        AIMConfig(**fields)


def test_budget_of_32_plain_frames_buys_many_more_frames_with_aim():
    """The paper's long-video point: at the cost of 32 frames with no reduction, AIM fits ~6x the frames."""
    budget = estimate_cost(QWEN2_7B, 32, 196, 100, AIMConfig.none()).flops
    plan = plan_for_budget(QWEN2_7B, budget, tokens_per_frame=196, text_tokens=100)
    assert plan.num_frames == 192
    assert plan.estimate.flops <= budget
    assert plan.estimate.flops / 1e12 == pytest.approx(99.27, rel=0.005)  # the paper's 192-frame row
    assert plan.config == AIMConfig.from_efficiency(plan.efficiency)
    # the least reduction that fits: a little less would exceed the budget
    looser = AIMConfig.from_efficiency(plan.efficiency - 0.01)
    assert estimate_cost(QWEN2_7B, plan.num_frames, 196, 100, looser).flops > budget


def test_budget_that_fits_plainly_needs_no_reduction():
    budget = estimate_cost(QWEN2_7B, 256, 196, 100, AIMConfig.none()).flops
    plan = plan_for_budget(QWEN2_7B, budget, tokens_per_frame=196, text_tokens=100)
    assert plan.num_frames == 256 and plan.config == AIMConfig.none()


def test_budget_too_small():
    with pytest.raises(SettingsError):
        plan_for_budget(QWEN2_7B, 1e9, tokens_per_frame=196, text_tokens=100)
