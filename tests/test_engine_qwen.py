"""The engine on tiny random stock Qwen2-VL, Qwen2.5-VL and Qwen3-VL: exactness at efficiency 0, 3-D positions of
merged tokens, exact decoding under pruning, and Qwen3-VL's deepstack layers left whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLTextConfig, Qwen2VLTextConfig, Qwen3VLTextConfig
from transformers.video_utils import VideoMetadata

from aim_core import AIMConfig, DecoderShape, SampledFrames, VideoQA
from aim_core.adapters.qwen_vl import cluster_mean
from aim_core.baselines import FastV, RandomDrop
from aim_core.config import no_pruning_before
from aim_core.patch import VisualTokenPruner
from aim_core.random_models import QWEN2_5_VL_3B_SHAPE, QwenVLShape, build_qwen_tokenizer, build_qwen_vl, qwen_vl_config

QUESTION = "Which colour appears first?"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
FPS = 2.0  # frames 0.5 s apart: Qwen2.5-VL spaces its temporal positions by it, Qwen3-VL writes it in the prompt
# 48x64 frames in 8 px patches, 2x2 merged: 3x4 = 12 tokens per temporal step of 2 frames
STEP_TOKENS = 12


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request):
    """(model, processor, VideoQA) of one family, with SDPA."""
    torch.set_num_threads(2)
    model, processor = build_qwen_vl(QwenVLShape(family=request.param))
    return model, processor, VideoQA.from_model(model, processor)


def clip(frames: np.ndarray) -> SampledFrames:
    return SampledFrames.from_array(frames, fps=FPS)


def stock_inputs(processor, frames, question=QUESTION):
    """The model card's recipe for frames sampled beforehand: chat template, then the processor with their times."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=len(frames), fps=FPS, frames_indices=list(range(len(frames))))
    return processor(text=prompt, videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                     return_tensors="pt")


def stock_positions(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """`([3, 1, length] rotary positions, [1, 1] rope delta)` of the unmerged prompt, by the model itself."""
    grids = {key: inputs[key] for key in ("video_grid_thw", "image_grid_thw", "second_per_grid_ts") if key in inputs}
    return model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **grids)


def merged_for(qa, frames, config):
    """(encoding, merged tokens, prompt) exactly as `VideoQA` builds them."""
    _, encoding, _ = qa.encode(frames)
    merged = qa._reduced(next(reversed(qa._cache)), config)[0]
    return encoding, merged, qa.adapter.prompt(QUESTION, encoding, len(qa.adapter.visual_order(encoding, merged)))


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
    predicted = qa.estimate(config, num_frames=7, frame_size=(48, 64), question=QUESTION)
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
    assert trace.frames_per_step == 2 and trace.grid == (3, 4) and len(trace.frames) == 7
    clusters = trace.clusters()
    assert clusters.shape == (7, 3, 4)
    assert (clusters[0] == clusters[1]).all() and (clusters[4] == clusters[5]).all()
    assert (clusters == trace.merge_source.repeat_interleave(2, 0)[:7].reshape(7, 3, 4).numpy()).all()
    assert trace.kept_patches(0).shape == (7, 3, 4) and trace.kept_patches(0).all()
    assert not trace.kept_patches(7).any()


def test_a_single_frame_fills_one_temporal_step(qwen, random_frames):
    _, _, qa = qwen
    answer = qa.answer(clip(random_frames[:1]), QUESTION, config=AIMConfig(), max_new_tokens=2)
    assert answer.stats.num_frames == 1
    assert answer.stats.visual_tokens_before_merge == STEP_TOKENS
    assert answer.trace.clusters().shape == (1, 3, 4)


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
