"""AIM on stock `LlavaOnevisionForConditionalGeneration` (the llava-hf LLaVA-OneVision and LLaVA-Video checkpoints).

The video's tokens come from the model's own `get_video_features` (SigLIP tower -> projector -> 2x bilinear
pooling -> one trailing `image_newline`); the merged tokens go back in through `generate(mm_encoder_outputs=...)`
with the run of `<video>` placeholders shortened to match, which is how the stock forward accepts them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..merge import MergeResult
from .base import Prompt, VideoEncoding, VideoLLMAdapter


class LlavaOnevisionAdapter(VideoLLMAdapter):
    model_types = ("llava_onevision",)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    @property
    def text_config(self) -> PretrainedConfig:
        return self.model.config.text_config

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray) -> VideoEncoding:
        pixels = self.processor.video_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"]
        pixels = pixels.to(self.model.device, self.model.dtype)
        features = self.model.model.get_video_features(pixels, return_dict=True).pooler_output[0]
        num_frames = pixels.shape[1]
        frame_tokens, newline = features[:-1], features[-1:]
        side = math.isqrt(frame_tokens.shape[0] // num_frames)
        return VideoEncoding(
            tokens=frame_tokens.view(num_frames, side * side, -1),
            grid=(side, side),
            suffix=newline,
            extras={},
        )

    def visual_tokens_per_frame(self, height: int, width: int) -> tuple[int, int]:
        vision = self.model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)  # apply_pooling halves each side
        return side * side, 1

    def prompt(self, question: str, encoding: VideoEncoding | None, num_visual: int) -> Prompt:
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        ids = self.processor.tokenizer(text, return_tensors="pt")["input_ids"][0]
        video_token = self.model.config.video_token_id
        (placeholder,) = (ids == video_token).nonzero()[:, 0].tolist()
        run = torch.full((num_visual,), video_token, dtype=ids.dtype)
        input_ids = torch.cat([ids[:placeholder], run, ids[placeholder + 1 :]])[None]
        return Prompt(input_ids=input_ids, visual_start=placeholder, num_visual=num_visual)

    def generate_inputs(self, prompt: Prompt, encoding: VideoEncoding, merged: MergeResult) -> dict[str, Any]:
        visual = torch.cat([merged.tokens.flatten(0, 1), encoding.suffix])[None]
        input_ids = prompt.input_ids.to(self.model.device)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=visual)},
        }
