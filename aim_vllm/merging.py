"""AIM's merging of one video's visual tokens as vLLM's Qwen-VL models hand them over, without vLLM itself.

The math is `aim_core`'s: each temporal step's `(h/2) x (w/2)` tokens are merged by bipartite soft matching
(`aim_core.merge.merge_frames`, in `AIMConfig()`'s rounds), extra per-token features (Qwen3-VL's deepstack levels,
concatenated after the main features by vLLM's vision tower) are averaged over the same clusters (`cluster_mean`),
and each merged token takes the M-RoPE position of its cluster's representative (`representatives`), as
`aim_core`'s Qwen adapter does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aim_core.adapters.qwen_vl import cluster_mean
from aim_core.config import MERGE_ROUND
from aim_core.merge import merge_frames, representatives


@dataclass
class MergedVideo:
    """One video after merging.

    Attributes:
        embeds: `[steps * kept, dim]` merged tokens, step by step, survivors in raster order.
        kept_index: `[steps * kept]` for each merged token, the index in the unmerged `[steps * n]` tokens whose
            place (M-RoPE position) it takes.
        kept_per_step: merged tokens per temporal step.
    """

    embeds: torch.Tensor
    kept_index: torch.Tensor
    kept_per_step: int


def tokens_per_step(grid_thw: tuple[int, int, int], merge_size: int) -> int:
    """LLM tokens per temporal step of a video whose patch grid is `grid_thw`."""
    _, height, width = grid_thw
    return (height // merge_size) * (width // merge_size)


def merge_video(embeds: torch.Tensor, grid_thw: tuple[int, int, int], merge_size: int, keep: float,
                main_dim: int | None = None) -> MergedVideo:
    """Merge one video's tokens per temporal step.

    Args:
        embeds: `[steps * n, dim]` the vision tower's output for the video, step by step in raster order.
        grid_thw: `(steps, h, w)` its patch grid (`video_grid_thw`); `n = (h / merge_size) * (w / merge_size)`.
        merge_size: the patch merger's `spatial_merge_size`.
        keep: fraction of each step's tokens kept, in (0, 1].
        main_dim: the first `main_dim` channels are the tokens that matching compares and merges; the rest
            (deepstack features) are averaged over the same clusters. None: all channels are the tokens.
    """
    steps, height, width = grid_thw
    grid = (height // merge_size, width // merge_size)
    n = grid[0] * grid[1]
    tokens = embeds.view(steps, n, -1)
    main_dim = tokens.shape[-1] if main_dim is None else main_dim
    merged = merge_frames(tokens[..., :main_dim], keep, MERGE_ROUND)
    kept = merged.tokens.shape[1]
    parts = [merged.tokens]
    if main_dim < tokens.shape[-1]:
        parts.append(cluster_mean(tokens[..., main_dim:], merged))
    place = representatives(merged.source.cpu(), grid, kept)  # [steps, kept] into each step's n tokens
    kept_index = (place + torch.arange(steps)[:, None] * n).flatten()
    return MergedVideo(torch.cat(parts, dim=-1).flatten(0, 1), kept_index, kept)


def qwen2_5_video_positions(grid_thw: tuple[int, int, int], merge_size: int, temporal_scale: float) -> torch.Tensor:
    """`[steps * n, 3]` (time, row, column) M-RoPE positions of an unmerged Qwen2.5-VL video, counted from the
    video's first token, as vLLM places them without pruning (`get_mrope_input_positions`): time is the step index
    times `second_per_grid_ts * tokens_per_second`, truncated to an integer after the product."""
    steps, height, width = grid_thw
    t, h, w = torch.meshgrid(torch.arange(steps), torch.arange(height // merge_size),
                             torch.arange(width // merge_size), indexing="ij")
    return torch.stack([(t.double() * temporal_scale).long(), h, w], dim=-1).flatten(0, 2)
