"""The engine on the model picker's real checkpoints, as published (config, processors, chat template, special tokens;
random weights, shrunk widths: see tests/published_models.py), loaded from an offline Hugging Face hub cache by hub id:
efficiency 0 is stock `generate`, AIM prunes as estimated, and a portrait phone video and an image work."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from published_models import FIXTURES, PUBLISHED_MODELS, write_hub_cache
from transformers.video_utils import VideoMetadata

from aim_core import AIMConfig, SampledFrames, VideoQA, sample_frames
from aim_core.adapters.qwen_vl import reference_pixel_bounds
from aim_core.random_models import (
    LLAVA_ONEVISION_0_5B_SHAPE,
    QWEN2_0_5B_SHAPE,
    QWEN2_7B_SHAPE,
    LlavaOnevisionShape,
    build_llava_onevision,
)
from app.testing import write_test_video

QUESTION = "What happens in this video?"
NUM_FRAMES = 4
NEW_TOKENS = 4
# One user turn holding a video and the question, as each published template writes it.
LLAVA_PROMPT = f"<|im_start|>user <video>\n{QUESTION}<|im_end|><|im_start|>assistant\n"
QWEN2_VL_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                   f"<|vision_start|><|video_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
QWEN3_VL_PROMPT = f"<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{QUESTION}<|im_end|>\n" \
                  "<|im_start|>assistant\n"
EXPECTED_PROMPTS = {
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": LLAVA_PROMPT,
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": LLAVA_PROMPT,
    "llava-hf/LLaVA-Video-7B-Qwen2-hf": LLAVA_PROMPT,
    "Qwen/Qwen2-VL-2B-Instruct": QWEN2_VL_PROMPT,
    "Qwen/Qwen2.5-VL-3B-Instruct": QWEN2_VL_PROMPT,
    "Qwen/Qwen2.5-VL-7B-Instruct": QWEN2_VL_PROMPT,
    "Qwen/Qwen3-VL-2B-Instruct": QWEN3_VL_PROMPT,
    "Qwen/Qwen3-VL-8B-Instruct": QWEN3_VL_PROMPT,
}
# The checkpoints whose generation_config.json was found published (see SOURCES.md).
WITH_GENERATION_CONFIG = [repo_id for repo_id in PUBLISHED_MODELS
                          if (FIXTURES / repo_id / "generation_config.json").is_file()]


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A Hugging Face hub cache holding every published model's random-weight checkpoint."""
    cache = tmp_path_factory.mktemp("hub")
    for repo_id in PUBLISHED_MODELS:
        write_hub_cache(repo_id, cache)
    return cache


def load_offline(repo_id: str, hub_cache) -> VideoQA:
    """`repo_id` loaded by hub id from the offline cache, as on a user's machine."""
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub_cache))
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        return VideoQA.from_pretrained(repo_id)


@pytest.fixture(scope="module", params=PUBLISHED_MODELS)
def published(request, hub_cache):
    """(hub id, VideoQA) loaded by hub id from the offline cache."""
    return request.param, load_offline(request.param, hub_cache)


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> SampledFrames:
    path = tmp_path_factory.mktemp("videos") / "landscape.mp4"
    write_test_video(path, num_frames=24, height=96, width=160)
    return sample_frames(path, NUM_FRAMES)


@pytest.fixture(scope="module")
def phone_video(tmp_path_factory) -> str:
    """A portrait phone clip: stored 160x96 (landscape) with a 90 degree display rotation, shown 96x160."""
    path = tmp_path_factory.mktemp("videos") / "phone.mp4"
    stored = np.zeros((96, 160, 3), np.uint8)
    stored[:, :, 1] = np.linspace(0, 255, 160, dtype=np.uint8)
    stored[:20, :40] = 255  # stored top-left: upright, it is at the bottom-left
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.set_display_rotation(90)
        for shift in range(12):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(stored, shift * 4, axis=1), format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def stock_video_inputs(qa: VideoQA, frames: SampledFrames, question: str = QUESTION):
    """The model card's recipe for frames sampled beforehand: the chat template, then the processor (for Qwen models
    with qwen-vl-utils' pixel bounds for this many frames and the frames' times)."""
    processor = qa.adapter.processor
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    if qa.model.config.model_type == "llava_onevision":
        return processor(text=text, videos=[frames.frames], return_tensors="pt")
    video_processor = processor.video_processor
    padded = -(-len(frames) // video_processor.temporal_patch_size) * video_processor.temporal_patch_size
    low, high = reference_pixel_bounds(padded, video_processor.patch_size * video_processor.merge_size)
    if qa.model.config.model_type == "qwen3_vl":  # its processor bounds all the frames' pixels together
        low, high = low * padded, high * padded
    indices = [round(time * frames.fps) for time in frames.timestamps]
    metadata = VideoMetadata(total_num_frames=max(round(frames.duration * frames.fps), indices[-1] + 1),
                             fps=frames.fps, duration=frames.duration, frames_indices=indices)
    bounds = {"size": {"shortest_edge": low, "longest_edge": high}, "cap_pixels_per_frame": False}
    return processor(text=text, videos=[frames.frames], video_metadata=[metadata], do_sample_frames=False,
                     videos_kwargs=bounds, return_tensors="pt")


def test_special_tokens_sit_at_their_published_ids_and_match_the_config(published):
    repo_id, qa = published
    tokenizer, config = qa.adapter.processor.tokenizer, qa.model.config
    published_tokens = json.loads((FIXTURES / repo_id / "special_tokens.json").read_text())["added_tokens"]
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in published_tokens.values()} == \
        {token: int(i) for i, token in published_tokens.items()}
    video_token = getattr(config, "video_token_id", None) or config.video_token_index
    assert tokenizer.convert_ids_to_tokens(video_token) == qa.adapter.processor.video_token
    assert qa.model.get_input_embeddings().num_embeddings == config.get_text_config().vocab_size > max(
        map(int, published_tokens))


