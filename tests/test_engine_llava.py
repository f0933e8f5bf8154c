"""The engine on a tiny random stock LLaVA-OneVision: exactness at efficiency 0, real pruning, exact decoding."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from aim_core import AIMConfig, QuestionError, SettingsError, VideoQA
from aim_core.baselines import FastV, RandomDrop
from aim_core.config import visual_keep_counts
from aim_core.kernels import graph_free_attention
from aim_core.patch import VisualTokenPruner
from aim_core.prune import pagerank_importance, text_to_visual_importance

QUESTION = "Which colour appears first?"


def stock_generate(model, processor, frames, question, max_new_tokens=10):
    """The model card's recipe: chat template, processor, greedy generate."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[frames], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1]:], inputs


@pytest.fixture(scope="module")
def qa(tiny_llava):
    return VideoQA.from_model(*tiny_llava)


@pytest.mark.parametrize("num_frames", [1, 3, 8])
def test_efficiency_zero_is_stock_generate_token_for_token(tiny_llava, qa, random_frames, num_frames):
    model, processor = tiny_llava
    frames = random_frames[:num_frames]
    expected, _ = stock_generate(model, processor, frames, QUESTION, max_new_tokens=10)
    answer = qa.answer(frames, QUESTION, config=AIMConfig.from_efficiency(0.0), max_new_tokens=10)
    assert answer.text == processor.decode(expected, skip_special_tokens=True).strip()
    assert answer.stats.new_tokens == len(expected)
    assert answer.stats.flops == answer.stats.flops_baseline


def test_prompt_matches_the_processor(tiny_llava, qa, random_frames):
    """The prompt built from the cached encoding is exactly what the processor would tokenize."""
    _, inputs = stock_generate(*tiny_llava, random_frames, QUESTION, max_new_tokens=1)
    _, encoding, _ = qa.encode(random_frames)
    num_visual = encoding.tokens.shape[0] * encoding.tokens.shape[1] + 1
    assert torch.equal(qa.adapter.prompt(QUESTION, encoding, num_visual).input_ids, inputs["input_ids"])


def test_efficiency_zero_matches_stock_with_eager_attention(tiny_llava_eager, random_frames):
    model, processor = tiny_llava_eager
    expected, _ = stock_generate(model, processor, random_frames, QUESTION)
    answer = VideoQA.from_model(model, processor).answer(random_frames, QUESTION, config=AIMConfig.none(),
                                                        max_new_tokens=10)
    assert answer.text == processor.decode(expected, skip_special_tokens=True).strip()


def test_tokens_per_layer_follow_the_schedule(qa, random_frames):
    config = AIMConfig()
    answer = qa.answer(random_frames, QUESTION, config=config, max_new_tokens=3)
    stats = answer.stats
    # 8 frames x 16 tokens merged to 25% = 4 per frame, plus the newline token
    assert stats.visual_tokens_before_merge == 8 * 16 + 1
    assert stats.visual_tokens_after_merge == 8 * 4 + 1
    expected = [count + stats.text_tokens for count in visual_keep_counts(8, 33, 0.5, 0.79)]
    assert stats.tokens_per_layer == expected
    assert stats.tokens_per_layer[0] > stats.tokens_per_layer[4] > stats.tokens_per_layer[5]
    assert stats.tokens_per_layer[-1] == stats.text_tokens
    predicted = qa.estimate(config, num_frames=8, question=QUESTION)
    assert predicted.tokens_per_layer == stats.tokens_per_layer
    assert predicted.flops == stats.flops and predicted.flops_baseline == stats.flops_baseline
    assert stats.flops_reduction > 2


def test_kept_sets_are_nested_and_traced(qa, random_frames):
    answer = qa.answer(random_frames, QUESTION, config=AIMConfig(merge_keep=0.5), max_new_tokens=2)
    kept = [set(k.tolist()) for k in answer.trace.kept_per_layer]
    assert all(later <= earlier for earlier, later in zip(kept, kept[1:]))
    assert len(kept[0]) == 8 * 8 + 1 and len(kept[-1]) == 0
    trace = answer.trace
    assert trace.clusters().shape == (8, 4, 4)
    assert trace.kept_patches(0).all()
    assert not trace.kept_patches(7).any()
    partial = trace.kept_patches(4)
    assert 0 < partial.sum() < partial.size


