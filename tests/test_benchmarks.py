"""The accuracy sweep compares methods at equal FLOPs: each method's chosen setting must fit the budget it is
compared at, and cost must fall as a method's knob turns (the bisection relies on it)."""

from dataclasses import asdict
from pathlib import Path

import pytest

from aim_core import AIMConfig, VideoQA
from benchmarks.synthetic_sweep import BUDGETS, METHODS, fraction, least_reduction

MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
FRAMES = 32


@pytest.fixture(scope="module")
def demo_qa() -> VideoQA:
    return VideoQA.from_pretrained(str(MODEL_DIR))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_each_method_costs_less_as_its_knob_turns(demo_qa: VideoQA, method) -> None:
    costs = [fraction(demo_qa, method.setting(knob / 10), FRAMES, FRAMES) for knob in range(11)]
    assert costs[0] == pytest.approx(1.0, abs=0.02)  # knob 0 is (about) no reduction
    assert all(later <= earlier + 1e-9 for earlier, later in zip(costs, costs[1:]))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_the_setting_chosen_for_a_budget_fits_it_and_reduces_no_more_than_needed(demo_qa: VideoQA, method) -> None:
    for budget in BUDGETS:
        setting = least_reduction(demo_qa, method, budget, FRAMES)
        if setting is None:  # the method cannot get this cheap: even its strongest setting costs more
            assert fraction(demo_qa, method.setting(1.0), FRAMES, FRAMES) > budget
            continue
        assert fraction(demo_qa, setting, FRAMES, FRAMES) <= budget
        assert fraction(demo_qa, setting, FRAMES, FRAMES) > 0.5 * budget


def test_pruning_until_the_last_layer_keeps_visual_tokens_in_every_layer_but_the_last() -> None:
    (to_last,) = [m for m in METHODS if m.name == "AIM, pruning until the last layer"]
    counts = to_last.setting(0.75).visual_keep_counts(8, 128)
    assert counts == AIMConfig(prune_end=1.0).visual_keep_counts(8, 128)
    assert all(count > 0 for count in counts[:-1]) and counts[-1] == 0
    assert AIMConfig().visual_keep_counts(8, 128)[5:] == [0, 0, 0]  # the paper's schedule, on 8 layers


def test_the_sweep_plot_is_drawn_from_every_reached_cell_of_its_table():
    from benchmarks.synthetic_sweep import RESULTS, plot, table_points

    table = (RESULTS / "synthetic_qa-seed0.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith("| ") and "FLOPs)" in r and r.count("|") == len(BUDGETS) + 2]
    points = table_points(table)
    assert len(points) == len(rows) >= 6
    for row in rows:
        name, *cells = [cell.strip() for cell in row.strip("|").split("|")]
        reached = [cell for cell in cells if cell != "cannot reach"]
        assert [f"{accuracy:.1f}% ({flops:.1f}% FLOPs)" for flops, accuracy in points[name]] == reached
    figure = plot(table)
    assert {trace.name for trace in figure.data} == {*points, "no reduction", "AIM default"}


def test_the_per_kind_table_has_a_row_per_setting_with_its_accuracy_and_flops_against_the_first() -> None:
    from benchmarks.synthetic_qa import Result
    from benchmarks.synthetic_sweep import kind_table

    def result(first: float, direction: float, flops: float) -> Result:
        return Result((first + direction) / 2, {"first": first, "direction": direction}, 200, flops, 4.0, 0.1)

    rows = kind_table({"no reduction": result(1.0, 0.75, 4.0), "AIM default": result(0.99, 0.4, 0.5)})
    assert rows == [
        "| setting | first | direction | all | FLOPs |",
        "|---|---|---|---|---|",
        "| no reduction | 100.0% | 75.0% | 87.5% | 100.0% |",
        "| AIM default | 99.0% | 40.0% | 69.5% | 12.5% |",
    ]


