"""The engine on tiny random stock Qwen2-VL, Qwen2.5-VL and Qwen3-VL: frames sized as the reference implementation
sizes them, estimates equal to the runs (LLaVA-OneVision's too), exactness at efficiency 0, 3-D positions of merged
tokens, exact decoding under pruning, and Qwen3-VL's deepstack layers left whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvF
from transformers import Qwen2_5_VLTextConfig, Qwen2VLTextConfig, Qwen3VLTextConfig
from transformers.video_utils import VideoMetadata

from aim_core import AIMConfig, DecoderShape, SampledFrames, VideoError, VideoQA
from aim_core.adapters.qwen_vl import cluster_mean
from aim_core.baselines import FastV, RandomDrop
from aim_core.config import no_pruning_before
from aim_core.patch import VisualTokenPruner
from aim_core.random_models import QWEN2_5_VL_3B_SHAPE, QwenVLShape, build_qwen_tokenizer, build_qwen_vl, qwen_vl_config
from aim_core.video import frame_indices, probe_video, write_video

QUESTION = "Which colour appears first?"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
FPS = 2.0  # frames 0.5 s apart: Qwen2.5-VL spaces its temporal positions by it, Qwen3-VL writes it in the prompt


def reference_size(height: int, width: int, num_frames: int, factor: int) -> tuple[int, int]:
    """The `(height, width)` qwen-vl-utils' `fetch_video` resizes a video's frames to, written out plainly from
    qwen-vl-utils/src/qwen_vl_utils/vision_process.py (QwenLM/Qwen3-VL, 96588727e44c): `factor` is the patch size
    times the merge size; a frame gets 128 to 768 tokens of factor x factor pixels, and a video at most 90% of a
    128K context, the frame count first padded to even."""
    nframes = math.ceil(num_frames / 2) * 2
    min_pixels = 128 * factor * factor
    total_pixels = 128000 * factor * factor * 0.9
    max_pixels = max(min(768 * factor * factor, total_pixels / nframes * 2), int(min_pixels * 1.05))
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# 48x64 test frames, 8 px patches merged 2x2: the reference scales them up to its minimum of 128 tokens' worth,
# 160x224 pixels, 10x14 = 140 tokens per temporal step of 2 frames
FACTOR = 16
STEP_GRID = tuple(side // FACTOR for side in reference_size(48, 64, 8, FACTOR))
STEP_TOKENS = STEP_GRID[0] * STEP_GRID[1]


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request):
    """(model, processor, VideoQA) of one family, with SDPA."""
    torch.set_num_threads(2)
    model, processor = build_qwen_vl(QwenVLShape(family=request.param))
    return model, processor, VideoQA.from_model(model, processor)


def clip(frames: np.ndarray) -> SampledFrames:
    return SampledFrames.from_array(frames, fps=FPS)


def stock_inputs(processor, frames, question=QUESTION):
    """The model card's recipe for frames sampled beforehand: frames resized to qwen-vl-utils' size (here with the
    processor's own resampler, torchvision's), chat template, then the processor with their times and no resizing."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=len(frames), fps=FPS, frames_indices=list(range(len(frames))))
    size = reference_size(*frames.shape[1:3], len(frames), FACTOR)
    resized = tvF.resize(torch.from_numpy(frames).permute(0, 3, 1, 2), list(size),
                         interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return processor(text=prompt, videos=[resized], video_metadata=[metadata], do_sample_frames=False,
                     do_resize=False, return_tensors="pt")


def stock_positions(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """`([3, 1, length] rotary positions, [1, 1] rope delta)` of the unmerged prompt, by the model itself."""
    grids = {key: inputs[key] for key in ("video_grid_thw", "image_grid_thw", "second_per_grid_ts") if key in inputs}
    return model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **grids)


def merged_for(qa, frames, config):
    """(encoding, merged tokens, prompt) exactly as `VideoQA` builds them."""
    _, encoding, _ = qa.encode(frames)
    merged = qa._reduced(next(reversed(qa._cache)), config)[0]
    return encoding, merged, qa.adapter.prompt(QUESTION, encoding, len(qa.adapter.visual_order(encoding, merged)))


def test_the_tests_reference_sizing_worked_by_hand():
    """The reference written out above, against sizes worked out by hand from qwen-vl-utils' rule."""
    # 1280x720 at 32 frames with 28 px per token (Qwen2/2.5-VL): 728x1288 rounded is over 768 x 28^2 = 602112 px,
    # so scaled by sqrt(921600 / 602112) = 1.237 to 582x1035, floored to 560x1008: 20 x 36 = 720 tokens a step
    assert reference_size(720, 1280, 32, 28) == (560, 1008)
    assert reference_size(1280, 720, 32, 28) == (1008, 560)
    # 32 px per token (Qwen3-VL): over 768 x 32^2 = 786432 px, scaled by 1.0825 to 665x1182, floored to 640x1152
    assert reference_size(720, 1280, 32, 32) == (640, 1152)
    # under 128 x 28^2 = 100352 px: scaled up by sqrt(100352 / 76800) = 1.143 to 274x366, ceiled to 280x392
    assert reference_size(240, 320, 4, 28) == (280, 392)
    # 600 frames share 90% of 128K tokens: 384 tokens (301056 px) a frame, scaled by 1.750 to 411x732 -> 392x728
    assert reference_size(720, 1280, 600, 28) == (392, 728)


@pytest.fixture(scope="module", params=FAMILIES)
def released_patches(request):
    """VideoQA of a tiny model of one family with the released models' patches (14 px; 16 px for Qwen3-VL), so frames
    are sized with their factor (28, 32 pixels a token)."""
    family = request.param
    shape = QwenVLShape(family=family, patch_size=16 if family == "qwen3_vl" else 14, vision_layers=1, text_layers=2,
                        deepstack_layers=1)
    return VideoQA.from_model(*build_qwen_vl(shape))


@pytest.mark.parametrize("height, width, num_frames", [(720, 1280, 32), (1920, 1080, 8), (240, 320, 5), (405, 203, 2)],
                         ids=["720p-32", "portrait-1080p-8", "small-upscaled-5", "odd-sides-2"])
def test_visual_tokens_follow_the_reference_sizing(released_patches, height, width, num_frames):
    qa = released_patches
    patch = qa.adapter.processor.video_processor.patch_size
    factor = 2 * patch
    rows, cols = reference_size(height, width, num_frames, factor)
    steps = math.ceil(num_frames / 2)
    frames = np.full((num_frames, height, width, 3), 100, dtype=np.uint8)  # only the size matters here
    encoding = qa.adapter.encode_video(frames)
    assert encoding.extras["grid_thw"].tolist() == [[steps, rows // patch, cols // patch]]
    assert encoding.tokens.shape[:2] == (steps, (rows // factor) * (cols // factor))
    assert qa.adapter.layout(QUESTION, num_frames, height, width).tokens_per_step == encoding.tokens.shape[1]

    # Frames decoded at the size the adapter asks for (the reference's, unless that is larger than the video) give
    # the same tokens.
    decode_size = qa.adapter.frame_size(height, width, num_frames)
    assert decode_size == ((rows, cols) if rows <= height and cols <= width else (height, width))
    decoded = np.full((num_frames, *decode_size, 3), 100, dtype=np.uint8)
    assert torch.equal(qa.adapter.encode_video(decoded).extras["grid_thw"], encoding.extras["grid_thw"])


def test_long_videos_share_the_reference_budget(released_patches):
    """Past 300 frames the frames share 90% of a 128K context: fewer tokens per frame (the layout; decoding that many
    720p frames is too slow for a test)."""
    qa = released_patches
    factor = 2 * qa.adapter.processor.video_processor.patch_size
    per_step = {}
    for num_frames in (32, 300, 320, 512):
        rows, cols = reference_size(720, 1280, num_frames, factor)
        per_step[num_frames] = qa.adapter.layout(QUESTION, num_frames, 720, 1280).tokens_per_step
        assert per_step[num_frames] == (rows // factor) * (cols // factor)
        assert qa.adapter.frame_size(720, 1280, num_frames) == (rows, cols)
    assert per_step[32] == per_step[300] > per_step[320] > per_step[512]


def test_a_video_too_narrow_for_the_reference_is_refused(qwen):
    _, _, qa = qwen
    with pytest.raises(VideoError, match="too narrow"):
        qa.estimate(AIMConfig(), num_frames=8, frame_size=(2, 500))


def file_like_clip(frames: np.ndarray, fps: float, duration: float) -> SampledFrames:
    """`frames` as `sample_frames` returns them from a `duration`-second video at `fps`: one at the centre of each
    of `len(frames)` equal segments."""
    indices = frame_indices(round(duration * fps), len(frames))
    return SampledFrames(frames, indices / fps, fps, duration, None, "array")


def assert_estimate_is_the_run(qa, video, config, num_frames, frame_size, **timing):
    """Run `video` and check `qa.estimate` predicted its tokens and FLOPs; returns the estimate."""
    stats = qa.answer(video, QUESTION, config=config, num_frames=num_frames, max_new_tokens=1).stats
    estimate = qa.estimate(config, num_frames, frame_size, QUESTION, **timing)
    assert estimate.num_frames == stats.num_frames
    assert estimate.visual_before_merge == stats.visual_tokens_before_merge
    assert estimate.visual_after_merge == stats.visual_tokens_after_merge
    assert estimate.text_tokens == stats.text_tokens
    assert estimate.tokens_per_layer == stats.tokens_per_layer
    assert (estimate.flops, estimate.flops_baseline) == (stats.flops, stats.flops_baseline)
    return estimate


CONFIGS = {"none": AIMConfig.none(), "aim": AIMConfig()}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("num_frames", [1, 4, 7])
def test_estimate_is_what_the_run_has(qwen, random_frames, num_frames, config):
    _, _, qa = qwen
    assert_estimate_is_the_run(qa, clip(random_frames[:num_frames]), config, num_frames, (48, 64), fps=FPS)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_estimate_reads_when_the_frames_of_a_long_video_are_taken(qwen, random_frames, config):
    """8 frames of a 95.5 s video at 30 fps: Qwen3-VL writes times such as `<89.5 seconds>` in the prompt."""
    _, _, qa = qwen
    estimate = assert_estimate_is_the_run(qa, file_like_clip(random_frames, 30.0, 95.5), config, 8, (48, 64),
                                          fps=30.0, duration=95.5)
    if qa.model.config.model_type == "qwen3_vl":  # the check can fail: frames 1 s apart have shorter times
        assert qa.estimate(config, 8, (48, 64), QUESTION).text_tokens < estimate.text_tokens


@pytest.mark.parametrize("size", [(48, 64), (360, 640)], ids=["scaled-up-by-the-processor", "scaled-down-at-decoding"])
def test_estimate_is_what_the_run_has_from_a_file(qwen, tmp_path, size):
    """A video file, sampled and decoded by the engine; the estimate told the file's size, rate and duration."""
    _, _, qa = qwen
    path = tmp_path / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (20, 1, *size[1:], 3), dtype=np.uint8)  # vertical stripes
    write_video(path, np.broadcast_to(frames, (20, *size, 3)), fps=12.0)
    info = probe_video(path)
    for config in CONFIGS.values():
        assert_estimate_is_the_run(qa, path, config, 3, (info.height, info.width), fps=info.fps,
                                   duration=info.duration)


@pytest.fixture(scope="module")
def llava_qa(tiny_llava):
    return VideoQA.from_model(*tiny_llava)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("num_frames", [1, 3, 8])
def test_llava_onevision_estimate_is_what_the_run_has(llava_qa, random_frames, num_frames, config):
    assert_estimate_is_the_run(llava_qa, random_frames[:num_frames], config, num_frames, (48, 64))


@pytest.mark.parametrize("num_frames", [3, 8])
def test_efficiency_zero_is_stock_generate_token_for_token(qwen, random_frames, num_frames):
    model, processor, qa = qwen
    frames = random_frames[:num_frames]
    inputs = stock_inputs(processor, frames)
    expected = model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:]

    encoding, merged, prompt = merged_for(qa, clip(frames), AIMConfig.none())
    assert torch.equal(prompt.input_ids, inputs["input_ids"])
    ours = model.generate(**qa.adapter.generate_inputs(prompt, encoding, merged), max_new_tokens=10, do_sample=False)
    assert torch.equal(ours[0, prompt.length:], expected)

    answer = qa.answer(clip(frames), QUESTION, config=AIMConfig.from_efficiency(0.0), max_new_tokens=10)
    assert answer.text == processor.decode(expected, skip_special_tokens=True).strip()
    assert answer.stats.new_tokens == len(expected)
    assert answer.stats.flops == answer.stats.flops_baseline
    assert answer.stats.num_frames == num_frames


def test_rotary_positions_are_the_models_own(qwen, random_frames):
    """Unmerged, the position ids handed to the LLM are those `get_rope_index` computes from the stock inputs."""
    model, processor, qa = qwen
    inputs = stock_inputs(processor, random_frames)
    encoding, merged, prompt = merged_for(qa, clip(random_frames), AIMConfig.none())
    position_ids = qa.adapter.position_ids(prompt, encoding, merged)
    rotary, _ = stock_positions(model, inputs)
    assert torch.equal(position_ids[1:], rotary)
    assert torch.equal(position_ids[0, 0], torch.arange(prompt.length))


def capture_position_ids(model):
    """Position ids of every call to the LLM (prefill, then one per decoded token), and the hook's handle."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"].clone())

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_merged_tokens_keep_the_3d_position_of_a_member_of_their_cluster(qwen, random_frames):
    model, processor, qa = qwen
    config = AIMConfig(merge_keep=0.25, prune_start=1.0, prune_end=1.0)
    seen, handle = capture_position_ids(model)
    try:
        qa.answer(clip(random_frames), QUESTION, config=config, max_new_tokens=1)
    finally:
        handle.remove()
    encoding, merged, prompt = merged_for(qa, clip(random_frames), config)
    inputs = stock_inputs(processor, random_frames)
    unmerged, _ = stock_positions(model, inputs)
    unmerged, given = unmerged[:, 0], seen[0][1:, 0]
    assert given.shape[1] == prompt.length < unmerged.shape[1]

    unmerged_visual = (inputs["input_ids"][0] == qa.adapter._token_id(encoding)).nonzero()[:, 0]
    is_visual = torch.zeros(prompt.length, dtype=torch.bool)
    is_visual[prompt.visual_positions] = True
    text_columns = torch.ones(unmerged.shape[1], dtype=torch.bool)
    text_columns[unmerged_visual] = False
    assert torch.equal(given[:, ~is_visual], unmerged[:, text_columns])

    steps, kept = merged.tokens.shape[:2]
    for index, position in enumerate(given[:, is_visual].T):
        step, token = divmod(index, kept)
        members = (merged.source[step] == token).nonzero()[:, 0]
        member_positions = unmerged[:, unmerged_visual[step * STEP_TOKENS + members]].T
        assert (member_positions == position).all(dim=1).any(), f"step {step}, token {token}"


def test_decoding_continues_after_the_unmerged_prompt(qwen, random_frames):
    """New tokens sit where they would after the unmerged, unpruned prompt, in all three rotary axes."""
    model, processor, qa = qwen
    seen, handle = capture_position_ids(model)
    try:
        qa.answer(clip(random_frames), QUESTION, config=AIMConfig(), max_new_tokens=3, min_new_tokens=3)
    finally:
        handle.remove()
    rotary, delta = stock_positions(model, stock_inputs(processor, random_frames))
    after_prompt = int(rotary.max()) + 1
    assert after_prompt == rotary.shape[-1] + int(delta)
    prompt_length = seen[0].shape[-1]
    for step, ids in enumerate(seen[1:]):
        assert ids[1:, 0, -1].tolist() == [after_prompt + step] * 3
        assert int(ids[0, 0, -1]) == prompt_length + step  # the cache's own positions, which the mask reads
    assert int(model.model.rope_deltas) + prompt_length == after_prompt


@pytest.mark.parametrize("config", [AIMConfig(), AIMConfig.from_efficiency(1.0), FastV(layer=1, keep=0.5)],
                         ids=["aim", "aim-max", "fastv-layer-1"])
def test_tokens_per_layer_follow_the_schedule_and_the_estimate(qwen, random_frames, config):
    model, _, qa = qwen
    frames = random_frames[:7]
    answer = qa.answer(clip(frames), QUESTION, config=config, max_new_tokens=2)
    stats = answer.stats
    steps = 4  # 7 frames: the last temporal step repeats the last frame
    assert stats.visual_tokens_before_merge == steps * STEP_TOKENS
    counts = no_pruning_before(config.visual_keep_counts(8, stats.visual_tokens_after_merge),
                               qa.adapter.first_prunable_layer)
    assert stats.tokens_per_layer == [count + stats.text_tokens for count in counts]
    assert stats.tokens_per_layer[-1] < stats.tokens_per_layer[0]
    predicted = qa.estimate(config, num_frames=7, frame_size=(48, 64), question=QUESTION, fps=FPS)
    assert predicted.num_frames == 7
    assert predicted.tokens_per_layer == stats.tokens_per_layer
    assert predicted.flops == stats.flops and predicted.flops_baseline == stats.flops_baseline


def test_qwen3_prunes_only_after_its_deepstack_layers(random_frames):
    model, processor = build_qwen_vl(QwenVLShape(family="qwen3_vl", deepstack_layers=3))
    qa = VideoQA.from_model(model, processor)
    assert qa.adapter.first_prunable_layer == 3
    lengths = []  # tokens each layer's MLP sees, after the pruner's hook on the layer
    handles = [layer.mlp.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
               for layer in qa.adapter.decoder_layers]
    try:
        answer = qa.answer(clip(random_frames), QUESTION, config=FastV(layer=1, keep=0.0), max_new_tokens=1)
    finally:
        for handle in handles:
            handle.remove()
    full = answer.stats.text_tokens + answer.stats.visual_tokens_after_merge
    assert lengths[:8] == [full] * 3 + [answer.stats.text_tokens] * 5

    # The guard is needed: dropping visual tokens before the deepstack features are all added breaks the model.
    encoding, merged, prompt = merged_for(qa, clip(random_frames), AIMConfig.none())
    counts = [prompt.num_visual] + [0] * 7
    with VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_positions,
                           prompt.num_visual, prompt.length, counts):
        with pytest.raises((IndexError, RuntimeError)):
            model(**qa.adapter.generate_inputs(prompt, encoding, merged))


def test_deepstack_features_are_merged_like_the_tokens(random_frames):
    model, processor = build_qwen_vl(QwenVLShape(family="qwen3_vl"))
    qa = VideoQA.from_model(model, processor)
    for config in (AIMConfig(merge_keep=0.25), RandomDrop(keep=0.5)):
        encoding, merged, prompt = merged_for(qa, clip(random_frames), config)
        # the merged tokens are their clusters' means, so the same means of the deepstack features match them
        torch.testing.assert_close(cluster_mean(encoding.tokens, merged), merged.tokens)
        features = qa.adapter.generate_inputs(prompt, encoding, merged)["mm_encoder_outputs"]["video"]
        assert len(features.deepstack_features) == len(encoding.extras["deepstack"]) == 3
        for given, layer in zip(features.deepstack_features, encoding.extras["deepstack"]):
            torch.testing.assert_close(given[0], cluster_mean(layer, merged).flatten(0, 1))


def test_pruned_tokens_are_gone_from_the_kv_cache(qwen, random_frames):
    model, _, qa = qwen
    encoding, merged, prompt = merged_for(qa, clip(random_frames), AIMConfig(merge_keep=0.5))
    counts = no_pruning_before(AIMConfig().visual_keep_counts(8, prompt.num_visual), qa.adapter.first_prunable_layer)
    with VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_positions,
                           prompt.num_visual, prompt.length, counts) as pruner:
        output = model.generate(**qa.adapter.generate_inputs(prompt, encoding, merged), max_new_tokens=1,
                                do_sample=False, return_dict_in_generate=True)
    lengths = [layer.keys.shape[2] for layer in output.cache.layers]
    assert lengths == pruner.record.tokens_per_layer == [c + prompt.length - prompt.num_visual for c in counts]


def run_pruned(qa, frames, config, steps):
    """Greedy decode with the KV cache under merging and pruning; returns what a replay needs."""
    encoding, merged, prompt = merged_for(qa, frames, config)
    counts = no_pruning_before(config.visual_keep_counts(len(qa.adapter.decoder_layers), prompt.num_visual),
                               qa.adapter.first_prunable_layer)
    pruner = VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_positions,
                               prompt.num_visual, prompt.length, counts, config.importance)
    inputs = qa.adapter.generate_inputs(prompt, encoding, merged)
    with pruner:
        output = qa.model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                   return_dict_in_generate=True, output_logits=True)
    return output, inputs, pruner, prompt, counts


def replay_logits(qa, inputs, sequence, prompt, counts, forced_kept, position_ids=None):
    """One forward without cache over the prompt and the generated tokens, pruning the tokens the cached run pruned;
    the generated tokens continue the prompt's positions as `generate` continues them. Returns the logits of the
    last prompt token and of the generated tokens."""
    generated = sequence.shape[1] - prompt.length
    if position_ids is None:
        position_ids = inputs["position_ids"]
        position_ids = torch.cat([position_ids, position_ids[..., -1:] + torch.arange(1, generated + 1)], dim=-1)
    full = dict(inputs, input_ids=sequence, attention_mask=torch.ones_like(sequence), position_ids=position_ids)
    with VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_positions,
                           prompt.num_visual, prompt.length, counts, forced_kept=forced_kept):
        with torch.inference_mode():
            logits = qa.model(**full, use_cache=False).logits[0]
    return logits[-(generated + 1):], position_ids


@pytest.fixture(scope="module", params=[(family, "sdpa") for family in FAMILIES] + [("qwen2_5_vl", "eager")],
                ids=lambda p: "-".join(p))
def qwen_any_attention(request):
    family, attention = request.param
    model, processor = build_qwen_vl(QwenVLShape(family=family), attn_implementation=attention)
    return VideoQA.from_model(model, processor)


@pytest.mark.parametrize("importance", ["text", "pagerank"])
def test_cached_decoding_matches_full_recomputation(qwen_any_attention, random_frames, importance):
    qa = qwen_any_attention
    config = AIMConfig(merge_keep=0.5, importance=importance)
    steps = 6
    output, inputs, pruner, prompt, counts = run_pruned(qa, clip(random_frames), config, steps)
    kept = pruner.record.kept_visual
    logits, position_ids = replay_logits(qa, inputs, output.sequences, prompt, counts, kept)
    for step in range(steps):
        torch.testing.assert_close(output.logits[step][0], logits[step], rtol=1e-4, atol=1e-4)

    # The check can fail: other kept tokens, no pruning, or 1-D positions for the visual tokens give other logits.
    num_visual = prompt.num_visual
    other = [k.flip(0) if len(k) == num_visual else
             torch.arange(num_visual)[~torch.isin(torch.arange(num_visual), k.cpu())][: len(k)] for k in kept]
    changed, _ = replay_logits(qa, inputs, output.sequences, prompt, counts, other)
    assert not torch.allclose(changed, logits, atol=1e-3)
    flat = position_ids[:1].expand(4, -1, -1)
    flattened, _ = replay_logits(qa, inputs, output.sequences, prompt, counts, kept, position_ids=flat)
    assert not torch.allclose(flattened, logits, atol=1e-3)
    full = dict(inputs, input_ids=output.sequences, attention_mask=torch.ones_like(output.sequences),
                position_ids=position_ids)
    with torch.inference_mode():
        unpruned = qa.model(**full).logits[0]
    assert not torch.allclose(unpruned[prompt.length - 1:], logits, atol=1e-3)


def test_trace_has_one_map_per_frame(qwen, random_frames):
    """A temporal step's maps are drawn over both of its frames; the repeat that completes the last step is not."""
    _, _, qa = qwen
    answer = qa.answer(clip(random_frames[:7]), QUESTION, config=AIMConfig(merge_keep=0.5), max_new_tokens=1)
    trace = answer.trace
    assert trace.frames_per_step == 2 and trace.grid == STEP_GRID and len(trace.frames) == 7
    clusters = trace.clusters()
    assert clusters.shape == (7, *STEP_GRID)
    assert (clusters[0] == clusters[1]).all() and (clusters[4] == clusters[5]).all()
    assert (clusters == trace.merge_source.repeat_interleave(2, 0)[:7].reshape(7, *STEP_GRID).numpy()).all()
    assert trace.kept_patches(0).shape == (7, *STEP_GRID) and trace.kept_patches(0).all()
    assert not trace.kept_patches(7).any()


def test_a_single_frame_fills_one_temporal_step(qwen, random_frames):
    _, _, qa = qwen
    answer = qa.answer(clip(random_frames[:1]), QUESTION, config=AIMConfig(), max_new_tokens=2)
    assert answer.stats.num_frames == 1
    assert answer.stats.visual_tokens_before_merge == STEP_TOKENS
    assert answer.trace.clusters().shape == (1, *STEP_GRID)


@pytest.mark.parametrize("config_class, hidden, heads, kv_heads, head_dim, intermediate, layers", [
    (Qwen2VLTextConfig, 3584, 28, 4, 128, 18944, 28),  # Qwen2-VL-7B
    (Qwen2_5_VLTextConfig, 2048, 16, 2, 128, 11008, 36),  # Qwen2.5-VL-3B
    (Qwen3VLTextConfig, 2560, 32, 8, 128, 9728, 36),  # Qwen3-VL-4B: 32 heads x 128 is wider than the model
])
def test_flops_model_reads_each_familys_text_config(config_class, hidden, heads, kv_heads, head_dim, intermediate,
                                                     layers):
    extra = {"head_dim": head_dim} if config_class is Qwen3VLTextConfig else {}
    config = config_class(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          intermediate_size=intermediate, num_hidden_layers=layers, **extra)
    assert DecoderShape.from_config(config) == DecoderShape(
        hidden=hidden, query_width=heads * head_dim, kv_width=kv_heads * head_dim, intermediate=intermediate,
        heads=heads, layers=layers)


def test_flops_model_of_the_benchmark_and_test_models(qwen):
    model, _, qa = qwen
    text = model.config.text_config
    assert qa.shape == DecoderShape(hidden=64, query_width=64, kv_width=32, intermediate=128, heads=4, layers=8)
    assert qa.shape == DecoderShape.from_config(text)
    benchmark = qwen_vl_config(QWEN2_5_VL_3B_SHAPE, build_qwen_tokenizer()).text_config
    assert DecoderShape.from_config(benchmark) == DecoderShape(
        hidden=2048, query_width=2048, kv_width=256, intermediate=11008, heads=16, layers=36)