def test_pruned_tokens_are_gone_from_the_kv_cache(tiny_llava, qa, random_frames):
    """Tokens are physically removed: each layer's cache holds exactly the tokens that layer processed."""
    model, _ = tiny_llava
    _, encoding, _ = qa.encode(random_frames)
    merged = qa._reduced(next(reversed(qa._cache)), AIMConfig.none())[0]
    num_visual = 8 * 16 + 1
    prompt = qa.adapter.prompt(QUESTION, encoding, num_visual)
    counts = visual_keep_counts(8, num_visual, 0.5, 0.79)
    with VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_start, num_visual,
                           prompt.length, counts) as pruner:
        output = model.generate(**qa.adapter.generate_inputs(prompt, encoding, merged), max_new_tokens=1,
                                do_sample=False, return_dict_in_generate=True)
    lengths = [layer.keys.shape[2] for layer in output.cache.layers]
    assert lengths == pruner.record.tokens_per_layer
    assert lengths == [c + prompt.length - num_visual for c in counts]


def run_pruned(qa, frames, config, max_new_tokens):
    """Greedy decode with the KV cache under pruning; returns tokens, per-step logits, and what it needs to replay."""
    _, encoding, _ = qa.encode(frames)
    merged, _ = qa._reduced(next(reversed(qa._cache)), config)
    num_visual = merged.tokens.shape[0] * merged.tokens.shape[1] + 1
    prompt = qa.adapter.prompt(QUESTION, encoding, num_visual)
    counts = config.visual_keep_counts(len(qa.adapter.decoder_layers), num_visual)
    pruner = VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_start, num_visual,
                               prompt.length, counts, config.importance)
    inputs = qa.adapter.generate_inputs(prompt, encoding, merged)
    with pruner:
        output = qa.model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                   do_sample=False, return_dict_in_generate=True, output_logits=True)
    return output, inputs, pruner, prompt, num_visual, counts


def replay_logits(qa, inputs, sequence, prompt, num_visual, counts, forced_kept):
    """One forward without cache over the whole sequence, pruning exactly the tokens the cached run pruned; the
    generated tokens continue the prompt's positions as `generate` continues them.

    Returns the logits of the last `len(sequence) - prompt.length + 1` positions (pruning shortens the output,
    but the tokens after the visual run are text and always kept)."""
    full = dict(inputs, input_ids=sequence, attention_mask=torch.ones_like(sequence),
                position_ids=continued(inputs["position_ids"], sequence.shape[1] - prompt.length))
    with VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_start, num_visual,
                           prompt.length, counts, forced_kept=forced_kept):
        with torch.inference_mode():
            logits = qa.model(**full, use_cache=False).logits[0]
    return logits[-(sequence.shape[1] - prompt.length + 1):]


@pytest.mark.parametrize("importance", ["text", "pagerank"])
@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_llava_eager"])
def test_cached_decoding_matches_full_recomputation(request, fixture, importance, random_frames):
    model, processor = request.getfixturevalue(fixture)
    qa = VideoQA.from_model(model, processor)
    config = AIMConfig(merge_keep=0.5, importance=importance)
    steps = 6
    output, inputs, pruner, prompt, num_visual, counts = run_pruned(qa, random_frames, config, steps)
    sequence = output.sequences
    logits = replay_logits(qa, inputs, sequence, prompt, num_visual, counts, pruner.record.kept_visual)
    for step in range(steps):
        cached = output.logits[step][0]
        recomputed = logits[step]
        torch.testing.assert_close(cached, recomputed, rtol=1e-4, atol=1e-4)

    # The check can fail: replaying with other kept tokens, or without pruning, gives other logits.
    other = [kept.flip(0)[: len(kept)] if len(kept) == num_visual else
             torch.arange(num_visual)[~torch.isin(torch.arange(num_visual), kept)][: len(kept)]
             for kept in pruner.record.kept_visual]
    changed = replay_logits(qa, inputs, sequence, prompt, num_visual, counts, other)
    assert not torch.allclose(changed, logits, atol=1e-3)
    position_ids = continued(inputs["position_ids"], sequence.shape[1] - prompt.length)
    full = dict(inputs, input_ids=sequence, attention_mask=torch.ones_like(sequence), position_ids=position_ids)
    with torch.inference_mode():
        unpruned = qa.model(**full).logits[0]
    assert not torch.allclose(unpruned[prompt.length - 1:], logits, atol=1e-3)