def test_the_published_chat_template_writes_the_prompt(published):
    repo_id, qa = published
    published_template = json.loads((FIXTURES / repo_id / "chat_template.json").read_text())["chat_template"]
    processor = qa.adapter.processor
    assert processor.chat_template == published_template
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == EXPECTED_PROMPTS[repo_id]


def assert_unreduced_engine_is_stock(qa: VideoQA, media, inputs: dict) -> torch.Tensor:
    """With nothing reduced, the engine's prompt is the processor's `inputs` and its generate gives stock generate's
    tokens; returns those tokens."""
    expected = qa.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    _, encoding, _ = qa.encode(media, NUM_FRAMES)
    merged = qa._reduced(next(reversed(qa._cache)), AIMConfig.none())[0]
    prompt = qa.adapter.prompt(QUESTION, encoding, len(qa.adapter.visual_order(encoding, merged)))
    assert torch.equal(prompt.input_ids, inputs["input_ids"])
    ours = qa.model.generate(**qa.adapter.generate_inputs(prompt, encoding, merged), max_new_tokens=NEW_TOKENS,
                             do_sample=False)
    assert torch.equal(ours[0, prompt.length:], expected)
    return expected


def test_efficiency_zero_is_stock_generate_token_for_token(published, landscape):
    _, qa = published
    expected = assert_unreduced_engine_is_stock(qa, landscape, stock_video_inputs(qa, landscape))
    answer = qa.answer(landscape, QUESTION, AIMConfig.from_efficiency(0.0), NUM_FRAMES, max_new_tokens=NEW_TOKENS)
    assert answer.stats.new_tokens == len(expected)
    assert answer.stats.flops == answer.stats.flops_baseline


def test_aim_merges_and_prunes_as_estimated(published, landscape):
    _, qa = published
    config = AIMConfig.from_efficiency(0.75)
    answer = qa.answer(landscape, QUESTION, config, NUM_FRAMES, max_new_tokens=NEW_TOKENS)
    stats = answer.stats
    assert stats.visual_tokens_after_merge < stats.visual_tokens_before_merge
    assert stats.tokens_per_layer[-1] < stats.tokens_per_layer[0] and stats.flops_reduction > 1
    estimate = qa.estimate(config, NUM_FRAMES, landscape.frames.shape[1:3], QUESTION)
    assert (estimate.visual_before_merge, estimate.text_tokens) == (stats.visual_tokens_before_merge,
                                                                      stats.text_tokens)
    assert estimate.tokens_per_layer == stats.tokens_per_layer


def test_a_portrait_phone_video_is_seen_upright(published, phone_video):
    _, qa = published
    answer = qa.answer(phone_video, QUESTION, AIMConfig.from_efficiency(0.75), NUM_FRAMES, max_new_tokens=NEW_TOKENS)
    frames = answer.trace.frames.frames
    assert frames.shape[1:] == (160, 96, 3)  # upright portrait
    assert frames[0, 125:155, 2:15].mean() > 200 and frames[0, 2:30, 60:90].mean() < 150  # the block is bottom-left
    stock = stock_video_inputs(qa, answer.trace.frames)
    video_token = qa.adapter.processor.video_token_id
    assert answer.stats.visual_tokens_before_merge == int((stock["input_ids"] == video_token).sum())
    estimate = qa.estimate(AIMConfig.from_efficiency(0.75), NUM_FRAMES, (160, 96), QUESTION)
    assert estimate.tokens_per_layer == answer.stats.tokens_per_layer
    if qa.model.config.model_type != "llava_onevision":  # LLaVA-OneVision squeezes every frame into a square
        rows, cols = answer.trace.grid
        assert rows > cols  # Qwen models keep the aspect ratio: a portrait grid of tokens


