"""AIM on stock Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration`).

The vision tower sees a video 2 frames at a time (a temporal patch) and its patch merger folds 2x2 patches into one
LLM token, so a step of merging is a temporal patch (an image is one step), its tokens the `(h/2, w/2)` grid in
raster order. The LLM places visual tokens by 3-D rotary positions (M-RoPE: time, row, column), which the model's
own `get_rope_index` computes from the prompt and the grid. To merge before the LLM, the positions of the unmerged
prompt are computed first; each merged token then stands at the place of one member of its cluster (the one nearest
the cluster's centre), and the LLM gets these as `position_ids`, which `generate` continues for new tokens, so
decoding goes on from the end of the unmerged prompt. Inside the LLM the pruner slices the rotary tables the model
computed, so pruning needs nothing Qwen-specific.

Qwen3-VL adds "deepstack" features of inner vision layers to the hidden states of the visual tokens after each of its
first decoder layers: they are merged with the same clusters (each cluster's mean, as the merged tokens are), and no
layer drops visual tokens before all of them are added. Its prompt puts a timestamp before each temporal step, so
its visual tokens come in several runs.

Video frames are sized as the reference implementation, qwen-vl-utils, sizes a video's frames (`fetch_video` and
`smart_resize` in `qwen-vl-utils/src/qwen_vl_utils/vision_process.py`, QwenLM/Qwen3-VL at commit 96588727e44c; the
same rule as in QwenLM/Qwen2.5-VL at f0af2996e843, where the factor is always 28): each frame keeps its aspect ratio
and gets between 128 and 768 tokens' worth of pixels, fewer when the whole video would take more than 90% of a 128K
context. The stock processors size frames by the checkpoint's bounds, which are wide (their `cap_pixels_per_frame`
option shares those out, not the reference's), so the same video could cost twice the tokens of the model card's
recipe (19,136 instead of 11,520 for 32 frames of 1280x720 on Qwen2.5-VL). The processor is given the reference's
bounds instead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from transformers import Qwen3VLVideoProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
from transformers.video_utils import VideoMetadata
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from ..errors import VideoError
from ..flops import VisionShape
from ..merge import MergeResult, cluster_means, representatives
from ..packed_vision_patch import PackedLayout, PackedVisionTokenMerger
from .base import Prompt, VideoEncoding, VideoLLMAdapter, VisualLayout

# qwen-vl-utils' video sizing constants (see the module's docstring), in tokens of factor x factor pixels, where the
# factor is the patch size times the spatial merge size (28 for Qwen2-VL and Qwen2.5-VL, 32 for Qwen3-VL).
VIDEO_MIN_TOKENS = 128  # per frame
VIDEO_MAX_TOKENS = 768  # per frame
CONTEXT_TOKENS = 128000  # the model's sequence length (its MODEL_SEQ_LEN) ...
VIDEO_SHARE = 0.9  # ... of which a whole video may take this share
FRAME_FACTOR = 2  # a video's frame count is rounded up to a multiple of this (one temporal patch)
MAX_ASPECT_RATIO = 200


def reference_pixel_bounds(num_frames: int, factor: int) -> tuple[int, float]:
    """`(min_pixels, max_pixels)` of each frame of a `num_frames`-frame video, as qwen-vl-utils bounds them: 128 to
    768 tokens' worth, or an even share of the whole video's budget when that is less (past 300 frames), but never
    under 5% above the minimum."""
    frames = math.ceil(num_frames / FRAME_FACTOR) * FRAME_FACTOR
    min_pixels = VIDEO_MIN_TOKENS * factor * factor
    share = CONTEXT_TOKENS * factor * factor * VIDEO_SHARE / frames * FRAME_FACTOR
    return min_pixels, max(min(VIDEO_MAX_TOKENS * factor * factor, share), int(min_pixels * 1.05))


def reference_frame_size(height: int, width: int, num_frames: int, factor: int) -> tuple[int, int]:
    """`(height, width)` qwen-vl-utils resizes each frame of a `num_frames`-frame `height x width` video to:
    multiples of `factor`, as near the aspect ratio as they can be, with the pixels `reference_pixel_bounds` allows.

    Raises VideoError for a frame more than 200 times longer than it is wide, or the reverse."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VideoError(f"a {width}x{height} video is too narrow: its sides may differ up to {MAX_ASPECT_RATIO}x")
    min_pixels, max_pixels = reference_pixel_bounds(num_frames, factor)
    rows, cols = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if rows * cols > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        # at least one factor, as transformers' own resize has it (qwen-vl-utils would give 0 and fail)
        rows = max(factor, math.floor(height / scale / factor) * factor)
        cols = max(factor, math.floor(width / scale / factor) * factor)
    elif rows * cols < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        rows, cols = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return rows, cols


