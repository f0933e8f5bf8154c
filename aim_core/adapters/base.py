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

from ..merge import MergeResult
from ..patch import QKProjector


@dataclass
class VideoEncoding:
    """A video run through the vision model once; everything the merge and the prompt need.

    Attributes:
        tokens: `[frames, n, dim]` visual tokens of each frame, as the LLM would see them, in raster order.
        grid: `(rows, cols)` of the `n` tokens of a frame, for drawing them over the frame.
        suffix: `[s, dim]` visual tokens after the frames that are never merged (LLaVA-OneVision's image_newline).
        extras: family-specific bookkeeping (e.g. Qwen's `video_grid_thw`).
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    suffix: torch.Tensor
    extras: dict[str, Any]


@dataclass
class Prompt:
    """A tokenized prompt with its run of visual placeholders.

    Attributes:
        input_ids: `[1, length]`.
        visual_start: position of the first visual placeholder.
        num_visual: length of the placeholder run.
    """

    input_ids: torch.Tensor
    visual_start: int
    num_visual: int

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


class VideoLLMAdapter(ABC):
    """Binds AIM to one model family's stock `transformers` classes, without changing their code."""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        self.model = model
        self.processor = processor

    @property
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The LLM's decoder layers, where pruning hooks go."""

    @property
    @abstractmethod
    def text_config(self) -> PretrainedConfig:
        """The LLM's config, for its FLOPs."""

    @abstractmethod
    def encode_video(self, frames: np.ndarray) -> VideoEncoding:
        """Run uint8 `[T, H, W, 3]` frames through the model's processor, vision tower and projector."""

    @abstractmethod
    def visual_tokens_per_frame(self, height: int, width: int) -> tuple[int, int]:
        """`(tokens per frame, visual tokens after the frames that are never merged)` for frames of this size."""

    @abstractmethod
    def prompt(self, question: str, encoding: VideoEncoding | None, num_visual: int) -> Prompt:
        """The chat prompt for one user turn (the video, then the question) with `num_visual` placeholders."""

    @abstractmethod
    def generate_inputs(self, prompt: Prompt, encoding: VideoEncoding, merged: MergeResult) -> dict[str, Any]:
        """Keyword arguments for `model.generate` that feed the merged visual tokens in place of the video."""

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
