"""Token merging inside the packed, windowed vision towers of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the segment math,
the hooks on tiny random stock models (fewer rows per block, the stock grid for the patch mergers, attention
segments and positions kept), and the engine's stats and estimates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import background_with_objects

from aim_core import AIMConfig, VideoQA
from aim_core.config import MERGE_ROUND, vision_keep_counts
from aim_core.merge import merge_frames
from aim_core.packed_merge import PackedMerge, merge_segments, remap_boundaries, split_count
from aim_core.random_models import QwenVLShape, build_qwen_vl
from app.pictures import Pictures

QUESTION = "Which colour appears first?"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# 160x224 frames are the size the reference gives them (no resize): 20x28 patches of 8 px a step, 10x14 LLM tokens.
HEIGHT, WIDTH = 160, 224
PATCHES = (HEIGHT // 8) * (WIDTH // 8)
# Qwen2.5-VL windows of 48 px (3x3 LLM tokens): 4x5 windows a step, those on the bottom and right edges smaller.
WINDOWED = {"vision_window": 48}


def frames(seed: int = 0, count: int = 4) -> np.ndarray:
    """uint8 `[count, 160, 224, 3]`: smooth gradients plus noise, so some patches are alike."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rng = np.random.default_rng(seed)
    base = np.stack([(x + y) % 256, (2 * y) % 256, (3 * x) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 12, (count, HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)


def build(family: str, **shape) -> VideoQA:
    sizes = {"vision_layers": 4, **(WINDOWED if family == "qwen2_5_vl" else {}), **shape}
    return VideoQA.from_model(*build_qwen_vl(QwenVLShape(family=family, **sizes), seed=0))


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request) -> VideoQA:
    torch.set_num_threads(2)
    return build(request.param)


def encode(qa: VideoQA, video: np.ndarray, keep: float) -> tuple[list[int], torch.Tensor, list[torch.Tensor]]:
    """Rows each block's attention was handed, the video's tokens and its deepstack features, merging at `keep`."""
    rows: list[int] = []
    with qa.adapter.vision_token_merger(keep):
        # Registered after the merger's hooks, so they see what the attention itself gets.
        spies = [block.attn.register_forward_pre_hook(lambda module, args, kwargs: rows.append(len(args[0])),
                                                      with_kwargs=True) for block in qa.adapter.vision_layers]
        try:
            encoding = qa.adapter.encode_video(video)
        finally:
            for spy in spies:
                spy.remove()
    return rows, encoding.tokens, encoding.extras["deepstack"]


# The segment math


def test_shares_follow_the_lengths_and_sum_to_the_total():
    assert split_count(16, [64, 64]) == [8, 8]
    assert split_count(10, [36, 12, 24, 8]) == [5, 1, 3, 1]  # 4.5, 1.5, 3, 1: the first half goes to the first
    for total, lengths in ((10, [36, 12, 24, 8]), (7, [5, 5, 5]), (80, [64, 16, 48, 12]), (3, [1, 9, 9])):
        shares = split_count(total, lengths)
        assert sum(shares) == total and all(1 <= s <= n for s, n in zip(shares, lengths))
    assert split_count(2, [4, 4, 4]) == [1, 1, 1]  # each segment keeps a token: more than asked


def test_segments_of_equal_length_merge_as_frames_do():
    tokens = torch.randn(3, 40, 8)
    packed = merge_segments(PackedMerge.start(tokens.flatten(0, 1), [40] * 3), tokens.flatten(0, 1), [10] * 3)
    framed = merge_frames(tokens, 0.25)
    torch.testing.assert_close(packed.tokens, framed.tokens.flatten(0, 1))
    assert torch.equal(packed.source, (framed.source + torch.arange(3)[:, None] * 10).flatten())


def test_merging_stays_in_each_segment_and_every_row_keeps_a_member_s_position():
    lengths = [36, 12, 24, 8, 36]
    tokens = torch.randn(sum(lengths), 8)
    state = PackedMerge.start(tokens, lengths)
    merged = merge_segments(state, tokens, [9, 3, 6, 2, 9])
    merged = merge_segments(merged, merged.tokens + 0.1 * torch.randn_like(merged.tokens), [5, 1, 6, 2, 4])
    assert merged.lengths.tolist() == [5, 1, 6, 2, 4] and len(merged.tokens) == 18
    segment_of_row = torch.repeat_interleave(torch.arange(5), torch.tensor(lengths))
    segment_of_merged = torch.repeat_interleave(torch.arange(5), merged.lengths)
    assert torch.equal(segment_of_merged[merged.source], segment_of_row)  # no row left its segment
    assert torch.equal(merged.source[merged.representative], torch.arange(18))  # a member of its own cluster
    assert torch.equal(torch.bincount(merged.source), merged.sizes)
    assert (merged.representative.diff() > 0).all()  # merged rows keep the original order
    # The segments' boundaries, and boundaries made of whole segments (a frame of windows), in merged rows.
    assert merged.bounds.tolist() == [0, 5, 6, 12, 14, 18]
    frames = torch.tensor([0, 72, sum(lengths)], dtype=torch.int32)
    assert remap_boundaries(merged, state.bounds, frames).tolist() == [0, 12, 18]
    with pytest.raises(ValueError):
        remap_boundaries(merged, state.bounds, torch.tensor([0, 40]))


def test_small_rounds_keep_a_lone_object_apart_in_its_segment():
    rows = background_with_objects(frames=1, n=64, objects=(10, 36))[0]
    state = PackedMerge.start(rows, [32, 32])  # one object in each segment
    forced = merge_segments(state, rows, [8, 8])
    patient = merge_segments(state, rows, [8, 8], max_round_fraction=MERGE_ROUND)
    assert patient.lengths.tolist() == [8, 8]
    for index in (10, 36):
        assert forced.sizes[forced.source[index]] > 1 and patient.sizes[patient.source[index]] == 1


def test_merging_nothing_changes_nothing():
    tokens = torch.randn(50, 8)
    state = PackedMerge.start(tokens, [20, 30])
    same = merge_segments(state, tokens, [20, 30])
    assert torch.equal(same.tokens, tokens) and torch.equal(same.source, torch.arange(50))
    assert torch.equal(same.representative, torch.arange(50))


# The hooks on the stock towers


def test_keep_one_installs_no_hook_and_is_the_stock_tower(qwen):
    video = frames()
    blocks = qwen.adapter.vision_layers
    with qwen.adapter.vision_token_merger(1.0):
        assert not any(block._forward_pre_hooks for block in blocks)
        assert not qwen.model.model.visual._forward_pre_hooks
        tokens = qwen.adapter.encode_video(video).tokens
    assert torch.equal(tokens, qwen.adapter.encode_video(video).tokens)


def test_merging_hands_the_blocks_fewer_rows_and_the_mergers_the_whole_grid(qwen):
    video = frames()
    stock_rows, stock, stock_deepstack = encode(qwen, video, 1.0)
    rows, merged, deepstack = encode(qwen, video, 0.25)
    assert stock_rows == [2 * PATCHES] * 4
    assert rows == [2 * count for count in vision_keep_counts(4, PATCHES, 0.25)] == [2 * PATCHES] + [2 * 140] * 3
    assert merged.shape == stock.shape and not torch.allclose(merged, stock)
    assert [layer.shape for layer in deepstack] == [layer.shape for layer in stock_deepstack]
    # The hooks are gone after the forward: the tower is stock again.
    assert torch.equal(encode(qwen, video, 1.0)[1], stock)


def test_a_merge_that_keeps_every_patch_reproduces_the_stock_tower(qwen):
    """The hooks still hand each block its rows, cu_seqlens and cos/sin, and unmerge before the patch mergers."""
    video = frames()
    _, stock, stock_deepstack = encode(qwen, video, 1.0)
    rows, tokens, deepstack = encode(qwen, video, 1.0 - 1e-9)
    assert qwen.adapter.vision_token_merger(1.0 - 1e-9).keep < 1.0 and rows == [2 * PATCHES] * 4
    torch.testing.assert_close(tokens, stock)
    for layer, stock_layer in zip(deepstack, stock_deepstack, strict=True):
        torch.testing.assert_close(layer, stock_layer)


def test_merged_steps_attend_only_to_themselves(qwen):
    """Changing the second step's frames leaves the first step's merged features as they were: each block's
    cu_seqlens still part the merged rows where the steps part."""
    video = frames()
    changed = video.copy()
    changed[2:] = frames(seed=1, count=2)
    before, after = encode(qwen, video, 0.25)[1], encode(qwen, changed, 0.25)[1]
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_merged_windows_attend_only_to_themselves():
    """Qwen2.5-VL with every block windowed: changing the pixels of the first window of the first step leaves the
    other windows' merged features as they were."""
    qa = build("qwen2_5_vl", full_attention_blocks=())
    video = frames()
    changed = video.copy()
    changed[:2, :48, :48] = 255 - changed[:2, :48, :48]
    rows, before, _ = encode(qa, video, 0.25)
    after = encode(qa, changed, 0.25)[1]
    assert rows[1:] == [2 * 140] * 3  # 140 a step: the windows' shares add up to the schedule's count
    in_window = torch.zeros(10, 14, dtype=torch.bool)
    in_window[:3, :3] = True
    in_window = in_window.flatten()
    torch.testing.assert_close(after[0, ~in_window], before[0, ~in_window])
    torch.testing.assert_close(after[1], before[1])
    assert not torch.allclose(after[0, in_window], before[0, in_window])


# The engine


def test_stats_estimates_and_pictures_tell_what_the_tower_did(qwen):
    video = frames()
    for config in (AIMConfig.none(), AIMConfig(), AIMConfig.from_efficiency(0.75)):
        answer = qwen.answer(video, QUESTION, config, max_new_tokens=2)
        stats = answer.stats
        estimate = qwen.estimate(config, 4, (HEIGHT, WIDTH), QUESTION, fps=1.0)
        assert stats.vision_tokens_per_layer == vision_keep_counts(4, PATCHES, config.vision_keep)
        assert (stats.vision_flops, stats.vision_flops_baseline, stats.flops) == (
            estimate.vision_flops, estimate.vision_flops_baseline, estimate.flops)
        assert stats.new_tokens == 2
    assert stats.vision_flops < stats.vision_flops_baseline
    clusters = answer.trace.vision_clusters()
    assert clusters.shape == (4, 20, 28) and all(len(np.unique(frame)) == 140 for frame in clusters)
    assert np.array_equal(clusters[0], clusters[1])  # a step's two frames share its tokens
    gallery = Pictures.of(answer.trace).vision_gallery()
    assert len(gallery) == 4 and gallery[0][1].endswith("560→140")


def test_an_image_merges_inside_the_tower_too(qwen):
    image = frames(count=1)[0]
    stock = qwen.answer(image, QUESTION, AIMConfig.none(), max_new_tokens=1)
    merged = qwen.answer(image, QUESTION, AIMConfig.from_efficiency(0.75), max_new_tokens=1)
    assert merged.stats.vision_tokens_per_layer == vision_keep_counts(4, PATCHES, 0.25)
    assert merged.trace.vision_clusters().shape == (1, 20, 28) and stock.trace.vision_clusters() is None


def test_the_app_merges_a_qwen_tower_by_default_where_it_is_most_of_the_cost():
    from app.models import DEMO_MODEL, ModelChoice, ModelRegistry
    from app.session import Runner

    def runner(shape: QwenVLShape) -> Runner:
        qa = VideoQA.from_model(*build_qwen_vl(shape))
        return Runner(ModelRegistry(DEMO_MODEL, ModelChoice("test", "test model"), qa))

    assert runner(QwenVLShape(family="qwen2_5_vl", vision_hidden=256, vision_layers=6, text_layers=2)
                  ).vision_merge_pays()
    assert not runner(QwenVLShape(family="qwen2_5_vl")).vision_merge_pays()  # a 32-wide tower: the LLM dominates