def continued(position_ids: torch.Tensor, generated: int) -> torch.Tensor:
    """`[1, length + generated]`: the prompt's position ids, then one more for each generated token."""
    return torch.cat([position_ids, position_ids[:, -1:] + torch.arange(1, generated + 1)], dim=-1)


def seen_position_ids(qa, run):
    """The position ids layer 0 gets in each forward of `run()` (prefill, then one per decoded token)."""
    seen = []
    layer0 = qa.adapter.decoder_layers[0]
    handle = layer0.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_decoding_continues_after_the_unmerged_unpruned_prompt(qa, random_frames):
    """Position ids of generated tokens count every prompt token, merged, pruned or neither."""
    unmerged_length = qa.adapter.prompt(QUESTION, None, 8 * 16 + 1).length
    for config in (AIMConfig(merge_keep=1.0), AIMConfig()):
        seen = seen_position_ids(qa, lambda: qa.answer(random_frames, QUESTION, config=config, max_new_tokens=3,
                                                      min_new_tokens=3))
        assert seen[0][0, -1] == unmerged_length - 1
        assert [int(ids[0, -1]) for ids in seen[1:]] == [unmerged_length, unmerged_length + 1]
        if config.merge_keep == 1.0:
            assert seen[0][0].tolist() == list(range(unmerged_length))


def test_merged_tokens_keep_the_position_of_a_member_of_their_cluster(qa, random_frames):
    """Each merged token sits where its cluster's representative sat in the unmerged prompt; the text before and
    after the video where it sat too. Compacting the positions instead changes the answer's logits."""
    config = AIMConfig(merge_keep=0.25, prune_start=1.0, prune_end=1.0)
    seen = seen_position_ids(qa, lambda: qa.answer(random_frames, QUESTION, config=config, max_new_tokens=1))
    _, encoding, _ = qa.encode(random_frames)
    merged = qa._reduced(next(reversed(qa._cache)), config)[0]
    frames, kept = merged.tokens.shape[:2]
    prompt = qa.adapter.prompt(QUESTION, encoding, frames * kept + 1)
    unmerged = qa.adapter.prompt(QUESTION, encoding, frames * 16 + 1)
    given = seen[0][0]
    assert len(given) == prompt.length < unmerged.length
    start = prompt.visual_start
    assert given[:start].tolist() == list(range(start))
    text_after = prompt.length - start - prompt.num_visual
    assert given[-text_after:].tolist() == list(range(unmerged.length - text_after, unmerged.length))
    assert int(given[start + frames * kept]) == start + frames * 16  # the newline after the frames
    for index, position in enumerate(given[start:start + frames * kept].tolist()):
        frame, token = divmod(index, kept)
        members = (merged.source[frame] == token).nonzero()[:, 0]
        assert position - start - frame * 16 in members.tolist(), f"frame {frame}, token {token}"
        assert merged.sizes[frame, token] == len(members)

    inputs = qa.adapter.generate_inputs(prompt, encoding, merged)
    with torch.inference_mode():
        kept_places = qa.model(**inputs).logits[0, -1]
        compacted = qa.model(**dict(inputs, position_ids=torch.arange(prompt.length)[None])).logits[0, -1]
    assert not torch.allclose(kept_places, compacted, atol=1e-3)


