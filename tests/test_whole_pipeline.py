"""The whole wait: vision FLOPs counted and predicted, patches merged inside the vision tower through hooks, budgets
that cover the tower, and the app's picture of where the time went."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import background_with_objects
from transformers import SiglipVisionConfig, SiglipVisionModel

from aim_core import AIMConfig, VideoQA
from aim_core.config import MERGE_ROUND, vision_keep_counts
from aim_core.cost import VisionWork, estimate_cost, plan_for_budget
from aim_core.flops import DecoderShape, VisionShape, vision_flops
from aim_core.merge import MergeResult, cluster_means, merge_frames, merge_further, unmerge
from aim_core.random_models import LlavaOnevisionShape, QwenVLShape, build_llava_onevision, build_qwen_vl
from aim_core.vision_patch import VisionTokenMerger
from app.history import History, RunKey, RunPoint
from app.pictures import Pictures
from app.plots import STAGES, time_figure
from app.report import stats_cards

QUESTION = "Which colour appears first?"
# 4 SigLIP blocks, so that merging has blocks to act on; 8 x 8 patches a frame.
FOUR_BLOCKS = LlavaOnevisionShape(image_size=64, patch_size=8, text_layers=8, vision_layers=4)
QWEN2_0_5B = DecoderShape(hidden=896, query_width=896, kv_width=128, intermediate=4864, heads=14, layers=24)


@pytest.fixture(scope="module")
def four_block_qa():
    return VideoQA.from_model(*build_llava_onevision(FOUR_BLOCKS, seed=0))


def so400m_shape() -> VisionShape:
    """SigLIP-so400m as llava-onevision-qwen2-0.5b-ov ships it, read off modules built on the meta device, with its
    projector (1152 -> 896 -> 896)."""
    config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                num_attention_heads=16, image_size=384, patch_size=14)
    with torch.device("meta"):
        tower = SiglipVisionModel(config)
        projector = torch.nn.Sequential(torch.nn.Linear(1152, 896), torch.nn.GELU(), torch.nn.Linear(896, 896))
    return VisionShape.from_modules(1152, 16, tower.embeddings, tower.encoder.layers, [projector])


def test_vision_flops_of_siglip_so400m_match_the_formula_by_hand():
    shape = so400m_shape()
    d, m, n, layers = 1152, 4304, 729, 26
    block = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d + 5 * 16 * n * n + 17 * n * d
    per_frame = layers * block + 2 * n * (3 * 14 * 14 * d) + 2 * n * (1152 * 896 + 896 * 896)
    assert vision_flops(shape, 16, n) == 16 * per_frame
    assert vision_flops(shape, 16, n) / 1e12 == pytest.approx(10.3, abs=0.05)  # against 3.1 TFLOPs of prefill
    counts = vision_keep_counts(layers, n, 0.25)
    assert counts == [729, 547, 365] + [182] * 23  # merged over the first 10% of the depth
    assert vision_flops(shape, 16, n) / vision_flops(shape, 16, n, counts) > 3.3


def test_vision_keep_one_is_the_whole_tower_and_blocks_after_the_output_get_the_grid_back():
    assert vision_keep_counts(26, 729, 1.0) == [729] * 26
    assert vision_keep_counts(6, 100, 0.5, output_layer=3) == [100, 50, 50, 50, 100, 100]


def test_merging_continues_where_it_stopped_and_unmerges_to_the_grid():
    tokens = torch.randn(3, 196, 16)
    at_once = merge_frames(tokens, 0.25)
    in_two = merge_further(merge_frames(tokens, 0.5), 49)
    torch.testing.assert_close(in_two.tokens, at_once.tokens)
    assert torch.equal(in_two.source, at_once.source)
    torch.testing.assert_close(cluster_means(tokens, at_once.source, 49), at_once.tokens)
    spread = unmerge(at_once.tokens, at_once.source)
    assert spread.shape == tokens.shape
    torch.testing.assert_close(spread[0, 5], at_once.tokens[0, at_once.source[0, 5]])


def test_small_rounds_keep_a_lone_object_apart_where_rounds_of_all_of_set_a_fold_it_into_the_background():
    tokens, objects = background_with_objects(), [10, 36]
    start = MergeResult.start(tokens)
    forced = merge_further(start, 16)  # the released code's rounds: 64 -> 32 folds every even-index token
    patient = merge_further(start, 16, max_round_fraction=MERGE_ROUND)
    assert forced.tokens.shape == patient.tokens.shape == (2, 16, 16)
    for index in objects:
        assert (forced.sizes.gather(1, forced.source[:, index : index + 1]) > 1).all()
        assert (patient.sizes.gather(1, patient.source[:, index : index + 1]) == 1).all()
    assert torch.equal(torch.bincount(patient.source[0]), patient.sizes[0])
    # At 0.5 the rounds are the released code's, and any larger fraction is the same.
    assert torch.equal(merge_further(start, 16, max_round_fraction=0.9).source, forced.source)


def test_the_tower_hooks_merge_in_small_rounds(four_block_qa, random_frames):
    layers = four_block_qa.adapter.vision_layers
    seen: list[torch.Tensor] = []
    # Registered before the merger's hooks: it sees block 1's input before merging.
    spy = layers[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with VisionTokenMerger(layers, 0.25, four_block_qa.adapter.vision_output_layer) as merger:
            four_block_qa.adapter.encode_video(random_frames[:4])
    finally:
        spy.remove()
    assert MERGE_ROUND < 0.5
    assert torch.equal(merger.record.source, merge_further(MergeResult.start(seen[0]), 16, MERGE_ROUND).source)


def attention_rows(qa: VideoQA, frames: np.ndarray, keep: float) -> tuple[list[int], torch.Tensor]:
    """Rows each vision block's attention was handed, and the video's tokens, with merging at `keep`."""
    rows: list[int] = []
    with VisionTokenMerger(qa.adapter.vision_layers, keep, qa.adapter.vision_output_layer):
        # Registered after the merger's hooks, so they see what the attention itself gets.
        spies = [layer.self_attn.register_forward_pre_hook(
            lambda module, args, kwargs: rows.append(kwargs["hidden_states"].shape[1]), with_kwargs=True)
            for layer in qa.adapter.vision_layers]
        try:
            tokens = qa.adapter.encode_video(frames).tokens
        finally:
            for spy in spies:
                spy.remove()
    return rows, tokens


def test_vision_merging_hands_the_blocks_fewer_rows_and_the_projector_the_whole_grid(four_block_qa, random_frames):
    frames = random_frames[:4]
    stock_rows, stock = attention_rows(four_block_qa, frames, 1.0)
    rows, merged = attention_rows(four_block_qa, frames, 0.25)
    assert stock_rows == [64] * 4 and rows == [64, 16, 16, 16]  # 4 blocks: merged in block 1
    assert merged.shape == stock.shape and not torch.allclose(merged, stock)
    # The hooks are gone after the block: the tower is stock again.
    assert torch.equal(attention_rows(four_block_qa, frames, 1.0)[1], stock)
    # Keeping every patch changes nothing.
    torch.testing.assert_close(attention_rows(four_block_qa, frames, 1.0 - 1e-9)[1], stock)


def test_vision_flops_and_tokens_are_predicted_exactly(four_block_qa, random_frames):
    for config in (AIMConfig.none(), AIMConfig(), AIMConfig.from_efficiency(0.75), AIMConfig.from_efficiency(1.0)):
        stats = four_block_qa.answer(random_frames, QUESTION, config, num_frames=8, max_new_tokens=2).stats
        estimate = four_block_qa.estimate(config, 8, random_frames.shape[1:3], QUESTION)
        assert (stats.vision_flops, stats.vision_flops_baseline) == (estimate.vision_flops,
                                                                     estimate.vision_flops_baseline)
        assert stats.total_flops == estimate.total_flops
        assert stats.vision_tokens_per_layer == vision_keep_counts(4, 64, config.vision_keep, output_layer=3)
    assert stats.vision_flops < stats.vision_flops_baseline and stats.total_reduction > stats.flops_reduction / 3


def test_the_vision_cache_is_per_vision_setting(four_block_qa, random_frames):
    frames = random_frames[:5]
    first = four_block_qa.answer(frames, QUESTION, AIMConfig.from_efficiency(0.75), max_new_tokens=1).stats
    again = four_block_qa.answer(frames, "And then?", AIMConfig.from_efficiency(0.75), max_new_tokens=1).stats
    paper = four_block_qa.answer(frames, QUESTION, AIMConfig(), max_new_tokens=1).stats
    assert not first.vision_cached and again.vision_cached and not paper.vision_cached
    assert again.vision_seconds == first.vision_seconds  # what encoding took, reported with the cached result
    assert first.first_answer_seconds >= first.vision_seconds + first.prefill_seconds


def test_a_whole_pipeline_budget_fits_the_tower_too():
    """At the cost of 32 unreduced frames of LLaVA-OneVision-0.5B's shapes, the prefill alone would buy 4x the
    frames at the default setting; counting the vision tower, 3x fits there and 4x needs a higher efficiency."""
    vision = VisionWork(so400m_shape(), 729, output_layer=25)
    budget = estimate_cost(QWEN2_0_5B, 32, 196, 100, AIMConfig.none(), 1, vision=vision).total_flops
    whole = plan_for_budget(QWEN2_0_5B, budget, 196, 100, unmerged_visual_tokens=1, vision=vision)
    prefill_only_budget = estimate_cost(QWEN2_0_5B, 32, 196, 100, AIMConfig.none(), 1).flops
    prefill_only = plan_for_budget(QWEN2_0_5B, prefill_only_budget, 196, 100, unmerged_visual_tokens=1)
    assert whole.estimate.total_flops <= budget and prefill_only.estimate.flops <= prefill_only_budget
    assert (whole.num_frames, prefill_only.num_frames) == (96, 128)

    def cost(frames: int, config: AIMConfig) -> int:
        return estimate_cost(QWEN2_0_5B, frames, 196, 100, config, 1, vision=vision).total_flops

    assert cost(128, AIMConfig.from_efficiency(0.75)) > budget >= cost(128, AIMConfig.from_efficiency(0.9))
    assert cost(96, AIMConfig()) > budget  # the paper's method alone leaves the tower at 3x its cost


def test_where_the_time_went_stacks_every_stage_next_to_no_reduction(four_block_qa, random_frames):
    frames = random_frames[:7]  # not encoded by another test: the tower runs for both
    stats = four_block_qa.answer(frames, QUESTION, AIMConfig.from_efficiency(0.75), max_new_tokens=2).stats
    baseline = four_block_qa.answer(frames, QUESTION, AIMConfig.none(), max_new_tokens=2).stats
    figure = time_figure(stats, "efficiency 0.75", baseline)
    assert [trace.name for trace in figure.data] == [name for name, _, _ in STAGES]
    vision = next(trace for trace in figure.data if trace.name == "vision tower")
    assert list(vision.x) == [baseline.vision_seconds, stats.vision_seconds]
    assert "measured" in vision.y[0]
    predicted = time_figure(stats, "efficiency 0.75")
    prefill = next(trace for trace in predicted.data if trace.name == "LLM prefill")
    assert prefill.x[0] == pytest.approx(stats.prefill_seconds * stats.flops_baseline / stats.flops)
    assert "predicted" in prefill.y[0]
    cards = stats_cards(stats)
    assert "of a first answer" in cards and "vision + prefill" in cards


def test_history_tracks_the_first_answer_against_no_reduction(four_block_qa, random_frames):
    key = RunKey("tiny", "clip", 8, QUESTION)
    reduced = four_block_qa.answer(random_frames, QUESTION, AIMConfig.from_efficiency(0.75), max_new_tokens=1)
    history = History().add(RunPoint.of(key, 0.75, reduced))
    assert history.first_answer_fraction(history.points[0]) is None
    stock = four_block_qa.answer(random_frames, QUESTION, AIMConfig.none(), max_new_tokens=1)
    history.add(RunPoint.of(key, 0.0, stock))
    fraction = history.first_answer_fraction(history.points[0])
    assert fraction == pytest.approx(reduced.stats.first_answer_seconds / stock.stats.first_answer_seconds)
    assert history.points[0].total_flops_fraction == reduced.stats.total_flops / reduced.stats.total_flops_baseline


def test_the_pictures_show_what_was_merged_inside_the_tower(four_block_qa, random_frames):
    frames = random_frames[:3]
    merged = four_block_qa.answer(frames, QUESTION, AIMConfig.from_efficiency(0.75), max_new_tokens=1)
    clusters = merged.trace.vision_clusters()
    assert clusters.shape == (3, 8, 8) and all(len(np.unique(frame)) == 16 for frame in clusters)
    gallery = Pictures.of(merged.trace).vision_gallery()
    assert len(gallery) == 3 and gallery[0][1].endswith("64→16")
    whole = four_block_qa.answer(frames, QUESTION, AIMConfig(), max_new_tokens=1)
    assert whole.trace.vision_clusters() is None and Pictures.of(whole.trace).vision_gallery() == []


def test_the_app_merges_inside_the_tower_by_default_only_where_the_tower_is_most_of_the_cost():
    from app.models import DEMO_MODEL, ModelChoice, ModelRegistry
    from app.session import Runner

    def runner(model_and_processor) -> Runner:
        choice = ModelChoice("test", "test model")
        return Runner(ModelRegistry(DEMO_MODEL, choice, VideoQA.from_model(*model_and_processor)))

    big_tower = LlavaOnevisionShape(image_size=64, patch_size=8, vision_hidden=256, vision_layers=6, text_layers=2)
    assert runner(build_llava_onevision(big_tower)).vision_merge_pays()
    assert not runner(build_llava_onevision(FOUR_BLOCKS)).vision_merge_pays()  # a 32-wide tower: the LLM dominates
    assert not runner(build_qwen_vl(QwenVLShape(family="qwen2_5_vl"))).vision_merge_pays()  # a 32-wide tower too
