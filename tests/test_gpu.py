"""The engine on a CUDA GPU in half precision, with FlashAttention beside SDPA: efficiency 0 is the stock model token
for token, cached decoding under pruning equals a full recomputation over the same kept tokens, and merging inside
Qwen2.5-VL's packed, windowed vision tower hands FlashAttention's varlen kernel each segment's own `cu_seqlens` and
`max_seqlen`.

The CPU suite checks the same math in float32 with SDPA and eager attention. These tests need a CUDA device; the
FlashAttention cases also need transformers' `flash_attention_4` (the `flash-attn-4` package, FA4's CuTe kernels,
Ampere to Blackwell). `tests/run_gpu.sh` runs them with `AIM_REQUIRE_GPU=1`, under which nothing skips (a missing
GPU or FlashAttention fails), and the 7B-shaped latency benchmark.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers.utils import is_flash_attn_4_available

from aim_core import AIMConfig, SampledFrames, VideoQA
from aim_core.config import no_pruning_before
from aim_core.kernels import graph_free_attention
from aim_core.patch import VisualTokenPruner
from aim_core.random_models import LlavaOnevisionShape, QwenVLShape, build_llava_onevision, build_qwen_vl

REQUIRED = os.environ.get("AIM_REQUIRE_GPU") == "1"
pytestmark = pytest.mark.skipif(not (REQUIRED or torch.cuda.is_available()), reason="needs a CUDA GPU")
needs_flash = pytest.mark.skipif(not (REQUIRED or is_flash_attn_4_available()),
                                 reason="needs the flash-attn-4 package and a GPU")

QUESTION = "Which colour appears first?"
FLASH = "flash_attention_4"
ATTENTIONS = ["sdpa", pytest.param(FLASH, marks=needs_flash)]
# Heads 64 wide, as FlashAttention's tuned tiles are (the CPU suite's are 16 wide); float16 leaves rounding far below
# the effect of any wrong index, position or segment the checks look for.
DTYPE = torch.float16
LLAVA = LlavaOnevisionShape(image_size=64, patch_size=8, vision_hidden=128, vision_heads=2, text_hidden=256,
                            text_heads=4, text_kv_heads=2, text_intermediate=512, text_layers=8)
QWEN = QwenVLShape(family="qwen2_5_vl", vision_hidden=128, vision_heads=2, vision_layers=4, vision_window=48,
                   text_hidden=256, text_heads=4, text_kv_heads=2, text_intermediate=512, mrope_section=(8, 12, 12))
FPS = 2.0


def frames(seed: int = 0, count: int = 8, height: int = 160, width: int = 224) -> np.ndarray:
    """uint8 `[count, height, width, 3]`: smooth gradients plus noise, so some patches are alike."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([(x + y) % 256, (2 * y) % 256, (3 * x) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 12, (count, height, width, 3)), 0, 255).astype(np.uint8)


def build(family: str, attention: str) -> VideoQA:
    if family == "llava_onevision":
        model, processor = build_llava_onevision(LLAVA, seed=0, attn_implementation=attention, dtype=DTYPE)
    else:
        model, processor = build_qwen_vl(QWEN, seed=0, attn_implementation=attention, dtype=DTYPE)
    return VideoQA.from_model(model.to("cuda"), processor)


@pytest.fixture(scope="module", params=[
    pytest.param((family, attention), id=f"{family}-{attention}", marks=[needs_flash] if attention == FLASH else [])
    for family in ("llava_onevision", "qwen2_5_vl") for attention in ("sdpa", FLASH)])
def qa(request) -> VideoQA:
    family, attention = request.param
    return build(family, attention)


def video() -> SampledFrames:
    return SampledFrames.from_array(frames(), fps=FPS)


def test_the_model_runs_the_attention_it_was_built_with(qa):
    assert qa.model.config._attn_implementation in ("sdpa", FLASH)
    assert qa.model.device.type == "cuda" and qa.model.dtype == DTYPE


