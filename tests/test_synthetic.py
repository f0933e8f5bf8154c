"""The synthetic long-video QA generator, the demo model's training forward, the shipped samples and model."""

import itertools
import json
import timeit
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from aim_core.video import frame_indices, sample_frames
from synthetic.evaluate import (
    COUNT_GROUPS,
    ask,
    evaluate,
    format_report,
    later_sightings,
    mistake,
    normalise,
    other_movers,
)
from synthetic.scenes import (
    COLOURS,
    DIRECTIONS,
    FRAME_COUNTS,
    KINDS,
    NUMBERS,
    SHAPES,
    SPLITS,
    _answerable,
    make_example,
    make_scene,
    pick,
    questions,
    questions_seen,
    render,
    sampling_grids,
    split_seeds,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "assets" / "demo-model"
SAMPLES_DIR = ROOT / "assets" / "samples"
ANSWERS = {
    "first": {*COLOURS, *SHAPES},
    "last": {*COLOURS, *SHAPES},
    "after": {*COLOURS, *SHAPES},
    "which": {*COLOURS, *SHAPES},
    "count": set(NUMBERS),
    "direction": set(DIRECTIONS),
    "exists": {"yes", "no"},
}


def test_examples_are_deterministic_and_differ_between_seeds():
    a, b, c = make_example(7), make_example(7), make_example(8)
    assert np.array_equal(a.frames, b.frames) and a.questions == b.questions and a.scene == b.scene
    assert a.scene != c.scene
    assert a.frames.dtype == np.uint8 and a.frames.shape[1:] == (64, 64, 3)
    assert 64 <= len(a.frames) <= 256


def test_rendering_a_subset_of_frames_matches_rendering_all():
    scene = make_scene(3, 200)
    picked = frame_indices(200, 32)
    assert np.array_equal(render(scene, 48, picked), render(scene, 48)[picked])


def test_splits_are_disjoint_and_bounded():
    names = list(SPLITS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert max(SPLITS[a].start, SPLITS[b].start) >= min(SPLITS[a].stop, SPLITS[b].stop)
    assert split_seeds("val", 3, offset=5) == range(SPLITS["val"].start + 5, SPLITS["val"].start + 8)
    with pytest.raises(ValueError):
        split_seeds("test", len(SPLITS["test"]) + 1)


def test_every_kind_is_generated_with_answers_from_its_vocabulary():
    asked = [q for seed in split_seeds("val", 40) for q in questions(make_scene(seed))]
    assert {q.kind for q in asked} == set(KINDS)
    for q in asked:
        assert q.answer in ANSWERS[q.kind], q
        assert q.min_frames in FRAME_COUNTS
    # Long events are answerable from the app's default 32 frames; brief ones need more, for every kind.
    at_32 = Counter(q.kind for q in asked if q.min_frames <= 32)
    assert all(at_32[kind] > 0 for kind in KINDS)
    assert any(q.min_frames >= 64 for q in asked)


def test_pick_balances_answers():
    asked = [
        q for seed in split_seeds("val", 200) for q in pick(questions(make_scene(seed)), np.random.default_rng(seed), 1)
    ]
    exists = Counter(q.answer for q in asked if q.kind == "exists")
    assert abs(exists["yes"] - exists["no"]) < 0.2 * sum(exists.values())


def test_min_frames_is_enough_for_the_apps_sampling_and_brief_questions_need_it():
    for seed in split_seeds("val", 30):
        scene = make_scene(seed)
        for question in questions(scene):
            for count in FRAME_COUNTS:
                seen = _answerable(scene, frame_indices(scene.num_frames, count))
                if count >= question.min_frames:
                    assert seen.get(question.text) == (question.answer, question.kind)
            if question.min_frames > 32:
                grids = sampling_grids(scene.num_frames, 32)
                assert any(question.text not in _answerable(scene, grid) for grid in grids)


def test_questions_seen_are_the_questions_the_frames_show_with_the_same_labels():
    rng = np.random.default_rng(0)
    shown = Counter()
    for seed in split_seeds("train", 40):
        scene = make_scene(seed)
        every = questions(scene)
        for count in (1, 2, 8, 32):
            grids = sampling_grids(scene.num_frames, count)
            frames = grids[rng.integers(len(grids))]
            seen = questions_seen(scene, frames)
            assert seen == [q for q in every if q.text in _answerable(scene, frames)]
            shown[count] += len(seen)
    assert 0 < shown[1] < shown[8] < shown[32]


def test_the_apps_sampling_grid_is_one_the_labels_hold_for():
    for total, count in [(256, 32), (100, 32), (64, 16), (250, 128), (50, 64)]:
        grids = sampling_grids(total, count)
        assert any(np.array_equal(frame_indices(total, count), grid) for grid in grids)


def test_pixels_agree_with_the_scene():
    """Each shape shows its colour around its centre while visible; frames with no shape have no saturated pixel."""
    for seed in split_seeds("val", 10):
        scene = make_scene(seed)
        frames = render(scene, 64).astype(np.float32)
        visible = np.zeros(scene.num_frames, dtype=bool)
        for sprite in scene.sprites:
            visible[sprite.start : sprite.stop] = True
            t = (sprite.start + sprite.stop - 1) // 2
            x, y = (int(v * 64) for v in sprite.centre(t))
            near = frames[t, max(y - 8, 0) : y + 8, max(x - 8, 0) : x + 8]  # a ring is hollow at its centre
            assert (np.abs(near - np.array(COLOURS[sprite.colour])).max(-1) < 2).any()
        saturation = frames.max(-1) - frames.min(-1)
        assert saturation[~visible].max() < 100 < saturation[visible].max(axis=(1, 2)).min()


def test_directions_agree_with_the_pixels():
    for seed in split_seeds("val", 10):
        scene = make_scene(seed)
        for q in questions(scene):
            if q.kind != "direction":
                continue
            sprite = next(s for s in scene.sprites if f"the {s.name} move" in q.text)
            ends = render(scene, 64, np.array([sprite.start, sprite.stop - 1])).astype(np.float32)
            target = np.array(COLOURS[sprite.colour], dtype=np.float32)
            centres = [np.argwhere(np.abs(f - target).max(-1) < 30).mean(0) for f in ends]  # (y, x)
            dy, dx = centres[1] - centres[0]
            moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert moved == q.answer


def _seen_in_pixels(frames: np.ndarray, sprite, frame_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the 64 px `frames` (frame numbers `frame_numbers`) show `sprite`'s colour where it should be, judged
    from the pixels alone, and where (y, x) that colour's pixels are centred in each."""
    target = np.array(COLOURS[sprite.colour], dtype=np.float32)
    half = int(sprite.size * 0.55 * 64) + 2
    seen, centres = [], []
    for frame, number in zip(frames.astype(np.float32), frame_numbers):
        x, y = (int(v * 64) for v in sprite.centre(int(number)))
        box = frame[max(y - half, 0) : y + half, max(x - half, 0) : x + half]
        hits = np.argwhere(np.abs(box - target).max(-1) < 30)
        seen.append(len(hits) >= 12)
        centres.append(hits.mean(0) + [max(y - half, 0), max(x - half, 0)] if len(hits) else np.zeros(2))
    return np.array(seen), np.array(centres)


def test_questions_follow_the_written_rules_from_the_sampled_pixels():
    """Each question asked about frames sampled as the app samples them is answered for certain from those 64 px
    frames: "which way" by a move of at least 3 px along the answer, "first", "last" and "right after" by an order
    with no ties."""
    checked = Counter()
    for seed, num_frames in zip(split_seeds("val", 60), itertools.cycle((4, 8, 32))):
        scene = make_scene(seed)
        picked = frame_indices(scene.num_frames, num_frames)
        frames = render(scene, 64, picked)
        seen = {}
        visible = {s.name: (picked >= s.start) & (picked < s.stop) for s in scene.sprites}
        for sprite in scene.sprites:
            shown, centres = _seen_in_pixels(frames, sprite, picked)
            # Where another shape of the same colour is on screen too, colour alone cannot say which is which.
            others = [visible[s.name] for s in scene.sprites if s.colour == sprite.colour and s != sprite]
            alone = ~np.any(others, axis=0) if others else np.ones(len(picked), dtype=bool)
            assert np.array_equal(shown[alone], visible[sprite.name][alone])
            seen[sprite.name] = (np.flatnonzero(np.where(alone, shown, visible[sprite.name])), centres)
        first_seen = {name: int(k[0]) for name, (k, _) in seen.items() if len(k)}
        order = sorted(first_seen, key=first_seen.get)
        for q in questions_seen(scene, picked):
            if q.kind == "direction":
                name = q.text.removeprefix("Which way does the ").removesuffix(" move?")
                shown, centres = seen[name]
                dy, dx = centres[shown[-1]] - centres[shown[0]]
                along = {"right": dx, "left": -dx, "down": dy, "up": -dy}[q.answer]
                assert along >= 3 and along > max(abs(dx), abs(dy)) - 1e-9, (seed, q)
            elif q.kind in ("first", "last", "after"):
                if q.kind == "after":
                    before = q.text.split("right after the ")[1].removesuffix("?")
                    later = [n for n in order if first_seen[n] > first_seen[before]]
                    answer = later[0]
                    ties = [n for n in order if first_seen[n] in (first_seen[answer], first_seen[before])]
                    assert len(ties) == 2, (seed, q)
                else:
                    answer = order[0] if q.kind == "first" else order[-1]
                    assert [first_seen[n] for n in order].count(first_seen[answer]) == 1, (seed, q)
                assert q.answer in answer.split(), (seed, q)
            checked[q.kind] += 1
    assert min(checked[kind] for kind in ("direction", "first", "last", "after")) >= 10, checked


def test_rendering_is_scale_consistent_through_the_processor():
    """The shipped samples are 256 px; the model sees them resized to 64 px, as if rendered at 64 px."""
    from aim_core.random_models import build_llava_onevision_processor, build_tokenizer

    processor = build_llava_onevision_processor(build_tokenizer(), 64, 8).video_processor
    scene = make_scene(11, 256)
    picked = frame_indices(256, 16)
    small = processor(videos=[render(scene, 64, picked)], return_tensors="pt")["pixel_values_videos"]
    large = processor(videos=[render(scene, 256, picked)], return_tensors="pt")["pixel_values_videos"]
    assert (small - large).abs().mean() < 0.03


def test_rendering_a_long_video_costs_a_few_passes_over_its_pixels():
    scene = make_scene(5, 256)
    render(scene, 256, np.arange(4))  # warm-up
    rendering = min(timeit.repeat(lambda: render(scene, 256), repeat=2, number=1))
    filling = min(timeit.repeat(
        lambda: np.random.default_rng(0).random((256, 256, 256, 3), dtype=np.float32), repeat=2, number=1))
    # A ratio, not seconds, as the machines are shared: about 3x here; drawing each frame at a larger size, or looping
    # over pixels in Python, would be far above the bound.
    assert rendering < 15 * filling


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_training_forward_matches_the_stock_forward(attention):
    from synthetic.train_demo_model import STAGES, answer_logits, build, make_batch, training_batch

    model, processor = build(seed=0)
    model.set_attn_implementation(attention)
    stage = next(s for s in STAGES if s.name == "joint" and max(s.frames) >= 8)
    batch = training_batch(processor, stage, seed=0, step=3)
    # Fewer questions about some videos than others, so that some rows end in padding.
    videos = batch.video_of.tolist()
    about = [[q for q, v in zip(batch.questions, videos) if v == video] for video in range(len(batch.scenes))]
    batch = make_batch(processor, batch.scenes, batch.frames, [qs[: 2 + 5 * v] for v, qs in enumerate(about)])
    assert len(set(Counter(batch.video_of.tolist()).values())) > 1
    with torch.no_grad():
        shared = answer_logits(model, batch)
        for k in range(0, len(batch.questions), 3):
            n = int(batch.lengths[k])
            video = int(batch.video_of[k])
            ids = torch.cat([batch.prefix[0], batch.suffix[k, :n]])[None]
            full = model(input_ids=ids, pixel_values_videos=batch.pixel_values[video : video + 1]).logits[0, -n:]
            torch.testing.assert_close(shared[k, :n], full, atol=1e-4, rtol=1e-4)


def test_training_video_cut_is_aim_pruning_every_visual_token_after_that_many_layers():
    """`Stage.video_layers` trains the questions to do without the video after a layer: the logits are those of the
    stock forward with aim_core's pruner removing every video token from that layer on."""
    from aim_core.adapters import adapter_for
    from aim_core.patch import VisualTokenPruner
    from synthetic.train_demo_model import STAGES, answer_logits, build, training_batch

    model, processor = build(seed=0)
    model.eval()
    adapter = adapter_for(model, processor)
    batch = training_batch(processor, next(s for s in STAGES if s.name == "joint"), seed=0, step=1)
    video = (batch.prefix[0] == model.config.video_token_index).nonzero()[:, 0]
    layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        whole = answer_logits(model, batch)
        for cut in (1, 5, layers):  # aim_core never prunes layer 0
            logits = answer_logits(model, batch, video_layers=cut)
            for k in (0, len(batch.questions) - 1):
                n, v = int(batch.lengths[k]), int(batch.video_of[k])
                ids = torch.cat([batch.prefix[0], batch.suffix[k, :n]])[None]
                counts = [len(video)] * cut + [0] * (layers - cut)
                with VisualTokenPruner(adapter.decoder_layers, adapter.project_qk, video, len(video), ids.shape[1],
                                       counts):
                    pruned = model(input_ids=ids, pixel_values_videos=batch.pixel_values[v : v + 1]).logits[0, -n:]
                torch.testing.assert_close(logits[k, :n], pruned, atol=1e-4, rtol=1e-4)
            # The cut changes what the questions see, unless it is after the last layer.
            assert (logits - whole).abs().max() > 1e-2 if cut < layers else torch.equal(logits, whole)


def test_every_stage_of_the_recipe_draws_its_own_data():
    from synthetic.train_demo_model import STAGES, build, training_batch

    # A stage's data is drawn by its place in `STAGES` (`STAGES.index`), which two equal stages would share.
    assert len(set(STAGES)) == len(STAGES)
    _, processor = build(seed=0)
    guided = [stage for stage in STAGES if stage.guided]
    drawn = {tuple(scene.seed for scene in training_batch(processor, stage, seed=0, step=3).scenes) for stage in guided}
    assert len(drawn) == len(guided) > 1


def test_training_reductions_are_drawn_per_step_from_the_stage(monkeypatch):
    import synthetic.train_demo_model as trainer
    from synthetic.train_demo_model import MERGE_KEEPS, STAGES, Stage, merge_keep_at, video_layers_at

    plain = Stage("joint", 500, 1e-4, frames=(16, 32))
    reduced = Stage("joint", 501, 1e-4, frames=(16, 32), video_layers=(6, 9, 12), merged=0.5)
    monkeypatch.setattr(trainer, "STAGES", (*STAGES, plain, reduced))
    cuts = [video_layers_at(reduced, 0, step) for step in range(200)]
    keeps = [merge_keep_at(reduced, 0, step) for step in range(200)]
    assert set(cuts) == {6, 9, 12}
    assert set(keeps) == {None, *MERGE_KEEPS}
    assert 70 < keeps.count(None) < 130  # half the steps merged
    assert cuts == [video_layers_at(reduced, 0, step) for step in range(200)]  # the same run draws the same
    assert cuts != [video_layers_at(reduced, 1, step) for step in range(200)]  # another seed draws others
    assert all(video_layers_at(plain, 0, s) is None and merge_keep_at(plain, 0, s) is None for s in range(50))


def test_merged_training_features_are_aims_merged_tokens_at_every_place_they_stand_for():
    from aim_core.merge import merge_frames
    from synthetic.train_demo_model import merged_features

    features = torch.randn(2, 3 * 16 + 1, 24)
    shown = merged_features(features, 0.25)
    merged = merge_frames(features[:, :-1].reshape(6, 16, 24), 0.25)
    frames = shown[:, :-1].reshape(6, 16, 24)
    for frame in range(6):
        for token in range(16):
            torch.testing.assert_close(frames[frame, token], merged.tokens[frame, merged.source[frame, token]])
        assert len(torch.unique(frames[frame], dim=0)) == 4
    assert torch.equal(shown[:, -1], features[:, -1])  # the newline is not a frame's token


def test_target_features_mark_the_shapes_where_they_are():
    from synthetic.train_demo_model import TargetFeatures, build

    model, processor = build(seed=0)
    targets = TargetFeatures(model, processor, seed=0)
    scene = make_scene(11)

    def visible(k: int) -> list:
        return [s for s in scene.sprites if s.start <= k < s.stop]

    # A frame that shows exactly one shape: the cell under its centre names its colour and shape.
    t = next(k for k in range(scene.num_frames) if len(visible(k)) == 1)
    (sprite,) = visible(t)
    features = targets(scene, np.array([t])).view(4, 4, -1)
    cx, cy = sprite.centre(t)
    cell = features[min(int(cy * 4), 3), min(int(cx * 4), 3)]
    colours = torch.stack([targets.colours[c] for c in COLOURS])
    shapes = torch.stack([targets.shapes[s] for s in SHAPES])
    assert list(COLOURS)[int((colours @ cell).argmax())] == sprite.colour
    assert SHAPES[int((shapes @ cell).argmax())] == sprite.shape
    empty = next(k for k in range(scene.num_frames) if not visible(k))
    assert targets(scene, np.array([empty])).abs().max() == 0
    assert targets.with_newline(scene, np.array([t, empty])).shape == (2 * 16 + 1, model.config.text_config.hidden_size)


def test_samples_load_and_list_answerable_questions():
    samples = json.loads((SAMPLES_DIR / "samples.json").read_text())
    assert len(samples) >= 3
    for sample in samples:
        frames = sample_frames(SAMPLES_DIR / sample["file"], 32)
        assert frames.frames.shape == (32, 256, 256, 3)
        by_text = {q.text: q for q in questions(make_scene(sample["seed"], sample["num_frames"]))}
        for q in sample["questions"]:
            assert by_text[q["text"]].answer == q["answer"] and q["kind"] in KINDS


def test_a_wrong_answer_is_named_by_what_it_read_in_the_frames():
    checked = Counter()
    for seed in split_seeds("val", 60):
        scene = make_scene(seed)
        frames = frame_indices(scene.num_frames, 32)
        shown = sorted((s for s in scene.sprites if len(s.shown_at(frames))), key=lambda s: s.shown_at(frames)[0])
        for question in (q for q in questions_seen(scene, frames) if q.kind in ("direction", "after")):
            asked = next(s for s in shown if question.text.rstrip("?").removesuffix(" move").endswith(s.name))
            others = [s for s in shown if s is not asked]
            if question.kind == "direction":
                for direction in set(DIRECTIONS) - {question.answer}:
                    expected = any(s.direction == direction for s in others)
                    named = mistake(scene, frames, question, direction)
                    assert named == ("another seen shape's direction" if expected else "no seen shape's direction")
                    checked[named] += 1
            if question.kind == "after" and "shape" in question.text:
                at = shown.index(asked)
                own = asked.shape
                if all(s.shape != own for s in shown[max(at - 1, 0) : at] + shown[at + 1 :]):
                    assert mistake(scene, frames, question, own) == "the asked shape's own"
                    checked["own"] += 1
                # No shape as near to the asked one, before or after, has the named shape.
                if at + 2 < len(shown) and all(s.shape != shown[at + 2].shape for s in shown[max(at - 2, 0) : at + 2]):
                    assert mistake(scene, frames, question, shown[at + 2].shape) == "2 after"
                    checked["2 after"] += 1
    assert min(checked.values()) > 3, checked


def test_other_movers_are_the_other_shapes_a_which_way_question_could_be_asked_about():
    counts = Counter()
    for seed in split_seeds("val", 40):
        scene = make_scene(seed)
        for num_frames in (4, 8, 32):
            frames = frame_indices(scene.num_frames, num_frames)
            asked = [q for q in questions_seen(scene, frames) if q.kind == "direction"]
            for question in asked:
                movers = other_movers(scene, frames, question)
                assert movers == len(asked) - 1
                counts[movers] += 1
    assert counts[0] > 3 and counts[1] > 3 and sum(v for k, v in counts.items() if k >= 2) > 3, counts


def test_later_sightings_are_the_shapes_first_seen_after_the_asked_one():
    counts = Counter()
    for seed in split_seeds("val", 40):
        scene = make_scene(seed)
        for num_frames in (8, 32):
            frames = frame_indices(scene.num_frames, num_frames)
            shown = sorted((s for s in scene.sprites if len(s.shown_at(frames))), key=lambda s: s.shown_at(frames)[0])
            for question in (q for q in questions_seen(scene, frames) if q.kind == "after"):
                later = later_sightings(scene, frames, question)
                # A "right after" question has a next shape, and ties are never asked about, so the shapes after
                # the asked one in the order of first sightings are exactly the later ones; with one, it is the last.
                asked = next(k for k, s in enumerate(shown) if question.text.rstrip("?").endswith(s.name))
                assert later == len(shown) - 1 - asked >= 1
                if later == 1:
                    assert question.answer in (shown[-1].colour, shown[-1].shape)
                counts[later] += 1
    assert counts[1] > 3 and counts[2] > 3 and sum(v for k, v in counts.items() if k >= 3) > 3, counts


def test_evaluation_scores_which_way_and_right_after_apart_by_the_shapes_that_confuse_them():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    report = evaluate(model, processor, n=28, seed=0, num_frames=8)
    for kind, groups in (("direction", report.direction_by_movers), ("after", report.after_by_later)):
        assert set(groups) <= set(COUNT_GROUPS) and sum(n for _, n in groups.values()) == report.counts[kind]
        pooled = sum(acc * n for acc, n in groups.values()) / report.counts[kind]
        assert pooled == pytest.approx(report.per_kind[kind])
    line = format_report(report, "test")
    assert "which way, by how many other shapes are seen moving: " in line
    assert "right after, by how many shapes are first seen after the asked one: " in line


def test_shipped_model_loads_offline_and_answers_sample_questions(monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = list(MODEL_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    model = AutoModelForImageTextToText.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    sample = json.loads((SAMPLES_DIR / "samples.json").read_text())[0]
    frames = sample_frames(SAMPLES_DIR / sample["file"], 32).frames
    asked = [q for q in sample["questions"] if q["min_frames"] <= 32][:4]
    right = [normalise(ask(model, processor, frames, q["text"])) == q["answer"] for q in asked]
    assert sum(right) >= len(asked) - 1, right


def test_an_answer_that_ends_by_itself_is_not_reported_as_cancelled():
    from aim_core import AIMConfig, VideoQA

    qa = VideoQA.from_pretrained(MODEL_DIR)
    sample = json.loads((SAMPLES_DIR / "samples.json").read_text())[0]
    frames = sample_frames(SAMPLES_DIR / sample["file"], 32)
    for config in (AIMConfig(), AIMConfig.none()):
        for _ in range(3):  # the end of generation races with the end of the stream: try it more than once
            answer = qa.answer(frames, sample["questions"][0]["text"], config=config, max_new_tokens=16)
            assert answer.stats.new_tokens < 16  # the one-word answer and <|im_end|>
            assert not answer.cancelled


def test_moment_labels_follow_the_shape_under_each_token():
    from synthetic.scenes import MIN_SHIFT
    from synthetic.train_demo_model import moment_labels

    checked = {"first_seen": 0, "direction": 0, "before_shape": 0}
    for seed in split_seeds("val", 6):
        scene = make_scene(seed)
        frames = frame_indices(scene.num_frames, 16)
        labels = {name: v.view(len(frames), 4, 4) for name, v in moment_labels(scene, frames).items()}
        shown = {i: [k for k, t in enumerate(frames) if s.start <= t < s.stop] for i, s in enumerate(scene.sprites)}
        for i, sprite in enumerate(scene.sprites):
            for k in shown[i]:
                cx, cy = sprite.centre(frames[k])
                cell = (k, min(int(cy * 4), 3), min(int(cx * 4), 3))
                if labels["first_seen"][cell] >= 0:
                    assert labels["first_seen"][cell] == int(k == shown[i][0])
                    assert list(COLOURS)[labels["value_colour"][cell]] == sprite.colour
                    assert SHAPES[labels["value_shape"][cell]] == sprite.shape
                    checked["first_seen"] += 1
                if labels["direction"][cell] >= 0:
                    x0, y0 = sprite.centre(frames[shown[i][0]])
                    assert max(abs(cx - x0), abs(cy - y0)) >= MIN_SHIFT
                    assert DIRECTIONS[labels["direction"][cell]] == sprite.direction
                    checked["direction"] += 1
                if labels["before_shape"][cell] >= 0:
                    earlier = [j for j in shown if shown[j] and shown[j][0] < shown[i][0]]
                    before = scene.sprites[max(earlier, key=lambda j: shown[j][0])]
                    assert SHAPES[labels["before_shape"][cell]] == before.shape
                    checked["before_shape"] += 1
        empty = [k for k, t in enumerate(frames) if not any(s.start <= t < s.stop for s in scene.sprites)]
        assert all((labels[name][empty] == -100).all() for name in labels)
    assert min(checked.values()) > 10, checked


def test_probes_train_on_the_language_models_video_tokens():
    from synthetic.train_demo_model import (
        PROBES,
        SHAPE,
        STAGES,
        Probes,
        answer_forward,
        build,
        training_batch,
        word_vectors,
    )

    model, processor = build(seed=0)
    probes = Probes(SHAPE, word_vectors(model, processor))
    batch = training_batch(processor, STAGES[2], seed=0, step=1)
    _, states, question_states = answer_forward(model, batch)
    loss, accuracy = probes(model, states, question_states, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert {"first_seen", "start_x"} <= set(accuracy) and all(0 <= a <= 1 for a in accuracy.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probes.heads["first_seen"].parameters())
    assert next(model.model.language_model.parameters()).grad.abs().sum() > 0
    # Every other probe reads hidden states entering a layer, so only the value probes reach into a layer's
    # attention: into its key/value head's rows of v_proj, not into the queries, keys or other heads' values.
    assert {"value_colour", "value_shape"} <= set(accuracy)
    (probe_layer,) = {p.layer for p in PROBES.values() if p.value_head is not None}
    (value_head,) = {p.value_head for p in PROBES.values() if p.value_head is not None}
    attention = model.model.language_model.layers[probe_layer].self_attn
    assert attention.q_proj.weight.grad is None and attention.k_proj.weight.grad is None
    per_head = attention.v_proj.weight.grad.unflatten(0, (SHAPE.text_kv_heads, -1)).abs().sum((1, 2))
    assert per_head[value_head] > 0 and (per_head[torch.arange(SHAPE.text_kv_heads) != value_head] == 0).all()


def test_the_direction_probe_reads_the_direction_words_own_input_embeddings():
    from synthetic.train_demo_model import PROBES, SHAPE, STAGES, Probes, build, training_batch, word_vectors

    model, processor = build(seed=0)
    words = word_vectors(model, processor)
    probes = Probes(SHAPE, words)
    batch = training_batch(processor, STAGES[4], seed=0, step=0)  # a stage that asks "which way" often
    label = batch.probe_labels["direction"]
    assert (label >= 0).sum() > 10
    video = batch.frame_token_positions(model.config.video_token_index)
    layers = max(probe.layer for probe in PROBES.values()) + 1
    for shift, expected in ((0, 1.0), (1, 0.0)):  # the token holds its own direction's word, then the next one's
        states = torch.zeros(len(batch.scenes), batch.prefix.shape[1], SHAPE.text_hidden)
        read = [DIRECTIONS[(int(d) + shift) % len(DIRECTIONS)] for d in label[label >= 0]]
        held = states[:, video]
        held[label >= 0] = torch.stack([words[w] for w in read]) * 3
        states[:, video] = held
        question_states = torch.zeros(*batch.suffix.shape, SHAPE.text_hidden)
        _, accuracy = probes(model, (states,) * layers, (question_states,) * layers, batch)
        assert accuracy["direction"] == expected


def test_the_name_probe_reads_the_answer_from_the_asked_shapes_name_in_the_question():
    from synthetic.evaluate import asked_name
    from synthetic.train_demo_model import (
        NAME_PROBE,
        SHAPE,
        STAGES,
        WORDS,
        Probes,
        answer_forward,
        build,
        training_batch,
        word_vectors,
    )

    model, processor = build(seed=0)
    probes = Probes(SHAPE, word_vectors(model, processor))
    batch = training_batch(processor, STAGES[4], seed=0, step=0)
    probed = [k for k, q in enumerate(batch.questions) if q.kind in NAME_PROBE.kinds]
    assert len(probed) > 5 and len(probed) < len(batch.questions)
    for k, question in enumerate(batch.questions):
        if k in probed:
            name_end = processor.tokenizer.convert_ids_to_tokens(int(batch.suffix[k, batch.name_positions[k]]))
            assert name_end == "Ġ" + asked_name(question).split()[-1]
            assert WORDS[batch.name_labels[k]] == question.answer
        else:
            assert batch.name_labels[k] == -100

    # The probe's loss reads the probed questions' name tokens at its layer, and nothing else of the questions.
    _, states, question_states = answer_forward(model, batch)
    read = question_states[NAME_PROBE.layer]
    read.retain_grad()
    loss, accuracy = probes(model, states, question_states, batch)
    loss.backward()
    touched = read.grad.abs().sum(-1).nonzero().tolist()
    assert sorted(touched) == sorted([k, int(batch.name_positions[k])] for k in probed)
    assert 0 <= accuracy["name"] <= 1


def test_every_answer_is_one_token_of_its_own_in_the_demo_tokenizer():
    from synthetic.train_demo_model import build

    _, processor = build(seed=0)
    tokenizer = processor.tokenizer
    answers = sorted({q.answer for seed in split_seeds("val", 100) for q in questions(make_scene(seed))})
    assert len(answers) == len(COLOURS) + len(SHAPES) + len(DIRECTIONS) + len(NUMBERS) + 2
    # As the training labels tokenise them: right after the generation prompt, then <|im_end|>.
    encoded = [tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for answer in answers]
    assert all(len(ids) == 2 and ids[1] == tokenizer.eos_token_id for ids in encoded)
    assert len({ids[0] for ids in encoded}) == len(answers)


def test_a_focus_stage_asks_its_kinds_more_often_on_every_video():
    from synthetic.train_demo_model import STAGES, build, training_batch

    _, processor = build(seed=0)
    stage = next(s for s in STAGES if s.focus and s.name == "language")
    assert set(stage.focus) == {"after", "direction"}
    focused = Counter()
    for step in range(5):
        batch = training_batch(processor, stage, seed=0, step=step)
        assert len(batch.scenes) == stage.videos
        for video in range(stage.videos):
            asked = Counter(q.kind for q, v in zip(batch.questions, batch.video_of.tolist()) if v == video)
            assert 1 <= sum(asked.pop(kind, 0) for kind in stage.focus) <= stage.focus_questions * len(stage.focus)
            assert all(n <= stage.questions_per_kind for n in asked.values())
        focused.update(q.kind for q in batch.questions)
    assert focused["direction"] > 2 * focused["which"] and focused["after"] > 2 * focused["which"]


def test_the_learning_rate_warms_up_then_decays_by_step():
    from synthetic.train_demo_model import Stage, learning_rate

    stage = Stage("language", steps=1000, lr=1e-3)
    assert learning_rate(stage, 0) == pytest.approx(1e-3 / 50)
    assert learning_rate(stage, 49) == pytest.approx(1e-3, rel=0.01)  # warmed up, barely decayed
    assert learning_rate(stage, 500) == pytest.approx(0.55e-3)
    assert learning_rate(stage, 1000) == pytest.approx(1e-4)


def test_a_run_stopped_and_resumed_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    """Stages end by step count and each step's data depends only on (seed, stage, step), so stopping anywhere and
    going on with `--resume` gives the weights an uninterrupted run gives."""
    import synthetic.train_demo_model as trainer

    stages = (
        trainer.Stage("vision", 3, 1e-3, videos=4),
        trainer.Stage("language", 5, 1e-3, frames=(1, 2), videos=2),
        trainer.Stage(
            "joint", 2, 1e-4, frames=(8,), videos=2, questions_per_kind=1, focus=("direction",),
            video_layers=(3, 12), merged=0.5,
        ),
    )
    monkeypatch.setattr(trainer, "STAGES", stages)
    monkeypatch.setattr(trainer, "CHECKPOINT_EVERY", 2)
    small_validation = trainer.validation_batches
    monkeypatch.setattr(trainer, "validation_batches", lambda processor: small_validation(processor, 4, videos=2))
    torch.set_num_threads(1)  # the same kernels in every run, so the weights compare exactly

    whole, _ = trainer.train(0, trainer.Run(tmp_path / "whole"), resume=False)

    class Stopped(Exception):
        pass

    learning_rate = trainer.learning_rate

    def stop_in_the_language_stage(stage, step):
        if stage is stages[1] and step == 3:  # one step past the checkpoint at step 2
            raise Stopped
        return learning_rate(stage, step)

    run = trainer.Run(tmp_path / "stopped")
    monkeypatch.setattr(trainer, "learning_rate", stop_in_the_language_stage)
    with pytest.raises(Stopped):
        trainer.train(0, run, resume=False)
    assert torch.load(run.checkpoint)["stage"] == 1 and torch.load(run.checkpoint)["step"] == 2
    monkeypatch.setattr(trainer, "learning_rate", learning_rate)
    resumed, _ = trainer.train(0, run, resume=True)

    assert "resumed from" in run.log_file.read_text()
    expected = whole.state_dict()
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def test_the_guides_pull_on_the_models_own_attention_from_the_name_to_the_right_shape():
    """`guide_loss` recomputes one layer's attention from the name's token; it must be the attention the model runs
    (renormalised over the prefix), on the tokens of the asked shape ("which way") or of the one after it."""
    from synthetic.evaluate import asked_name
    from synthetic.train_demo_model import (
        GUIDES,
        STAGES,
        answer_forward,
        build,
        guide_loss,
        make_batch,
        token_owners,
        training_batch,
        video_features,
    )

    model, processor = build(seed=0)
    model.set_attn_implementation("eager")
    batch = training_batch(processor, STAGES[-1], seed=0, step=0)
    guided_kinds = {guide.kind for guide in GUIDES}
    assert not any(batch.guided[k].any() for k, q in enumerate(batch.questions) if q.kind not in guided_kinds)
    checked = 0
    for guide in GUIDES:
        k = next(k for k, q in enumerate(batch.questions) if q.kind == guide.kind and batch.guided[k].any())
        question, v = batch.questions[k], int(batch.video_of[k])
        scene, frames = batch.scenes[v], batch.frames[v]
        names = [sprite.name for sprite in scene.sprites]
        expected = names.index(asked_name(question)) + (guide.target == "next")
        assert torch.equal(batch.guided[k], torch.from_numpy(token_owners(scene, frames).reshape(-1) == expected))

        one = make_batch(processor, [scene], [frames], [[question]])
        _, states, question_states = answer_forward(model, one)
        _, share = guide_loss(model, states, question_states, one)

        features = video_features(model, one.pixel_values)
        ids = torch.cat([one.prefix, one.suffix[:, : int(one.lengths[0])]], dim=1)
        embeds = model.get_input_embeddings()(ids)
        is_video = (ids == model.config.video_token_index)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(is_video, features)
        with torch.no_grad():
            attentions = model.model.language_model(inputs_embeds=embeds, output_attentions=True).attentions
        prefix = one.prefix.shape[1]
        row = attentions[guide.layer][0, list(guide.heads), prefix + int(one.name_positions[0]), :prefix]
        video = one.frame_token_positions(model.config.video_token_index)
        landed = row[:, video[one.guided[0]]].sum(-1) / row.sum(-1)
        assert share[f"look_{guide.kind}"] == pytest.approx(float(landed.mean()), rel=1e-4)
        checked += 1
    assert checked == len(GUIDES)