def test_a_long_merged_video_spans_at_most_position_frames_of_positions(qa, random_frames, monkeypatch):
    """Past `position_frames` unmerged frames, merged tokens' places are scaled into that span (never below the merged
    run's own length) and the text after the video follows it; with nothing merged the positions stay the stock ones."""
    monkeypatch.setattr(qa.adapter, "position_frames", 2)  # 8 frames of 16 tokens, + a newline: 129 unmerged
    _, encoding, _ = qa.encode(random_frames)
    unmerged = qa.adapter.prompt(QUESTION, encoding, 8 * 16 + 1)
    for merge_keep, span in ((0.25, 2 * 16 + 1), (0.5, 8 * 8 + 1), (1.0, 8 * 16 + 1)):
        config = AIMConfig(merge_keep=merge_keep, prune_start=1.0, prune_end=1.0)
        seen = seen_position_ids(qa, lambda: qa.answer(random_frames, QUESTION, config=config, max_new_tokens=2,
                                                      min_new_tokens=2))
        merged = qa._reduced(next(reversed(qa._cache)), config)[0]
        frames, kept = merged.tokens.shape[:2]
        prompt = qa.adapter.prompt(QUESTION, encoding, frames * kept + 1)
        given, start = seen[0][0], prompt.visual_start
        text_after = prompt.length - start - prompt.num_visual
        assert given[:start].tolist() == list(range(start))
        assert given[-text_after:].tolist() == list(range(start + span, start + span + text_after))
        assert int(seen[1][0, -1]) == start + span + text_after  # decoding goes on from there
        visual = given[start:start + prompt.num_visual] - start
        assert 0 <= int(visual.min()) and int(visual.max()) < span
        # Frames keep their order; inside a frame a token takes a place of its cluster's (below), which need not
        # follow the survivors' order.
        by_frame = visual[:-1].view(frames, kept)
        assert (by_frame.amax(1)[:-1] <= by_frame.amin(1)[1:]).all() and int(visual[-1]) >= int(visual[:-1].max())
        for index, position in enumerate(visual[:-1].tolist()):
            frame, token = divmod(index, kept)
            members = frame * 16 + (merged.source[frame] == token).nonzero()[:, 0]
            assert position in (members * span // (8 * 16 + 1)).tolist(), f"frame {frame}, token {token}"
        if merge_keep == 1.0:
            assert given.tolist() == list(range(unmerged.length))


def test_text_importance_matches_eager_attention_weights(tiny_llava_eager, random_frames):
    """At the first pruning layer the ranking equals the text rows of the layer's real attention weights."""
    model, processor = tiny_llava_eager
    qa = VideoQA.from_model(model, processor)
    output, inputs, pruner, prompt, num_visual, counts = run_pruned(qa, random_frames, AIMConfig(merge_keep=1.0), 1)
    layer = next(i for i, c in enumerate(counts) if c < num_visual)
    with torch.inference_mode():
        attentions = model(**inputs, output_attentions=True).attentions[layer][0]  # [heads, n, n]
    visual = slice(prompt.visual_start, prompt.visual_start + num_visual)
    text_rows = slice(prompt.visual_start + num_visual, prompt.length)
    reference = attentions[:, text_rows, visual].mean(dim=(0, 1))
    expected = reference.topk(counts[layer]).indices.sort().values
    assert torch.equal(pruner.record.kept_visual[layer], expected)


def test_importance_functions_against_naive_formulas():
    generator = torch.Generator().manual_seed(0)
    heads, n, dim = 3, 12, 8
    query = torch.randn(heads, n, dim, generator=generator)
    key = torch.randn(heads, n, dim, generator=generator)
    positions = torch.arange(n) * 2  # gaps, as after pruning
    visual = torch.arange(2, 8)
    causal = torch.ones(n, n).tril().bool()
    logits = (query @ key.transpose(1, 2)) * 0.5
    attention = logits.masked_fill(~causal, -torch.inf).softmax(-1)

    rows = torch.arange(8, n)
    text = text_to_visual_importance(query[:, rows], key, positions[rows], positions, visual, 0.5)
    torch.testing.assert_close(text, attention[:, rows][:, :, visual].mean(dim=(0, 1)))

    sharp = (logits / 0.1).masked_fill(~causal, -torch.inf).softmax(-1)
    rank = torch.full((heads, 1, n), 1 / n)
    for _ in range(5):
        rank = rank @ sharp
    expected = rank[:, 0].square().mean(0).sqrt()[visual]
    torch.testing.assert_close(pagerank_importance(query, key, positions, visual, 0.5), expected)


def test_second_question_skips_the_vision_tower(tiny_llava, random_frames):
    model, processor = tiny_llava
    qa = VideoQA.from_model(model, processor)
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = qa.answer(random_frames, QUESTION, max_new_tokens=2)
        second = qa.answer(random_frames, "How many objects?", max_new_tokens=2)
        # Another LLM-side setting with the stock tower: the tower's output is reused.
        third = qa.answer(random_frames, QUESTION, config=AIMConfig.from_efficiency(0.3).with_stock_tower(),
                          max_new_tokens=2)
        assert len(calls) == 1
        other = qa.answer(random_frames[::-1].copy(), QUESTION, max_new_tokens=2)
        # Merging inside the tower changes its output: it runs again, once per vision setting.
        merged = [qa.answer(random_frames, QUESTION, config=AIMConfig.from_efficiency(e), max_new_tokens=2)
                  for e in (0.6, 0.7)]
    finally:
        handle.remove()
    assert not first.stats.vision_cached and second.stats.vision_cached and third.stats.vision_cached
    assert not other.stats.vision_cached and not merged[0].stats.vision_cached and merged[1].stats.vision_cached
    assert len(calls) == 3


def test_stream_yields_the_answer_as_it_grows(qa, random_frames):
    stream = qa.stream(random_frames, QUESTION, max_new_tokens=8, min_new_tokens=8)
    pieces = list(stream)
    assert len(pieces) >= 2
    assert "".join(pieces).strip() == stream.answer.text
    stats = stream.answer.stats
    assert stats.new_tokens == 8
    assert 0 < stats.prefill_seconds <= stats.time_to_first_token <= stats.total_seconds
    assert stats.kv_cache_bytes > 0


def test_cancel_stops_generation(qa, random_frames):
    stream = qa.stream(random_frames, QUESTION, max_new_tokens=50, min_new_tokens=50)
    for _ in stream:
        stream.cancel()
    assert stream.answer.cancelled
    assert stream.answer.stats.new_tokens < 50


def test_stopping_iteration_early_frees_the_model(qa, random_frames):
    stream = qa.stream(random_frames, QUESTION, max_new_tokens=50, min_new_tokens=50)
    next(iter(stream))
    del stream  # a UI dropping a stream must not leave the model locked
    import gc

    gc.collect()
    assert qa.answer(random_frames, QUESTION, max_new_tokens=2).stats.new_tokens == 2


@pytest.mark.parametrize("question", ["", "   ", "\n", "x" * 2001, None])
def test_bad_question(qa, random_frames, question):
    with pytest.raises(QuestionError):
        qa.answer(random_frames, question)


@pytest.mark.parametrize("num_frames", [0, -1, 513, 2.5])
def test_bad_frame_count(qa, tmp_path, num_frames):
    with pytest.raises(SettingsError):
        qa.answer(tmp_path / "missing.mp4", QUESTION, num_frames=num_frames)


def test_bad_array(qa):
    from aim_core import VideoError

    with pytest.raises(VideoError):
        qa.answer(np.zeros((4, 8, 8), dtype=np.uint8), QUESTION)


def test_fastv_prunes_once_at_its_layer_by_last_token_attention(qa, random_frames):
    config = FastV(layer=2, keep=0.25)
    answer = qa.answer(random_frames, QUESTION, config=config, max_new_tokens=2)
    text = answer.stats.text_tokens
    assert answer.stats.tokens_per_layer == [129 + text] * 2 + [int(0.25 * 129) + text] * 6
    assert qa.estimate(config, num_frames=8, question=QUESTION).flops == answer.stats.flops


def test_fastv_ranks_by_the_last_prompt_token(tiny_llava_eager, random_frames):
    model, processor = tiny_llava_eager
    qa = VideoQA.from_model(model, processor)
    output, inputs, pruner, prompt, num_visual, counts = run_pruned(qa, random_frames, FastV(layer=3, keep=0.3), 1)
    with torch.inference_mode():
        attentions = model(**inputs, output_attentions=True).attentions[3][0]
    visual = slice(prompt.visual_start, prompt.visual_start + num_visual)
    expected = attentions[:, -1, visual].mean(dim=0).topk(counts[3]).indices.sort().values
    assert torch.equal(pruner.record.kept_visual[3], expected)


def test_random_drop_keeps_a_seeded_subset_in_order(qa, random_frames):
    config = RandomDrop(keep=0.25, seed=3)
    answer = qa.answer(random_frames, QUESTION, config=config, max_new_tokens=2)
    source = answer.trace.merge_source
    assert answer.stats.visual_tokens_after_merge == 8 * 4 + 1
    assert ((source >= 0).sum(dim=1) == 4).all()
    for frame in range(8):
        kept = source[frame][source[frame] >= 0]
        assert kept.tolist() == [0, 1, 2, 3]  # survivors in their original order
    assert answer.trace.kept_patches(0).sum() == 8 * 4
    again = RandomDrop(keep=0.25, seed=3).reduce_frames(torch.randn(8, 16, 4)).source
    assert torch.equal(again, source)


def test_follow_up_on_the_same_file_skips_decoding(tiny_llava, random_frames, tmp_path, monkeypatch):
    from aim_core import qa as qa_module
    from aim_core.video import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, random_frames, fps=4)
    decoded = []
    real = qa_module.sample_frames
    monkeypatch.setattr(qa_module, "sample_frames",
                        lambda *args, **kwargs: decoded.append(args) or real(*args, **kwargs))
    qa = VideoQA.from_model(*tiny_llava)
    qa.answer(path, QUESTION, num_frames=4, max_new_tokens=1)
    second = qa.answer(str(path), "How many?", num_frames=4, max_new_tokens=1)
    assert len(decoded) == 1 and second.stats.vision_cached
    qa.answer(path, QUESTION, num_frames=6, max_new_tokens=1)  # other frames: decoded again
    write_video(path, random_frames[::-1].copy(), fps=4)  # the file changed: decoded again
    changed = qa.answer(path, QUESTION, num_frames=4, max_new_tokens=1)
    assert len(decoded) == 3 and not changed.stats.vision_cached


