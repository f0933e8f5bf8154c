"""aim_core.visualize: cluster and kept-token overlays drawn from trace data."""

from __future__ import annotations

import numpy as np
import pytest

from aim_core import AIMConfig, VideoQA
from aim_core.visualize import BORDER_COLOUR, KEPT_BORDER_COLOUR, cluster_overlay, fit, kept_overlay, token_map


def test_token_map_covers_a_frame_whose_size_is_not_a_multiple_of_the_grid():
    grid = np.arange(6).reshape(2, 3)
    mapped = token_map(grid, 5, 7)
    assert mapped.shape == (5, 7)
    # rows 0-2 belong to token row 0 (0 * 2 // 5 .. 2 * 2 // 5), rows 3-4 to row 1; columns split 3/2/2
    assert mapped[:3, 0].tolist() == [0, 0, 0] and mapped[3:, 0].tolist() == [3, 3]
    assert mapped[0].tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_cluster_overlay_paints_each_cluster_in_its_mean_colour_and_outlines_it():
    frame = np.zeros((40, 40, 3), dtype=np.uint8)
    frame[:, :20] = (200, 0, 0)
    frame[:, 20:] = (0, 0, 100)
    clusters = np.array([[0, 1], [0, 1]])  # left half one token, right half another
    picture = cluster_overlay(frame, clusters, tint=1.0)
    assert picture.shape == frame.shape and picture.dtype == np.uint8
    assert (picture[:, :19] == (200, 0, 0)).all()
    assert (picture[:, 21:] == (0, 0, 100)).all()
    assert (picture[:, 19] == BORDER_COLOUR).all()  # the one line between the two clusters
    assert not (picture[19, :19] == BORDER_COLOUR).all(axis=-1).any()  # no line inside a cluster


def test_cluster_overlay_merges_patches_that_are_far_apart_into_one_colour():
    frame = np.zeros((20, 20, 3), dtype=np.uint8)
    frame[:10, :10] = 100
    frame[10:, 10:] = 200
    clusters = np.array([[7, 3], [3, 7]])  # ids need not be 0..n-1; the diagonal is one token
    picture = cluster_overlay(frame, clusters, tint=1.0)
    assert (picture[2, 2] == 150).all() and (picture[15, 15] == 150).all()  # mean of 100 and 200
    assert (picture[2, 15] == 0).all()


def test_cluster_overlay_with_no_tint_keeps_the_frame_except_the_borders():
    frame = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    picture = cluster_overlay(frame, np.array([[0, 1], [2, 3]]), tint=0.0)
    inside = np.ones((16, 16), dtype=bool)
    inside[7, :] = inside[:, 7] = False
    assert (picture[inside] == frame[inside]).all()


def test_kept_overlay_greys_dropped_tokens_and_outlines_kept_ones():
    frame = np.full((40, 40, 3), (250, 50, 50), dtype=np.uint8)
    kept = np.array([[True, False], [False, False]])
    picture = kept_overlay(frame, kept, dim=0.3)
    assert (picture[5:15, 5:15] == (250, 50, 50)).all()  # kept: untouched inside
    dropped = picture[30, 30]
    assert dropped[0] == dropped[1] == dropped[2] and dropped[0] < 110  # grey and dark
    assert (picture[19, 5] == KEPT_BORDER_COLOUR).all() and (picture[5, 19] == KEPT_BORDER_COLOUR).all()
    assert not (picture[20:, :] == KEPT_BORDER_COLOUR).all(axis=-1).any()  # outline stays on the kept side


def test_fit_keeps_the_aspect_ratio_and_enlarges_small_frames_crisply():
    frame = np.zeros((9, 16, 3), dtype=np.uint8)
    frame[:, 8:] = 255
    large = fit(frame, 160)
    assert large.shape == (90, 160, 3)
    assert set(np.unique(large)) == {0, 255}  # nearest neighbour: no blurred edge
    assert fit(np.zeros((400, 300, 3), dtype=np.uint8), 100).shape == (100, 75, 3)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), "frame"])
def test_bad_frames_are_refused(bad):
    with pytest.raises(ValueError, match="frame must be"):
        cluster_overlay(bad, np.zeros((2, 2), int))


def test_overlays_of_a_real_trace(tiny_llava, random_frames):
    answer = VideoQA.from_model(*tiny_llava).answer(random_frames, "What happens?", AIMConfig(), num_frames=8,
                                                    max_new_tokens=2)
    trace = answer.trace
    clusters, kept = trace.clusters(), trace.kept_patches(5)
    frame = fit(trace.frames.frames[0], 96)
    merged = cluster_overlay(frame, clusters[0])
    assert merged.shape == frame.shape
    assert len(np.unique(clusters[0])) == trace.merged_per_frame  # 25% of 16 tokens: 4 clusters to draw
    shown = kept_overlay(frame, kept[0])
    assert shown.shape == frame.shape
    assert kept.sum() < kept.size  # layer 5 is past the start of pruning (layer 4 of 8)
