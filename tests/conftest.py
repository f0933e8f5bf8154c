"""Shared fixtures: tiny random models built from configs (no downloads) and small generated videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aim_core.random_models import LlavaOnevisionShape, build_llava_onevision

# 8 decoder layers so the default schedule (50% -> 79% of depth) prunes at layers 4, 5 and 6;
# 64 px frames in 8 px patches give 8 x 8 patches, pooled to 4 x 4 = 16 visual tokens per frame.
TINY_SHAPE = LlavaOnevisionShape(image_size=64, patch_size=8, text_layers=8)


@pytest.fixture(scope="session")
def tiny_llava():
    """(model, processor): a random stock LlavaOnevisionForConditionalGeneration using SDPA."""
    torch.set_num_threads(2)
    return build_llava_onevision(TINY_SHAPE, seed=0)


@pytest.fixture(scope="session")
def tiny_llava_eager():
    """The same weights as `tiny_llava`, with eager attention (which materialises 4-D masks)."""
    return build_llava_onevision(TINY_SHAPE, seed=0, attn_implementation="eager")


@pytest.fixture(scope="session")
def random_frames() -> np.ndarray:
    """uint8 [8, 48, 64, 3] frames: smooth gradients plus noise, so tokens differ but some are alike."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    frames = []
    for t in range(8):
        base = np.stack([(x * 4 + t * 10) % 256, (y * 5) % 256, ((x + y) * 2) % 256], axis=-1)
        frames.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255))
    return np.asarray(frames, dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_llava, tmp_path_factory):
    """`tiny_llava` saved like a hub checkpoint, for `from_pretrained`, the CLI and `launch.py --model`."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    model, processor = tiny_llava
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def background_with_objects(frames: int = 2, n: int = 64, objects: tuple[int, ...] = (10, 36)) -> torch.Tensor:
    """`[frames, n, 16]`: near-identical background tokens, and at `objects` (even indices: set A of the first
    bipartite round) tokens like nothing else in the frame."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.ones(frames, n, 16) + 0.01 * torch.randn(frames, n, 16, generator=generator)
    for k, index in enumerate(objects):
        tokens[:, index] = -1.0
        tokens[:, index, k] = 10.0
    return tokens
