"""Questions about a single image: LLaVA-OneVision (anyres tiles) and Qwen-VL, exact at efficiency 0, merged inside
each tile or image otherwise."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_SHAPE

from aim_core import AIMConfig, VideoError, VideoQA
from aim_core.baselines import RandomDrop
from aim_core.random_models import QwenVLShape, build_llava_onevision, build_qwen_vl

QUESTION = "What is in the picture?"
MERGE_ONLY = AIMConfig(merge_keep=0.25, prune_start=1.0, prune_end=1.0)


def picture(height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: gradients plus noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 3) % 256, (y * 4) % 256, ((x + y) * 2) % 256], axis=-1)
    return np.clip(base + np.random.default_rng(height * width).normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def stock_generate(model, processor, image, max_new_tokens=10):
    """The model card's recipe: chat template with an image, processor, greedy generate."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1]:], inputs


def assert_stock(model, processor, qa, image):
    """Efficiency 0 gives the stock prompt and the stock tokens, one for one."""
    expected, inputs = stock_generate(model, processor, image)
    _, encoding, _ = qa.encode(image)
    merged = qa._reduced(next(reversed(qa._cache)), AIMConfig.none())[0]
    prompt = qa.adapter.prompt(QUESTION, encoding, len(qa.adapter.visual_order(encoding, merged)))
    assert torch.equal(prompt.input_ids, inputs["input_ids"])
    ours = model.generate(**qa.adapter.generate_inputs(prompt, encoding, merged), max_new_tokens=10, do_sample=False)
    assert torch.equal(ours[0, prompt.length:], expected)
    answer = qa.answer(image, QUESTION, config=AIMConfig.from_efficiency(0.0), max_new_tokens=10)
    assert answer.text == processor.decode(expected, skip_special_tokens=True).strip()
    assert answer.stats.new_tokens == len(expected)
    assert answer.stats.visual_tokens_before_merge == prompt.num_visual
    assert answer.stats.flops == answer.stats.flops_baseline
    return answer


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return (*tiny_llava, VideoQA.from_model(*tiny_llava))


@pytest.mark.parametrize("size", [(48, 64), (64, 40), (100, 100), (30, 130)])
def test_llava_image_at_efficiency_zero_is_stock_generate(llava, size):
    answer = assert_stock(*llava, picture(*size))
    assert answer.stats.num_frames == 1


def test_llava_image_the_model_shrinks_is_stock_too():
    """Beyond 9 tiles' worth of tokens the model interpolates the high-resolution grid down (anyres_max_9)."""
    model, processor = build_llava_onevision(TINY_SHAPE, seed=0)
    pinpoints = [[64 * i, 64 * j] for i in range(1, 5) for j in range(1, 5)]
    processor.image_processor.image_grid_pinpoints = model.config.image_grid_pinpoints = pinpoints
    qa = VideoQA.from_model(model, processor)
    image = picture(200, 250)
    answer = assert_stock(model, processor, qa, image)
    assert len(answer.trace.frames) == 17  # the base tile and 4 x 4 high-resolution tiles
    merged = qa.answer(image, QUESTION, config=MERGE_ONLY, max_new_tokens=2)
    assert merged.stats.visual_tokens_after_merge < answer.stats.visual_tokens_after_merge / 2


def test_llava_image_merges_inside_each_tile(llava):
    model, processor, qa = llava
    image = picture(100, 100)  # fills 2 x 2 tiles exactly: no letterbox padding to cut
    stock = qa.answer(image, QUESTION, config=AIMConfig.none(), max_new_tokens=2)
    answer = qa.answer(image, QUESTION, config=MERGE_ONLY, max_new_tokens=2)
    trace = answer.trace
    tiles, rows, cols = trace.clusters().shape
    assert (tiles, rows, cols) == (5, 8, 8) and len(trace.frames) == 5  # the frames drawn are the tiles
    assert trace.frames.frames.shape == (5, 64, 64, 3)
    kept = trace.merged_per_frame
    assert kept == 16

    order = trace.kept_per_layer[0]
    merged_tokens, newlines = order[order < tiles * kept], order[order >= tiles * kept]
    assert sorted(merged_tokens.tolist()) == list(range(tiles * kept))  # every cluster once
    assert len(newlines) == 16  # one per row of the 16 x 16 stitched grid, as unmerged
    assert answer.stats.visual_tokens_after_merge == tiles * kept + 16 < stock.stats.visual_tokens_after_merge
    assert answer.stats.visual_tokens_before_merge == stock.stats.visual_tokens_before_merge == 64 + 16 * 17
    assert trace.kept_patches(0).all()
    assert answer.stats.new_tokens == 2

    # Each kept cell keeps its place in the stock layout: newlines and the text after the image where they were.
    _, encoding, _ = qa.encode(image)
    merged = qa._reduced(next(reversed(qa._cache)), MERGE_ONLY)[0]
    prompt = qa.adapter.prompt(QUESTION, encoding, len(order))
    unmerged = qa.adapter.prompt(QUESTION, encoding, stock.stats.visual_tokens_after_merge)
    places = qa.adapter.generate_inputs(prompt, encoding, merged)["position_ids"][0]
    stock_places = qa.adapter.generate_inputs(unmerged, encoding, qa._reduced(next(reversed(qa._cache)),
                                                                              AIMConfig.none())[0])["position_ids"][0]
    assert stock_places.tolist() == list(range(unmerged.length))
    assert (places.diff() > 0).all() and places[-1] == unmerged.length - 1
    assert places[: prompt.visual_start].tolist() == list(range(prompt.visual_start))
    visual_places = places[prompt.visual_start : prompt.visual_start + prompt.num_visual] - prompt.visual_start
    newline_places = visual_places[(order >= tiles * kept).cpu()]
    assert newline_places.tolist() == [64 + 17 * row + 16 for row in range(16)]  # each row's end, after the base tile