class QwenVLAdapter(VideoLLMAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

    @property
    def vision_layers(self) -> torch.nn.ModuleList:
        """The vision transformer's blocks (`visual.blocks`)."""
        return self.model.model.visual.blocks

    @property
    def vision_shape(self) -> VisionShape:
        vision, visual = self.model.config.vision_config, self.model.model.visual
        window = getattr(vision, "window_size", None)  # Qwen2.5-VL: blocks attend within windows of this many pixels
        return VisionShape.from_modules(
            getattr(vision, "embed_dim", None) or vision.hidden_size, vision.num_heads, visual.patch_embed,
            self.vision_layers, [visual.merger, *getattr(visual, "deepstack_merger_list", [])],
            patches_per_projected_token=vision.spatial_merge_size**2,
            attention_window=None if window is None else (window // vision.patch_size) ** 2,
            full_attention_layers=getattr(vision, "fullatt_block_indexes", ()))

    def vision_patches_per_step(self, tokens_per_step: int) -> int:
        """The patch merger folds spatial_merge_size**2 patches into each token."""
        return tokens_per_step * self.model.config.vision_config.spatial_merge_size**2

    @property
    def vision_output_layer(self) -> int:
        """The last block: the patch merger reads its output (Qwen3-VL's deepstack mergers read inner blocks' too)."""
        return len(self.vision_layers) - 1

    def vision_token_merger(self, keep: float) -> PackedVisionTokenMerger:
        """The blocks take one packed sequence: merging stays within each step, or each window of Qwen2.5-VL's
        windowed blocks, and the patch merger and deepstack mergers get the whole grid back."""
        visual = self.model.model.visual
        readers = [visual.merger, *getattr(visual, "deepstack_merger_list", [])]
        return PackedVisionTokenMerger(visual, self.vision_layers, readers, keep, self._packed_layout)

    def _packed_layout(self, grid_thw: torch.Tensor) -> PackedLayout:
        """How the tower lays out the rows of one image or video of `grid_thw` `[[steps, rows, cols]]` patches: each
        step's patches 2x2 block by 2x2 block (`get_vision_position_ids`) and, in Qwen2.5-VL, window by window
        (`get_vision_window_index`), the windows being the smallest attention segments where any block is windowed."""
        if len(grid_thw) != 1:
            raise NotImplementedError("merging inside the vision tower takes one image or video at a time")
        vision = self.model.config.vision_config
        merge = vision.spatial_merge_size
        steps, rows, cols = grid_thw[0].tolist()
        one_step = torch.tensor([[1, rows, cols]])
        place = get_vision_position_ids(one_step, merge)  # [patches, 2]: (row, col) of each row of a step
        units = [rows * cols]
        blocks = range(len(self.vision_layers))
        windowed = set(blocks) - set(getattr(vision, "fullatt_block_indexes", blocks))
        if windowed:
            window_index, window_bounds = get_vision_window_index(one_step, merge, vision.window_size,
                                                                  vision.patch_size)
            place = place.view(-1, merge * merge, 2)[window_index].flatten(0, 1)
            units = window_bounds.diff().tolist()
        return PackedLayout(units * steps, steps, (rows, cols), place[:, 0] * cols + place[:, 1])

    @property
    def first_prunable_layer(self) -> int:
        """After the deepstack layers: until then the model adds features at every visual position."""
        return max(1, len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", ())))

    @property
    def _factor(self) -> int:
        """Side in pixels of the square behind one LLM token (patch size times merge size)."""
        return self.processor.video_processor.patch_size * self.processor.video_processor.merge_size

    def frame_size(self, height: int, width: int, num_frames: int) -> tuple[int, int]:
        """The size qwen-vl-utils resizes the frames to (`reference_frame_size`), which the processor then keeps;
        the source's size when that would be larger than the source in a side (the processor resizes then)."""
        rows, cols = reference_frame_size(height, width, num_frames, self._factor)
        min_pixels, max_pixels = reference_pixel_bounds(num_frames, self._factor)
        kept_as_is = min_pixels <= rows * cols <= max_pixels
        return (rows, cols) if kept_as_is and rows <= height and cols <= width else (height, width)

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray, metadata: VideoMetadata | None = None) -> VideoEncoding:
        """Frames of any size are resized by the stock processor as qwen-vl-utils resizes them
        (`reference_frame_size`): it is given the reference's pixel bounds for this many frames."""
        video_processor = self.processor.video_processor
        temporal = video_processor.temporal_patch_size
        # Complete the last temporal patch by repeating the last frame, as the processor would: the reference bounds
        # the frames by their padded count, and Qwen3-VL's processor bounds all the frames' pixels together.
        if pad := -len(frames) % temporal:
            frames = np.concatenate([frames, frames[-1:].repeat(pad, axis=0)])
        min_pixels, max_pixels = reference_pixel_bounds(len(frames), self._factor)
        if isinstance(video_processor, Qwen3VLVideoProcessor):
            min_pixels, max_pixels = min_pixels * len(frames), max_pixels * len(frames)
        inputs = video_processor(videos=[frames], video_metadata=None if metadata is None else [metadata],
                                 size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                 cap_pixels_per_frame=False, do_sample_frames=False, return_metadata=True,
                                 return_tensors="pt")
        grid_thw = inputs["video_grid_thw"]
        features = self.model.model.get_video_features(
            inputs["pixel_values_videos"].to(self.model.device), grid_thw.to(self.model.device), return_dict=True)
        metadata = inputs["video_metadata"][0]
        extras = {"grid_thw": grid_thw, "metadata": metadata}
        if "second_per_grid_ts" in self.processor.model_input_names:  # Qwen2.5-VL spaces steps by their duration
            extras["second_per_grid_ts"] = torch.tensor([temporal / metadata.sampled_fps])
        return self._encoding(features, extras, is_image=False, frames_per_step=temporal)

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray) -> VideoEncoding:
        inputs = self.processor.image_processor(images=[image], return_tensors="pt")
        grid_thw = inputs["image_grid_thw"]
        features = self.model.model.get_image_features(
            inputs["pixel_values"].to(self.model.device), grid_thw.to(self.model.device), return_dict=True)
        return self._encoding(features, {"grid_thw": grid_thw}, is_image=True, frames_per_step=1)

    def _encoding(self, features: BaseModelOutputWithPooling, extras: dict[str, Any], is_image: bool,
                  frames_per_step: int) -> VideoEncoding:
        steps, height, width = extras["grid_thw"][0].tolist()
        merge = self.model.config.vision_config.spatial_merge_size
        grid = (height // merge, width // merge)
        tokens = features.pooler_output[0].view(steps, grid[0] * grid[1], -1)
        deepstack = getattr(features, "deepstack_features", None) or []
        extras["deepstack"] = [layer[0].view_as(tokens) for layer in deepstack]
        return VideoEncoding(tokens=tokens, grid=grid, suffix=tokens.new_zeros(0, tokens.shape[-1]), extras=extras,
                             is_image=is_image, frames_per_step=frames_per_step)

    def layout(self, question: str, num_frames: int, height: int, width: int,
               metadata: VideoMetadata | None = None) -> VisualLayout:
        """Qwen3-VL writes each step's time in the prompt, from `metadata`; without it the frames are taken 1 s
        apart (as `SampledFrames.from_array` takes them by default)."""
        video_processor = self.processor.video_processor
        rows, cols = reference_frame_size(height, width, num_frames, self._factor)
        steps = math.ceil(num_frames / video_processor.temporal_patch_size)
        if metadata is None:
            metadata = VideoMetadata(total_num_frames=num_frames, fps=1.0, frames_indices=list(range(num_frames)))
        # The placeholders are special tokens, so the text around them tokenizes the same however many there are:
        # the prompt is written with one a step, which keeps the estimate fast for long videos.
        one_token = torch.tensor([[steps, video_processor.merge_size, video_processor.merge_size]])
        ids = self._unmerged_ids(question, False, one_token, metadata)
        return VisualLayout(steps, (rows // self._factor) * (cols // self._factor), 0, len(ids) - steps)

    def prompt(self, question: str, encoding: VideoEncoding, num_visual: int) -> Prompt:
        """The stock prompt with each step's run of placeholders cut to `num_visual / steps`."""
        steps, n = encoding.tokens.shape[:2]
        ids = self._unmerged_ids(question, encoding.is_image, encoding.extras["grid_thw"],
                                 encoding.extras.get("metadata"))
        is_visual = ids == self._token_id(encoding)
        keep = ~is_visual | ((is_visual.cumsum(0) - 1) % n < num_visual // steps)
        ids = ids[keep]
        return Prompt(ids[None], (ids == self._token_id(encoding)).nonzero()[:, 0])

    def _unmerged_ids(self, question: str, is_image: bool, grid_thw: torch.Tensor,
                      metadata: VideoMetadata | None) -> torch.Tensor:
        """`[length]` token ids of the prompt as the stock processor writes it for this image or video."""
        modality = _modality(is_image)
        conversation = [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        if is_image:
            placeholder = self.processor.replace_image_token({"image_grid_thw": grid_thw}, image_idx=0)
        else:
            # a copy: Qwen3-VL's processor pads the frame indices it is given to whole temporal steps in place
            metadata = dataclasses.replace(metadata, frames_indices=list(metadata.frames_indices))
            placeholder = self.processor.replace_video_token(
                {"video_grid_thw": grid_thw, "video_metadata": [metadata]}, video_idx=0)
        text = text.replace(getattr(self.processor, f"{modality}_token"), placeholder, 1)
        return self.processor.tokenizer(text, return_tensors="pt")["input_ids"][0]

    def _token_id(self, encoding: VideoEncoding) -> int:
        return self.model.config.image_token_id if encoding.is_image else self.model.config.video_token_id

    def generate_inputs(self, prompt: Prompt, encoding: VideoEncoding, merged: MergeResult) -> dict[str, Any]:
        input_ids = prompt.input_ids.to(self.model.device)
        features = {"pooler_output": (merged.tokens.flatten(0, 1),)}
        if encoding.extras["deepstack"]:
            features["deepstack_features"] = [(cluster_mean(layer, merged).flatten(0, 1),)
                                              for layer in encoding.extras["deepstack"]]
        output_class = BaseModelOutputWithDeepstackFeatures if "deepstack_features" in features else \
            BaseModelOutputWithPooling
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": self.position_ids(prompt, encoding, merged).to(self.model.device),
            "mm_encoder_outputs": {_modality(encoding.is_image): output_class(**features)},
        }

    def position_ids(self, prompt: Prompt, encoding: VideoEncoding, merged: MergeResult) -> torch.Tensor:
        """`[4, 1, length]` position ids of the merged prompt: its own positions (which the model's attention mask
        reads), then the (time, row, column) rotary positions each token has in the unmerged prompt.

        Also sets the model's `rope_deltas` so that a token after the prompt sits where it would after the unmerged
        prompt, should a forward continue the cache without `position_ids` (`generate` continues the ones given).
        """
        steps, n = encoding.tokens.shape[:2]
        kept = merged.tokens.shape[1]
        ids, length = prompt.input_ids[0], prompt.length
        is_visual = torch.zeros(length, dtype=torch.bool)
        is_visual[prompt.visual_positions] = True
        visual_before = is_visual.cumsum(0) - is_visual.long()
        # Where each token sits in the unmerged prompt: every step before it had n placeholders, not `kept`;
        # a merged token takes the place of its representative in its step.
        column = torch.arange(length) + visual_before // kept * (n - kept)
        step, index = visual_before[is_visual] // kept, visual_before[is_visual] % kept
        column[is_visual] += representatives(merged.source.cpu(), encoding.grid, kept)[step, index] - index
        unmerged = torch.full((length + steps * (n - kept),), self._token_id(encoding), dtype=ids.dtype)
        unmerged[column[~is_visual]] = ids[~is_visual]

        token_type = torch.where(unmerged == self._token_id(encoding), 1 if encoding.is_image else 2, 0)
        grids = {f"{_modality(encoding.is_image)}_grid_thw": encoding.extras["grid_thw"]}
        if "second_per_grid_ts" in encoding.extras:
            grids["second_per_grid_ts"] = encoding.extras["second_per_grid_ts"]
        rotary, deltas = self.model.model.get_rope_index(unmerged[None], mm_token_type_ids=token_type[None], **grids)
        self.model.model.rope_deltas = (deltas + len(unmerged) - length).to(self.model.device)
        return torch.cat([torch.arange(length)[None, None], rotary[:, :, column]])


def _modality(is_image: bool) -> str:
    return "image" if is_image else "video"


def cluster_mean(features: torch.Tensor, merged: MergeResult) -> torch.Tensor:
    """`[steps, kept, dim]` mean of `[steps, n, dim]` per-token features over each merged token's cluster, which is
    what merging made of the tokens themselves (its size-weighted means compose to the plain mean)."""
    return cluster_means(features, merged.source.to(features.device), merged.tokens.shape[1])