def reduced_prompt(qa: VideoQA, config: AIMConfig):
    """(encoding, merged tokens, prompt) of the test video as `VideoQA` builds them under `config`."""
    _, key, _, _ = qa._encode(video(), 32, config.vision_keep)
    encoding = qa._cache[key].encoding
    merged = qa._reduced(key, config)[0]
    return encoding, merged, qa.adapter.prompt(QUESTION, encoding, len(qa.adapter.visual_order(encoding, merged)))


def test_efficiency_zero_is_the_stock_model(qa):
    """Efficiency 0 installs no hook: its answer is plain greedy `generate` on the stock prompt and features (which
    the CPU suite proves equal to the processor's), with the SDPA kernels the engine allows."""
    answer = qa.answer(video(), QUESTION, config=AIMConfig.from_efficiency(0.0), max_new_tokens=6, min_new_tokens=6)
    assert answer.stats.flops == answer.stats.flops_baseline
    assert len(set(answer.stats.tokens_per_layer)) == 1
    encoding, merged, prompt = reduced_prompt(qa, AIMConfig.none())
    with torch.inference_mode(), graph_free_attention():
        stock = qa.model.generate(**qa.adapter.generate_inputs(prompt, encoding, merged), max_new_tokens=6,
                                  min_new_tokens=6, do_sample=False)
    assert answer.text == qa.adapter.processor.decode(stock[0, prompt.length:], skip_special_tokens=True).strip()


def pruned_run(qa: VideoQA, config: AIMConfig, steps: int):
    """Greedy decoding with the KV cache under merging and pruning; returns what a replay needs."""
    encoding, merged, prompt = reduced_prompt(qa, config)
    num_visual = prompt.num_visual
    counts = no_pruning_before(config.visual_keep_counts(len(qa.adapter.decoder_layers), num_visual),
                               qa.adapter.first_prunable_layer)
    pruner = VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_positions,
                               num_visual, prompt.length, counts, config.importance)
    inputs = qa.adapter.generate_inputs(prompt, encoding, merged)
    with pruner, torch.inference_mode():
        output = qa.model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                   return_dict_in_generate=True, output_logits=True)
    return output, inputs, prompt, counts, pruner.record.kept_visual


def replay(qa: VideoQA, inputs: dict, sequence: torch.Tensor, prompt, counts, kept) -> torch.Tensor:
    """One forward without cache over the prompt and the generated tokens, pruning exactly `kept`: the logits of
    the last prompt token and of the generated tokens, `[steps + 1, vocab]`."""
    generated = sequence.shape[1] - prompt.length
    full = dict(inputs, input_ids=sequence, attention_mask=torch.ones_like(sequence))
    if "position_ids" in inputs:  # Qwen's 3-D positions: the generated tokens continue the prompt's
        positions = inputs["position_ids"]
        steps = torch.arange(1, generated + 1, device=positions.device)
        full["position_ids"] = torch.cat([positions, positions[..., -1:] + steps], dim=-1)
    with VisualTokenPruner(qa.adapter.decoder_layers, qa.adapter.project_qk, prompt.visual_positions,
                           prompt.num_visual, prompt.length, counts, forced_kept=kept):
        with torch.inference_mode():
            logits = qa.model(**full, use_cache=False).logits[0]
    return logits[-(generated + 1):]


def test_cached_decoding_under_pruning_is_a_full_recomputation(qa):
    """The KV cache holds each layer's kept tokens at their own positions: decoding from it gives the logits of one
    forward over the whole sequence with the same tokens pruned. Kernel rounding differs between the two; a wrong
    kept set (the check can fail) differs far more."""
    steps = 5
    output, inputs, prompt, counts, kept = pruned_run(qa, AIMConfig(merge_keep=0.5), steps)
    assert min(len(k) for k in kept) < prompt.num_visual  # it pruned
    cached = torch.stack([step[0] for step in output.logits]).float()
    recomputed = replay(qa, inputs, output.sequences, prompt, counts, kept)[:steps].float()
    rounding = (cached - recomputed).abs().max().item()

    others = [k if len(k) == prompt.num_visual else
              torch.arange(prompt.num_visual, device=k.device)[~torch.isin(
                  torch.arange(prompt.num_visual, device=k.device), k)][: len(k)] for k in kept]
    wrong = replay(qa, inputs, output.sequences, prompt, counts, others)[:steps].float()
    effect = (wrong - recomputed).abs().max().item()
    assert rounding < 0.02 * recomputed.abs().max().item(), (rounding, recomputed.abs().max().item())
    assert rounding < effect / 10, (rounding, effect)


