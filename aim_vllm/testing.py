"""Tiny random-weight Qwen2.5-VL and Qwen3-VL checkpoints and video requests for the plugin's tests and benchmark.

Built with `aim_core.random_models` and saved with `save_pretrained`, so vLLM loads them as it loads a hub model.
vLLM's CPU attention needs a head size of at least 32, hence a wider language model than aim_core's test default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aim_core.random_models import QwenVLShape, build_qwen_vl

VIDEO_PROMPT = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\n"
                "<|im_start|>assistant\n")


def tiny_shape(family: str, text_hidden: int = 128, text_layers: int = 4) -> QwenVLShape:
    """A small Qwen-VL shape whose attention heads vLLM's CPU backend supports (head size 32)."""
    heads = text_hidden // 32
    return QwenVLShape(family=family, text_hidden=text_hidden, text_layers=text_layers, text_heads=heads,
                       text_kv_heads=max(1, heads // 2), text_intermediate=2 * text_hidden, mrope_section=(4, 6, 6))


def save_tiny_model(directory: Path, family: str, seed: int = 0, **shape: Any) -> Path:
    """Build a random-weight model of `family` ("qwen2_5_vl" or "qwen3_vl") and save it with its processor."""
    model, processor = build_qwen_vl(tiny_shape(family, **shape), seed=seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def video(num_frames: int, height: int, width: int, seed: int, fps: float = 2.0) -> tuple[np.ndarray, dict]:
    """`([frames, height, width, 3] uint8, metadata)`: a random video and the metadata vLLM's Qwen processors read
    for frames that are already sampled."""
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    metadata = {"fps": fps, "duration": num_frames / fps, "total_num_frames": num_frames,
                "frames_indices": list(range(num_frames)), "video_backend": "opencv", "do_sample_frames": False}
    return frames, metadata


def video_request(clip: tuple[np.ndarray, dict], question: str = "What happens?",
                  **mm_processor_kwargs: Any) -> dict[str, Any]:
    """A prompt for `LLM.generate` / `add_request` asking `question` about `clip`."""
    request: dict[str, Any] = {"prompt": VIDEO_PROMPT.format(question=question), "multi_modal_data": {"video": clip}}
    if mm_processor_kwargs:
        request["mm_processor_kwargs"] = mm_processor_kwargs
    return request
