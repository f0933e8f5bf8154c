"""vLLM's Qwen2.5-VL and Qwen3-VL with AIM's merging in place of EVS's pruning, at the same two hooks.

- The processor writes `steps * merged_count(n, keep)` video tokens into the prompt (`_get_prompt_updates`), and
  carries each video's `keep` to the model as a per-video field, so the processor cache tells settings apart.
- The model merges the vision tower's output per temporal step (`_postprocess_video_embeds_evs`) and appends to
  every merged token the M-RoPE position of its cluster's representative in the unmerged video, in the format vLLM's
  own pruning uses; vLLM's `recompute_mrope_positions` then places them in the prompt. The text after a video keeps
  its unmerged position too (Qwen2.5-VL: channel 3 carries the unmerged span instead of EVS's grid width).

Positions travel in the embeddings' dtype, as EVS's do: exact in float32, and in bfloat16 up to 256 within a video.
Qwen3-VL: serve with `--disable-chunked-mm-input`, as for vLLM's own pruning, whose position recompute misplaces the
rest of a video that chunked prefill splits (it counts from the last frame's vision start, not the video's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptUpdate

from aim_core.merge import merged_count

from .config import REQUEST_KWARG, default_keep, parse_keep
from .merging import merge_video, qwen2_5_video_positions, tokens_per_step


class _AIMProcessorMixin:
    """Takes `aim_merge_keep` out of the request's processor kwargs (default: `AIM_VLLM_MERGE_KEEP`) and stores it
    per video in the processed inputs, where prompt updates and the model read it."""

    def _apply_hf_processor_main(self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]) -> BatchFeature:
        hf_kwargs = dict(hf_kwargs)
        keep = parse_keep(hf_kwargs.pop(REQUEST_KWARG, default_keep() or 1.0), REQUEST_KWARG)
        processed = super()._apply_hf_processor_main(mm_items, hf_kwargs)  # type: ignore[misc]
        if "video_grid_thw" in processed:
            processed[REQUEST_KWARG] = torch.full((len(processed["video_grid_thw"]),), keep)
        return processed

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))  # type: ignore[misc]
        if REQUEST_KWARG in hf_inputs:
            fields[REQUEST_KWARG] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, Any],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)  # type: ignore[misc]
        merge_size = self.info.get_hf_config().vision_config.spatial_merge_size  # type: ignore[attr-defined]

        def merged_video(item_idx: int) -> Any:
            item = out_mm_kwargs["video"][item_idx]
            grid_thw = tuple(int(x) for x in item["video_grid_thw"].data)
            kept = merged_count(tokens_per_step(grid_thw, merge_size), float(item[REQUEST_KWARG].data))
            return self._merged_video_replacement(item, grid_thw[0], kept)

        return [dataclasses.replace(update, replacement=merged_video) if update.modality == "video" else update
                for update in updates]

    def _merged_video_replacement(self, item: Any, steps: int, kept: int) -> Any:
        raise NotImplementedError


class AIMQwen2_5_VLMultiModalProcessor(_AIMProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    def _merged_video_replacement(self, item: Any, steps: int, kept: int) -> list[int]:
        """One run of `steps * kept` video tokens."""
        return [self.info.get_hf_config().video_token_id] * (steps * kept)


class AIMQwen3VLMultiModalProcessor(_AIMProcessorMixin, Qwen3VLMultiModalProcessor):
    def _merged_video_replacement(self, item: Any, steps: int, kept: int) -> Any:
        """Each step's timestamp, vision start, `kept` video tokens, vision end. The model fills the whole run
        (the timestamps' text embeddings too), as under vLLM's own pruning, so all of it is marked for embeddings."""
        config = self.info.get_hf_config()
        return Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=[kept] * steps, timestamps=item["timestamps"].data, tokenizer=self.info.get_tokenizer(),
            vision_start_token_id=config.vision_start_token_id, vision_end_token_id=config.vision_end_token_id,
            video_token_id=config.video_token_id, select_token_id=False)


class _AIMModelMixin:
    """Turns vLLM's pruning path on (embeddings carry their positions; the runner recomputes the prompt's) and
    reads each video's `keep` before the videos are encoded."""

    aim_merging = True

    def embed_multimodal(self, **kwargs: object) -> Any:
        keep = kwargs.pop(REQUEST_KWARG, None)
        self._aim_keep = None if keep is None else [float(k) for k in keep]  # type: ignore[union-attr]
        return super().embed_multimodal(**kwargs)  # type: ignore[misc]

    def _video_keep(self, video_idx: int) -> float:
        if self._aim_keep is None:  # embeddings handed in without going through the processor's video path
            return default_keep() or 1.0
        return self._aim_keep[video_idx]