@pytest.mark.parametrize("importance", ["text", "last"])
def test_pruning_never_makes_the_host_wait_for_the_gpu(qa, importance, monkeypatch):
    """The hooks queue their work behind the model's without reading anything back (a wait at every pruning layer
    left the GPU idle while the host launched the next kernels): CUDA's sync debug mode raises on any such wait
    inside a hook. Layer 0 is left out: it copies the visual positions from the host once a prefill."""
    def strict(method):
        def hooked(self, index, *args, **kwargs):
            if index == 0:
                return method(self, index, *args, **kwargs)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return method(self, index, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return hooked

    monkeypatch.setattr(VisualTokenPruner, "_prefill_layer", strict(VisualTokenPruner._prefill_layer))
    monkeypatch.setattr(VisualTokenPruner, "_decode_layer", strict(VisualTokenPruner._decode_layer))
    output, _, prompt, _, kept = pruned_run(qa, AIMConfig(merge_keep=0.5, importance=importance), 4)
    assert len(kept[-1]) < len(kept[0]) == prompt.num_visual  # it pruned
    assert output.sequences.shape[1] == prompt.length + 4


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_qwen_tower_merging_keeps_segments_apart(attention):
    """Merging inside Qwen2.5-VL's tower: each block's attention gets the merged rows' own segments (`cu_seqlens`,
    and FlashAttention's `max_seqlen`), so changing the second temporal step's frames leaves the first step's merged
    features as they were, and a merge that keeps every patch is the stock tower."""
    qa = build("qwen2_5_vl", attention)
    clip = frames(count=4)
    changed = clip.copy()
    changed[2:] = frames(seed=1, count=2)

    def encode(video: np.ndarray, keep: float) -> torch.Tensor:
        with qa.adapter.vision_token_merger(keep), torch.inference_mode():
            return qa.adapter.encode_video(video).tokens.float()

    # Merging sums rows with atomic adds on a GPU, so reruns differ by rounding; a leak across segments, far more.
    before, after = encode(clip, 0.25), encode(changed, 0.25)
    leak, change = (after[0] - before[0]).abs().max(), (after[1] - before[1]).abs().max()
    assert leak < change / 20, (leak, change)
    torch.testing.assert_close(after[0], before[0], rtol=1e-2, atol=1e-3)
    stock = encode(clip, 1.0)
    torch.testing.assert_close(encode(clip, 1.0 - 1e-9), stock, rtol=1e-2, atol=1e-3)
    assert (before - stock).abs().max() > 20 * leak


@needs_flash
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_flash_attention_answers_as_sdpa_does(family):
    """The same weights under FlashAttention and SDPA: an AIM run (merging in the tower too) keeps the same tokens
    at every layer and gives the same first-step logits, to half-precision rounding."""
    config = AIMConfig.from_efficiency(0.75)
    runs = {}
    for attention in ("sdpa", FLASH):
        qa = build(family, attention)
        output, inputs, prompt, counts, kept = pruned_run(qa, config, 1)
        runs[attention] = (output.logits[0][0].float(), [k.sort().values for k in kept])
    (sdpa_logits, sdpa_kept), (flash_logits, flash_kept) = runs["sdpa"], runs[FLASH]
    assert [len(k) for k in flash_kept] == [len(k) for k in sdpa_kept]
    # Rounding may swap near-ties at the edge of a kept set, nothing more.
    overlap = [len(np.intersect1d(a.cpu(), b.cpu())) / len(a) for a, b in zip(sdpa_kept, flash_kept) if len(a)]
    assert min(overlap) > 0.9, overlap
    assert (sdpa_logits - flash_logits).abs().max() < 0.02 * sdpa_logits.abs().max()