def test_llava_lays_an_image_out_once_a_question(llava, monkeypatch):
    """The visual order and the inputs of one image question read one layout (`pack_image_features` once), and a
    question that merges the image as the last one did lays nothing out again."""
    model, _, qa = llava
    image = picture(100, 100)
    stock = qa.answer(image, QUESTION, config=AIMConfig.none(), max_new_tokens=1)  # encodes the image
    calls = []
    pack = model.model.pack_image_features
    monkeypatch.setattr(model.model, "pack_image_features", lambda *a, **k: calls.append(1) or pack(*a, **k))
    merged = qa.answer(image, QUESTION, config=MERGE_ONLY, max_new_tokens=1)
    assert len(calls) == 1
    assert merged.stats.visual_tokens_before_merge == stock.stats.visual_tokens_after_merge
    assert merged.stats.visual_tokens_after_merge < stock.stats.visual_tokens_after_merge
    pruned = qa.answer(image, QUESTION, config=AIMConfig(), max_new_tokens=1)  # the same merging, then pruning
    assert len(calls) == 1
    assert pruned.stats.visual_tokens_after_merge == merged.stats.visual_tokens_after_merge


def test_llava_image_with_pruning_and_dropping(llava):
    _, _, qa = llava
    image = picture(48, 64)
    answer = qa.answer(image, QUESTION, config=AIMConfig.from_efficiency(1.0), max_new_tokens=2)
    assert answer.stats.tokens_per_layer[-1] == answer.stats.text_tokens
    dropped = qa.answer(image, QUESTION, config=RandomDrop(keep=0.5), max_new_tokens=2)
    source = dropped.trace.merge_source
    kept = dropped.trace.kept_patches(0)
    assert kept.sum() < (source >= 0).sum()  # tokens cut off with the letterbox padding are gone too
    assert not kept[(source < 0).reshape(kept.shape).numpy()].any()


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def qwen(request):
    model, processor = build_qwen_vl(QwenVLShape(family=request.param))
    return model, processor, VideoQA.from_model(model, processor)


def test_qwen_image_at_efficiency_zero_is_stock_generate(qwen):
    answer = assert_stock(*qwen, picture(48, 64))
    assert answer.trace.frames_per_step == 1


def test_qwen_image_merges_inside_the_image(qwen):
    _, _, qa = qwen
    image = picture(48, 64)
    stock = qa.answer(image, QUESTION, config=AIMConfig.none(), max_new_tokens=2)
    answer = qa.answer(image, QUESTION, config=AIMConfig(), max_new_tokens=2)
    assert stock.stats.visual_tokens_after_merge == 12
    assert answer.stats.visual_tokens_after_merge == 3
    assert answer.stats.tokens_per_layer[-1] == answer.stats.text_tokens
    assert answer.trace.clusters().shape == (1, 3, 4) and answer.trace.grid == (3, 4)


def test_image_inputs_in_every_form_give_one_answer(tiny_llava, tmp_path):
    qa = VideoQA.from_model(*tiny_llava)
    image = picture(48, 64)
    PIL.Image.fromarray(image).save(tmp_path / "image.png")
    answers = [qa.answer(source, QUESTION, config=AIMConfig(), max_new_tokens=4)
               for source in (image, PIL.Image.fromarray(image), tmp_path / "image.png", str(tmp_path / "image.png"))]
    assert len({answer.text for answer in answers}) == 1
    assert [answer.stats.vision_cached for answer in answers] == [False, True, True, True]
    video = qa.answer(image[None], QUESTION, config=AIMConfig(), max_new_tokens=4)
    assert not video.stats.vision_cached  # the same pixels as a 1-frame video are another input
    assert video.stats.visual_tokens_before_merge != answers[0].stats.visual_tokens_before_merge


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((0, 8, 3), np.uint8)])
def test_bad_image_arrays(llava, bad):
    with pytest.raises(VideoError):
        llava[2].answer(bad, QUESTION)


def test_unreadable_image_file(llava, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoError, match="broken.jpg"):
        llava[2].answer(tmp_path / "broken.jpg", QUESTION)
