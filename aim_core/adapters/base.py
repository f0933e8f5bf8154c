"""What a model family must provide for AIM: its visual tokens, its prompt, its decoder, and generate's inputs."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin
from transformers.video_utils import VideoMetadata

from ..flops import VisionShape
from ..merge import MergeResult
from ..packed_vision_patch import PackedVisionTokenMerger
from ..vision_patch import VisionTokenMerger


@dataclass
class VideoEncoding:
    """A video (or an image) run through the vision model once; everything the merge and the prompt need.

    Attributes:
        tokens: `[steps, n, dim]` visual tokens of each step, as the LLM would see them, in raster order. A step is
            what merging works on: a frame (LLaVA-OneVision), a temporal patch of 2 frames (Qwen), an image tile.
        grid: `(rows, cols)` of the `n` tokens of a step, for drawing them over its frames.
        suffix: `[s, dim]` visual tokens after the frames that are never merged (LLaVA-OneVision's image_newline).
        extras: family-specific bookkeeping (e.g. Qwen's `video_grid_thw`).
        is_image: whether this is a single image rather than a video.
        frames_per_step: frames behind each step (Qwen's temporal patches hold 2).
        views: uint8 `[steps, H, W, 3]`, what each step covers when it is not the input frames (the tiles that
            LLaVA-OneVision cuts an image into), for drawing.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    suffix: torch.Tensor
    extras: dict[str, Any]
    is_image: bool = False
    frames_per_step: int = 1
    views: np.ndarray | None = None


@dataclass(frozen=True)
class VisualLayout:
    """How a video of a given length and size reaches the LLM, known before the vision model runs (for estimates).

    Attributes:
        steps: rows of `VideoEncoding.tokens`.
        tokens_per_step: visual tokens of a step before merging.
        unmerged: visual tokens that merging leaves alone (LLaVA-OneVision's newline).
        text_tokens: every other token of the prompt.
    """

    steps: int
    tokens_per_step: int
    unmerged: int
    text_tokens: int


@dataclass
class Prompt:
    """A tokenized prompt and where its visual placeholders are.

    Attributes:
        input_ids: `[1, length]`.
        visual_positions: `[num_visual]` ascending positions of the visual placeholders: one run, or several when
            text comes between them (Qwen3-VL puts a timestamp before each temporal step).
    """

    input_ids: torch.Tensor
    visual_positions: torch.Tensor

    @classmethod
    def with_run(cls, input_ids: torch.Tensor, visual_start: int, num_visual: int) -> Prompt:
        """A prompt whose visual placeholders are the run `[visual_start, visual_start + num_visual)`."""
        return cls(input_ids, torch.arange(visual_start, visual_start + num_visual))

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_visual(self) -> int:
        return len(self.visual_positions)

    @property
    def visual_start(self) -> int:
        """Position of the first visual placeholder."""
        return int(self.visual_positions[0])


class VideoLLMAdapter(ABC):
    """Binds AIM to one model family's stock `transformers` classes, without changing their code."""

    # The earliest decoder layer allowed to drop visual tokens (Qwen3-VL adds features to them in its first layers).
    first_prunable_layer: int = 1

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        self.model = model
        self.processor = processor

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The LLM's decoder layers, where pruning hooks go (`model.model.language_model.layers` in the stock
        LLaVA-OneVision and Qwen-VL classes)."""
        return self.model.model.language_model.layers

    @property
    def vision_layers(self) -> nn.ModuleList:
        """The vision tower's transformer blocks, in order (where vision-side hooks go: token merging inside the
        tower, cancellation between blocks)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its vision tower's blocks")

    @property
    @abstractmethod
    def vision_shape(self) -> VisionShape:
        """The vision tower's and projector's sizes, for their FLOPs."""

    @abstractmethod
    def vision_patches_per_step(self, tokens_per_step: int) -> int:
        """Patches the vision tower processes for a step whose tokens reach the LLM as `tokens_per_step` tokens."""

    @property
    def vision_output_layer(self) -> int | None:
        """Index of the vision block whose output the model reads, where patch tokens can be merged inside the tower
        (by `vision_token_merger`); None where they cannot."""
        return None

    def vision_token_merger(self, keep: float) -> VisionTokenMerger | PackedVisionTokenMerger:
        """Hooks that merge each step's patches inside the vision tower down to `keep` of them, for the forwards run
        inside `with` (what they did in its `record`). By default `aim_core.vision_patch`'s, for blocks that take
        `[frames, patches, dim]`."""
        return VisionTokenMerger(self.vision_layers, keep, self.vision_output_layer or 0)

    def frame_size(self, height: int, width: int, num_frames: int) -> tuple[int, int]:
        """`(height, width)` to decode `num_frames` frames of an upright `height x width` video at: the smallest size,
        aspect ratio kept and never larger than the source, from which the processor keeps every detail it would
        keep from the source. By default the source's size."""
        return height, width

    @property
    def text_config(self) -> PretrainedConfig:
        """The LLM's config, for its FLOPs."""
        return self.model.config.text_config

    @abstractmethod
    def encode_video(self, frames: np.ndarray, metadata: VideoMetadata | None = None) -> VideoEncoding:
        """Run uint8 `[T, H, W, 3]` frames through the model's processor, vision tower and projector.

        `metadata` says when the frames were taken, for models that tell the LLM (Qwen2.5-VL, Qwen3-VL); without it
        the processor's default is used.
        """

    @abstractmethod
    def encode_image(self, image: np.ndarray) -> VideoEncoding:
        """Run a uint8 `[H, W, 3]` image through the model's processor, vision tower and projector."""

    @abstractmethod
    def layout(self, question: str, num_frames: int, height: int, width: int,
               metadata: VideoMetadata | None = None) -> VisualLayout:
        """How `num_frames` frames of this size and the question reach the LLM, before any reduction.

        `metadata` says when the frames are taken, as for `encode_video` (Qwen3-VL writes the times in the prompt).
        """

    @abstractmethod
    def prompt(self, question: str, encoding: VideoEncoding, num_visual: int) -> Prompt:
        """The chat prompt for one user turn (the video or image, then the question) with `num_visual` placeholders."""

    @abstractmethod
    def generate_inputs(self, prompt: Prompt, encoding: VideoEncoding, merged: MergeResult) -> dict[str, Any]:
        """Keyword arguments for `model.generate` that feed the merged visual tokens in place of the video."""

    def visual_order(self, encoding: VideoEncoding, merged: MergeResult) -> torch.Tensor:
        """`[num_visual]`: for each visual token of the prompt, in order, the merged token it carries, numbered step
        by step (`step * kept + j`); tokens that are never merged (LLaVA-OneVision's newlines) are numbered after.

        By default the steps' merged tokens come in order, then the suffix.
        """
        return torch.arange(merged.tokens.shape[0] * merged.tokens.shape[1] + len(encoding.suffix))

    def unmerged_visual_count(self, encoding: VideoEncoding) -> int:
        """Visual tokens of the prompt with nothing merged: by default every step's tokens, then the suffix."""
        return encoding.tokens.shape[0] * encoding.tokens.shape[1] + len(encoding.suffix)

    def project_qk(self, layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   query_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Rotated queries and keys of a LLaMA-style decoder layer (Qwen2/2.5/3, LLaMA, Mistral), for ranking.

        Runs the layer's own input norm, q/k projections, optional q/k norms and rotary function, on the query
        rows that are asked for and on every key row. Shapes as in `aim_core.patch.QKProjector`.
        """
        attention = layer.self_attn
        head_dim = attention.head_dim
        normed = layer.input_layernorm(hidden)
        query_input = normed if query_rows is None else normed[query_rows]
        query = attention.q_proj(query_input).view(len(query_input), -1, head_dim)
        key = attention.k_proj(normed).view(len(normed), -1, head_dim)
        if hasattr(attention, "q_norm"):
            query, key = attention.q_norm(query), attention.k_norm(key)
        apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        query_cos, query_sin = (cos, sin) if query_rows is None else (cos[query_rows], sin[query_rows])
        query = apply_rotary(query.transpose(0, 1)[None], query.transpose(0, 1)[None], query_cos[None],
                             query_sin[None])[0][0]
        key = apply_rotary(key.transpose(0, 1)[None], key.transpose(0, 1)[None], cos[None], sin[None])[1][0]
        key = key.repeat_interleave(query.shape[0] // key.shape[0], dim=0)
        return query, key, attention.scaling