def test_the_tower_and_generation_run_without_the_cudnn_attention_backend(qa, random_frames):
    """SDPA's cuDNN backend builds a graph per new sequence length and thread, which decoding and pruning meet at
    every step and layer, and a merged tower in every new thread (`aim_core.kernels`): the vision tower and the
    decoder run without it, and the setting is restored afterwards."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    qa.clear_cache()
    seen = {"tower": [], "decoder": []}
    spies = [layers[0].register_forward_pre_hook(
        lambda module, args, part=part: seen[part].append(torch.backends.cuda.cudnn_sdp_enabled()))
        for part, layers in (("tower", qa.adapter.vision_layers), ("decoder", qa.adapter.decoder_layers))]
    try:
        qa.answer(random_frames, QUESTION, config=AIMConfig(vision_keep=0.5), max_new_tokens=3, min_new_tokens=3)
    finally:
        for spy in spies:
            spy.remove()
    assert len(seen["tower"]) >= 1 and not any(seen["tower"])
    assert len(seen["decoder"]) == 3 and not any(seen["decoder"])
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_overlapping_answers_restore_the_cudnn_switch_when_the_last_one_ends():
    """Two answers in their own threads, the first ending before the second: the switch stays off until both have
    ended (restoring it per answer would turn it on under the second, or leave it off for good)."""
    torch.backends.cuda.enable_cudnn_sdp(True)
    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()
    states = {}

    def first() -> None:
        with graph_free_attention():
            first_inside.set()
            second_inside.wait()
        first_done.set()

    def second() -> None:
        first_inside.wait()
        with graph_free_attention():
            second_inside.set()
            first_done.wait()
            states["after the first ended"] = torch.backends.cuda.cudnn_sdp_enabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert states == {"after the first ended": False}
    assert torch.backends.cuda.cudnn_sdp_enabled()
