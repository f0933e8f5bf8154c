"""AIM on stock `LlavaOnevisionForConditionalGeneration` (the llava-hf LLaVA-OneVision and LLaVA-Video checkpoints).

The video's tokens come from the model's own `get_video_features` (SigLIP tower -> projector -> 2x bilinear
pooling -> one trailing `image_newline`); the merged tokens go back in through `generate(mm_encoder_outputs=...)`
with the run of `<video>` placeholders shortened to match, which is how the stock forward accepts them. Each merged
token keeps the rotary position of one member of its cluster (the one nearest its centre), and the text after the
video keeps its unmerged positions, as on Qwen (`aim_core.adapters.qwen_vl`). On demo-v7, under `AIMConfig()`, "which
way" questions (72, seed 0) answered 39% with positions compacted to the merged run, 61% with these (76% unreduced).
A merged video never spans more positions than `position_frames` unmerged frames, unless its merged tokens alone
need more (`position_span`): past that, places are scaled down into the span (see `POSITION_FRAMES`).

An image is cut by the processor into a base tile (the whole image, squeezed) and high-resolution tiles; the model
lays their tokens out as the base tile, then the stitched tiles with the letterbox padding cut off (and the grid
shrunk by interpolation when it exceeds 9 tiles), an `image_newline` ending each row. Merging works inside each
tile; the merged image goes through the model's own layout, each cell standing for its cluster, and a cluster
keeps only its first cell (in the model's order); the newlines are never merged, so with nothing merged the image
is laid out exactly as the stock model does it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape
from transformers.video_utils import VideoMetadata

from ..flops import VisionShape
from ..merge import MergeResult, representatives
from .base import Prompt, VideoEncoding, VideoLLMAdapter, VisualLayout

# LLaVA-OneVision was trained on videos of up to 32 frames of 196 tokens, the demo model's last stages on 16 to 32:
# positions beyond that span are ones the model never saw a video at. Kept places gain at 32 frames but lose past it.
# Demo-v8, seed-0 sweep questions, `AIMConfig()`: at 32 frames kept places 88.5% against 86.1% compacted to the merged
# run; on 128 frames (the sweep's long-video point, prefill budget) kept places 50.9%, compacted 64.4%, kept places
# scaled into 32 frames' span 65.0%, into 64 frames' 57.2%.
POSITION_FRAMES = 32


class LlavaOnevisionAdapter(VideoLLMAdapter):
    model_types = ("llava_onevision",)

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        super().__init__(model, processor)
        self.position_frames = POSITION_FRAMES  # the most unmerged frames of positions a merged video spans
        # `VideoQA` asks for an image's visual order, then for its inputs: both read the one layout of that pair.
        self._last_image_layout: tuple[VideoEncoding, MergeResult, tuple] | None = None

    @property
    def vision_layers(self) -> torch.nn.ModuleList:
        """SigLIP's encoder layers (`vision_tower.encoder.layers`)."""
        return self.model.model.vision_tower.encoder.layers

    @property
    def vision_shape(self) -> VisionShape:
        vision = self.model.config.vision_config
        return VisionShape.from_modules(vision.hidden_size, vision.num_attention_heads,
                                        self.model.model.vision_tower.embeddings, self.vision_layers,
                                        [self.model.model.multi_modal_projector])

    def vision_patches_per_step(self, tokens_per_step: int) -> int:
        """Every frame (or image tile) is one `image_size` square of patches, pooled 2x for a video's frames."""
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    @property
    def vision_output_layer(self) -> int:
        """The block whose output `vision_feature_layer` selects (hidden state k is block k - 1's output; the
        earliest one when several are selected)."""
        selected = self.model.config.vision_feature_layer
        selected = [selected] if isinstance(selected, int) else selected
        blocks = len(self.vision_layers)
        return min((layer if layer >= 0 else blocks + 1 + layer) - 1 for layer in selected)

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray, metadata: VideoMetadata | None = None) -> VideoEncoding:
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

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray) -> VideoEncoding:
        inputs = self.processor.image_processor(images=[image], return_tensors="pt")
        pixels = inputs["pixel_values"][0].to(self.model.device, self.model.dtype)  # [tiles, 3, size, size]
        tiles = []  # the projected tokens of each tile, which the model goes on to lay out
        hook = self.model.model.multi_modal_projector.register_forward_hook(lambda *args: tiles.append(args[-1]))
        try:
            self.model.model.get_image_features(pixels, inputs["image_sizes"])
        finally:
            hook.remove()
        side = self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size
        processor = self.processor.image_processor
        mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in (processor.image_mean,
                                                                                  processor.image_std))
        views = ((pixels.float().cpu() * std + mean) * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1)
        image_size = inputs["image_sizes"][0]
        packed_tokens = self._packed_tokens(tiles[0].shape[:2], side, image_size)
        return VideoEncoding(
            tokens=tiles[0],
            grid=(side, side),
            suffix=self.model.model.image_newline[None],
            extras={"image_size": image_size, "packed_tokens": packed_tokens},
            is_image=True,
            views=views.numpy(),
        )

    def frame_size(self, height: int, width: int, num_frames: int) -> tuple[int, int]:
        """The video processor squashes each frame to its `size` (384 x 384 in the hub checkpoints): decode at the
        smallest size, aspect kept, with both sides at least that, never above the source's."""
        processor = self.processor.video_processor
        target_height, target_width = processor.size.get("height"), processor.size.get("width")
        if not processor.do_resize or not target_height or not target_width:
            return height, width
        if target_height * width >= target_width * height:  # the height binds
            size = target_height, -(-width * target_height // height)
        else:
            size = -(-height * target_width // width), target_width
        return size if size[0] <= height and size[1] <= width else (height, width)

    def visual_tokens_per_frame(self, height: int, width: int) -> tuple[int, int]:
        vision = self.model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)  # apply_pooling halves each side
        return side * side, 1

    def layout(self, question: str, num_frames: int, height: int, width: int,
               metadata: VideoMetadata | None = None) -> VisualLayout:
        tokens_per_frame, unmerged = self.visual_tokens_per_frame(height, width)
        return VisualLayout(num_frames, tokens_per_frame, unmerged, self._prompt(question, "video", 0).length)

    def prompt(self, question: str, encoding: VideoEncoding | None, num_visual: int) -> Prompt:
        return self._prompt(question, "image" if encoding is not None and encoding.is_image else "video", num_visual)

    def _prompt(self, question: str, modality: str, num_visual: int) -> Prompt:
        conversation = [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        ids = self.processor.tokenizer(text, return_tensors="pt")["input_ids"][0]
        token = getattr(self.model.config, f"{modality}_token_id")
        (placeholder,) = (ids == token).nonzero()[:, 0].tolist()
        run = torch.full((num_visual,), token, dtype=ids.dtype)
        input_ids = torch.cat([ids[:placeholder], run, ids[placeholder + 1 :]])[None]
        return Prompt.with_run(input_ids, placeholder, num_visual)

    def generate_inputs(self, prompt: Prompt, encoding: VideoEncoding, merged: MergeResult) -> dict[str, Any]:
        input_ids = prompt.input_ids.to(self.model.device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        unmerged = self.unmerged_visual_count(encoding)
        if encoding.is_image:
            visual, _, places = self._image_layout(encoding, merged)
            features = {"image": BaseModelOutputWithPooling(pooler_output=[visual])}
        else:
            frames, n = encoding.tokens.shape[:2]
            visual = torch.cat([merged.tokens.flatten(0, 1), encoding.suffix])[None]
            features = {"video": BaseModelOutputWithPooling(pooler_output=visual)}
            in_frame = representatives(merged.source.cpu(), encoding.grid, merged.tokens.shape[1])
            frame_places = (torch.arange(frames)[:, None] * n + in_frame).flatten()
            places = torch.cat([frame_places, torch.arange(frames * n, unmerged)])
            span = position_span(unmerged, visual.shape[1], self.position_frames * n + len(encoding.suffix))
            places, unmerged = places * span // unmerged, span
        position_ids = merged_position_ids(prompt, places, unmerged).to(self.model.device)
        return {**inputs, "position_ids": position_ids, "mm_encoder_outputs": features}

    def visual_order(self, encoding: VideoEncoding, merged: MergeResult) -> torch.Tensor:
        if encoding.is_image:
            return self._image_layout(encoding, merged)[1]
        return super().visual_order(encoding, merged)

    def unmerged_visual_count(self, encoding: VideoEncoding) -> int:
        if encoding.is_image:
            return len(encoding.extras["packed_tokens"])
        return super().unmerged_visual_count(encoding)

    def _image_layout(self, encoding: VideoEncoding, merged: MergeResult
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The merged image as the model lays it out: `([num_visual, dim] tokens, [num_visual] visual order,
        [num_visual] place of each in the unmerged layout)`.

        Every original token stands in for its cluster (the merged token it went into) and the model's own
        `pack_image_features` lays the tiles out; a cluster then keeps only its first cell, and a token dropped
        before the LLM (`source` -1) none.
        """
        last = self._last_image_layout
        if last is not None and last[0] is encoding and last[1] is merged:
            return last[2]
        tiles, n, dim = encoding.tokens.shape
        kept = merged.tokens.shape[1]
        source = merged.source.to(encoding.tokens.device)
        spread = merged.tokens.gather(1, source.clamp(min=0)[..., None].expand(-1, -1, dim))
        features = self.model.model.pack_image_features(
            [spread], encoding.extras["image_size"][None], image_newline=encoding.suffix[0])[0][0]

        token = encoding.extras["packed_tokens"]
        token_source = source.flatten().cpu()[token.clamp(min=0)]
        cluster = token.clamp(min=0) // n * kept + token_source
        is_token = (token >= 0) & (token_source >= 0)
        position = torch.arange(len(token))
        first = torch.full((tiles * kept,), len(token)).scatter_reduce(0, cluster[is_token], position[is_token], "amin")
        is_newline = token < 0
        keep = is_newline | (is_token & (first[cluster.clamp(min=0)] == position))
        order = torch.where(is_newline, tiles * kept + is_newline.cumsum(0) - 1, cluster)
        layout = features[keep.to(features.device)], order[keep], position[keep]
        self._last_image_layout = encoding, merged, layout
        return layout

    def _packed_tokens(self, tokens_shape: tuple[int, int], side: int, image_size: torch.Tensor) -> torch.Tensor:
        """For each cell of the stock layout of an image of `image_size` cut into `tokens_shape` = (tiles, n) tokens,
        `side` x `side` a tile: its nearest original token (`tile * n + i`), or -1 for a newline.

        The model lays out the grid coordinates of the tokens beside their features, so each cell learns where it
        sits in the stitched grid of high-resolution tiles even where the model interpolates the grid down.
        """
        tiles, n = tokens_shape
        _, cols = get_anyres_image_grid_shape(image_size, self.model.config.image_grid_pinpoints,
                                              self.model.config.vision_config.image_size)
        tile, index = torch.arange(tiles - 1)[:, None], torch.arange(n)[None]  # tile t sits at (t // cols, t % cols)
        place = torch.stack([(tile // cols) * side + index // side, (tile % cols) * side + index % side], dim=-1)
        place = torch.cat([torch.zeros(1, n, 2), place.float()])  # the base tile is laid out first, as it is
        packed = self.model.model.pack_image_features([place], image_size[None],
                                                      image_newline=torch.full((2,), -1.0))[0][0][n:]
        row, col = packed.round().long().unbind(-1)
        grid_token = n + ((row // side) * cols + col // side) * n + (row % side) * side + col % side
        return torch.cat([torch.arange(n), torch.where(packed[:, 0] < 0, -1, grid_token)])


def position_span(unmerged: int, merged: int, longest: int) -> int:
    """How many positions a video of `unmerged` visual tokens, merged to `merged`, spans: all of them up to `longest`,
    but never fewer than the merged tokens themselves, so that with nothing merged the stock positions stay."""
    return max(merged, min(unmerged, longest))


def merged_position_ids(prompt: Prompt, places: torch.Tensor, unmerged_visual: int) -> torch.Tensor:
    """`[1, length]` rotary positions of a merged prompt: each visual token where the token it stands for sits in
    the unmerged prompt (`places`, counted from the first visual token), and the text after the visual run where it
    would follow the `unmerged_visual` tokens; `generate` continues them for new tokens.

    The merged prompt is a shorter sequence, but its tokens keep the distances the model was trained on (a token
    one frame back is one frame of tokens back), as the pruned ones do inside the LLM (`aim_core.patch`). FlashAttention
    reads position ids with gaps as packed sequences, each starting at the lowest id; only the first token has it, so
    the prompt stays one sequence.
    """
    start, after = prompt.visual_start, prompt.length - prompt.visual_start - prompt.num_visual
    return torch.cat([torch.arange(start), start + places, start + unmerged_visual + torch.arange(after)])[None]