def test_an_image_is_answered_as_stock_generate(published):
    _, qa = published
    y, x = np.mgrid[0:96, 0:128]  # LLaVA-OneVision: one 384 px tile and the base view
    image = np.stack([x % 256, (y * 2) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)
    processor = qa.adapter.processor
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = processor(text=processor.apply_chat_template(conversation, add_generation_prompt=True), images=[image],
                       return_tensors="pt")
    assert_unreduced_engine_is_stock(qa, image, inputs)


@pytest.mark.parametrize("repo_id", WITH_GENERATION_CONFIG)
def test_the_published_generation_config_is_honoured_but_answers_are_greedy(repo_id, hub_cache, landscape):
    """The checkpoint's own decoding settings (Qwen2.5-VL-7B: stop at <|im_end|> or <|endoftext|>, repetition penalty
    1.05, sampling at temperature 1e-6) are what the engine decodes with, as the model card's `generate` call does,
    except sampling: the engine decodes greedily, so that an answer is the same every time it is asked and settings
    can be compared (at that temperature sampling picks the greedy token anyway)."""
    published = json.loads((FIXTURES / repo_id / "generation_config.json").read_text())
    qa = load_offline(repo_id, hub_cache)
    decoding = qa.model.generation_config
    assert (decoding.eos_token_id, decoding.pad_token_id, decoding.repetition_penalty, decoding.do_sample) == (
        published["eos_token_id"], published["pad_token_id"], published["repetition_penalty"], published["do_sample"])
    inputs = stock_video_inputs(qa, landscape)
    prompt_length = inputs["input_ids"].shape[1]
    greedy = qa.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, prompt_length:]
    unpenalised = qa.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                    repetition_penalty=1.0)[0, prompt_length:]
    assert not torch.equal(greedy, unpenalised)  # the penalty matters for this model, so the check below shows it
    answers = [qa.answer(landscape, QUESTION, AIMConfig.from_efficiency(0.0), NUM_FRAMES, max_new_tokens=NEW_TOKENS)
               for _ in range(2)]
    assert answers[0].text == answers[1].text == qa.adapter.processor.decode(greedy, skip_special_tokens=True)

    # Make the published second stop token, <|endoftext|>, the greedy first token: the answer ends right there.
    # (Its logit becomes twice that of the greedy first token, positive as the largest of ~150k random logits.)
    end_of_text, first = published["eos_token_id"][1], int(greedy[0])
    with torch.no_grad():
        qa.model.get_output_embeddings().weight[end_of_text] = 2 * qa.model.get_output_embeddings().weight[first]
    stopped = qa.answer(landscape, QUESTION, AIMConfig.from_efficiency(0.0), NUM_FRAMES, max_new_tokens=NEW_TOKENS)
    assert (stopped.text, stopped.stats.new_tokens) == ("", 1)
    decoding.eos_token_id = published["eos_token_id"][0]  # config.json's single stop token: it would run on
    assert qa.answer(landscape, QUESTION, AIMConfig.from_efficiency(0.0), NUM_FRAMES,
                     max_new_tokens=NEW_TOKENS).stats.new_tokens == NEW_TOKENS


@pytest.mark.parametrize(("shape", "repo_id", "real_vision_tower"), [
    (LLAVA_ONEVISION_0_5B_SHAPE, "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", True),
    (QWEN2_0_5B_SHAPE, "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", False),
    (QWEN2_7B_SHAPE, "llava-hf/llava-onevision-qwen2-7b-ov-hf", False),
])
def test_the_benchmarks_real_shapes_are_the_published_configs(shape, repo_id, real_vision_tower):
    """The latency and end-to-end benchmarks call these shapes real: their language models, RoPE base included, and
    where claimed their vision towers are the published configs', and the RoPE base reaches the built model."""
    published = json.loads((FIXTURES / repo_id / "config.json").read_text())
    text = published["text_config"]
    assert (shape.text_hidden, shape.text_layers, shape.text_heads, shape.text_kv_heads, shape.text_intermediate,
            shape.max_positions, shape.rope_theta) == (
        text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"], text["num_key_value_heads"],
        text["intermediate_size"], text["max_position_embeddings"], text["rope_theta"])
    if real_vision_tower:
        vision = published["vision_config"]
        assert (shape.vision_hidden, shape.vision_layers, shape.vision_heads, shape.vision_intermediate,
                shape.image_size, shape.patch_size) == (
            vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"],
            vision["intermediate_size"], vision["image_size"], vision["patch_size"])

    model, _ = build_llava_onevision(LlavaOnevisionShape(rope_theta=shape.rope_theta))
    head = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    expected = 1.0 / text["rope_theta"] ** (torch.arange(0, head, 2, dtype=torch.float32) / head)
    torch.testing.assert_close(model.model.language_model.rotary_emb.inv_freq, expected)