@MULTIMODAL_REGISTRY.register_processor(AIMQwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class AIMQwen2_5_VLForConditionalGeneration(_AIMModelMixin, Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.is_multimodal_pruning_enabled = True
        self._aim_keep: list[float] | None = None

    def _postprocess_video_embeds_evs(self, video_embeds_split: tuple[torch.Tensor, ...],
                                      video_input: Any) -> tuple[torch.Tensor, ...]:
        """Each video's `[steps * n, dim]` tokens -> `[steps * kept, dim + 4]`: merged tokens, then (time, row,
        column) of their representatives and the unmerged video's span (where the text after it starts)."""
        merge_size = self.visual.spatial_merge_size
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        seconds = video_input.get("second_per_grid_ts")
        out = []
        for idx, (embeds, grid) in enumerate(zip(video_embeds_split, video_input["video_grid_thw"].tolist())):
            merged = merge_video(embeds, tuple(grid), merge_size, self._video_keep(idx))
            # vLLM's unpruned placement (float seconds), not EVS's (`.long()` zeroes time above 2 fps)
            scale = (1.0 if seconds is None else float(seconds[idx])) * tokens_per_second
            positions = qwen2_5_video_positions(tuple(grid), merge_size, scale)
            span = (positions.max() + 1).expand(len(merged.kept_index), 1)
            extra = torch.cat([positions[merged.kept_index], span], dim=1).to(embeds.device, embeds.dtype)
            out.append(torch.cat([merged.embeds, extra], dim=1))
        return tuple(out)


@MULTIMODAL_REGISTRY.register_processor(AIMQwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class AIMQwen3VLForConditionalGeneration(_AIMModelMixin, Qwen3VLForConditionalGeneration):
    def _init_video_pruning(self, multimodal_config: Any) -> None:
        super()._init_video_pruning(multimodal_config)
        self.is_multimodal_pruning_enabled = True
        self._aim_keep = None

    def _postprocess_video_embeds_evs(self, video_embeds_split: tuple[torch.Tensor, ...],
                                      video_input: Any) -> tuple[torch.Tensor, ...]:
        """Each video's `[steps * n, dim * (1 + deepstack levels)]` tokens -> the embeddings of its whole prompt run
        (timestamps and vision start/end included) with 5 position channels, built by vLLM's own code from the
        merged tokens; the deepstack features are averaged over the same clusters as the tokens."""
        merge_size = self.visual.spatial_merge_size
        out = []
        for idx, (embeds, grid) in enumerate(zip(video_embeds_split, video_input["video_grid_thw"].tolist())):
            merged = merge_video(embeds, tuple(grid), merge_size, self._video_keep(idx), main_dim=self.visual_dim)
            out.append(self._create_final_video_embeddings(
                video_embeddings=merged.embeds, num_tokens_per_frame=[merged.kept_per_step] * grid[0],
                timestamps=video_input.timestamps[idx], video_grid_thw=grid,
                # vLLM picks the kept tokens' positions with this index: the representatives', in merged order
                retention_mask=merged.kept_index.to(embeds.device)))
            # vLLM's recompute looks for the run's start by its first timestamp when channel 4 flags video tokens,
            # which misses by the outer vision start that transformers>=5.10 processors keep; unflagged, it starts
            # the run right after that outer vision start, where it is. (Channel 4 is read for nothing else.)
            out[-1][:, -1] = 0
        return tuple(out)