def test_the_sample_answers_table_marks_each_wrong_answer_and_counts_the_right_ones_per_setting() -> None:
    from benchmarks.sample_answers import SETTINGS, table

    rows = [("a.mp4", "Which way?", 32, "up", ["up", "left", "up"]),
            ("a.mp4", "How many?", 128, "two", ["one", "one", "two"])]
    lines = table(rows)
    assert len(lines) == 2 + len(rows) + 1 and len(SETTINGS) == 3
    assert lines[2] == "| a.mp4 | Which way? | 32 | up | up | left (wrong) | up |"
    assert lines[3] == "| a.mp4 | How many? | 128 | two | one (wrong) | one (wrong) | two |"
    assert lines[-1] == "| **right** | | | | **1 of 2** | **0 of 2** | **2 of 2** |"


def test_folding_counts_a_shape_merged_with_another_and_a_shape_drowned_in_background() -> None:
    import numpy as np

    from benchmarks.merge_folding import Folding

    owners = np.array([[0, 0, 1, -1, -1, -1]])  # shape 0 on two tokens, shape 1 on one, three background tokens
    apart = Folding()
    apart.add(owners, np.array([[0, 0, 1, 2, 2, 2]]))  # each shape its own merged token
    assert (apart.shapes, apart.mixed, apart.drowned) == (2, 0, 0)
    folded = Folding()
    folded.add(owners, np.array([[0, 1, 1, 1, 2, 2]]))  # shape 0 split, one half with shape 1 and background
    assert (folded.shapes, folded.mixed, folded.drowned) == (2, 2, 1)  # shape 0 keeps token 0 to itself


def test_unpooled_tokens_are_the_patches_the_pooled_tokens_average(demo_qa: VideoQA) -> None:
    import torch
    import torch.nn.functional as F

    from aim_core.video import frame_indices
    from benchmarks.merge_folding import visual_tokens
    from synthetic.scenes import make_scene, render

    scene = make_scene(7)
    frames = render(scene, demo_qa.adapter.processor.video_processor.size["height"], frame_indices(scene.num_frames, 4))
    pooled, unpooled = visual_tokens(demo_qa, frames, False), visual_tokens(demo_qa, frames, True)
    assert pooled.shape[:2] == (4, 16) and unpooled.shape[:2] == (4, 64)
    grid = unpooled.view(4, 8, 8, -1).permute(0, 3, 1, 2)
    averaged = F.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(4, 16, -1)
    torch.testing.assert_close(averaged, pooled, atol=2e-3, rtol=1e-2)
    assert demo_qa.adapter.encode_video(frames).tokens.shape[1] == 16  # pooling is back once the patch ends


def test_peak_rss_counts_memory_that_earlier_work_left_free_in_the_heap() -> None:
    import torch

    from benchmarks.latency import PeakRSS

    # 100 kB blocks, below glibc's default mmap threshold, so they come from the heap; a small block after each keeps
    # glibc from trimming the heap when the large ones are freed, as the warm-up and timed runs leave it.
    blocks = [(torch.ones(25_000), torch.ones(16)) for _ in range(2000)]
    pins = [pin for _, pin in blocks]
    del blocks
    with PeakRSS() as memory:
        held = [torch.ones(25_000) for _ in range(1000)]
    assert memory.extra_bytes > 0.5 * len(held) * 100_000
    del held, pins


def test_synthetic_qa_json_keeps_its_fields(monkeypatch, capsys) -> None:
    import json
    import sys

    from benchmarks import synthetic_qa

    monkeypatch.setattr(sys, "argv", ["synthetic_qa", "--n", "7", "--frames", "8", "--json"])
    synthetic_qa.main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "per_kind", "flops", "flops_baseline", "n"} <= printed.keys()
    assert printed["n"] == 7 and len(printed["per_kind"]) == 7 and 0.0 <= printed["accuracy"] <= 1.0
    assert printed["config"] == asdict(AIMConfig())
    assert 0 < printed["flops"] < printed["flops_baseline"]
