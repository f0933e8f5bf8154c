"""Stage 1 of AIM: iterative bipartite soft matching (ToMe) of each frame's visual tokens, before the LLM.

Pure torch and model-agnostic: the functions take the visual tokens of each frame as a `[frames, tokens, dim]`
tensor and return fewer tokens per frame, with a source map of which original token went into which survivor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import SettingsError


@dataclass
class MergeResult:
    """The merged tokens of a batch of frames.

    Attributes:
        tokens: `[frames, kept, dim]` merged embeddings, survivors in their original (spatial) order.
        sizes: `[frames, kept]` how many original tokens each survivor stands for.
        source: `[frames, tokens]` for every original token, the index (in `0..kept-1`) of the survivor it ended in.
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    source: torch.Tensor

    @classmethod
    def start(cls, tokens: torch.Tensor) -> MergeResult:
        """Nothing merged yet: every one of the `[frames, n, dim]` tokens alone in its own cluster."""
        frames, n, _ = tokens.shape
        return cls(tokens, torch.ones(frames, n, dtype=torch.long, device=tokens.device),
                   torch.arange(n, device=tokens.device).expand(frames, n))


# The largest round: all of set A, half of the tokens it starts with (the released AIM code merges in these).
MAX_MERGE_ROUND = 0.5


def merged_count(num_tokens: int, keep_ratio: float) -> int:
    """How many tokens a frame of `num_tokens` keeps at `keep_ratio` (at least one)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise SettingsError(f"merge keep ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(num_tokens, round(num_tokens * keep_ratio)))


def bipartite_merge_step(
    tokens: torch.Tensor, sizes: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of bipartite soft matching: merge the `r` most similar even-index tokens into odd-index ones.

    Every even-index token (set A) is matched to its most similar odd-index token (set B) by cosine similarity;
    the `r` best-matched A tokens are folded into their partners as a size-weighted mean. Survivors keep their
    original order.

    Args:
        tokens: `[frames, n, dim]`.
        sizes: `[frames, n]`, tokens already absorbed by each token (1 for an original token).
        r: tokens to remove per frame, `0 <= r <= ceil(n / 2)`.

    Returns:
        `(tokens [frames, n - r, dim], sizes [frames, n - r], destination [frames, n])`, where `destination[f, i]`
        is the survivor index that token `i` of frame `f` now belongs to.
    """
    frames, n, dim = tokens.shape
    device = tokens.device
    metric = F.normalize(tokens.float(), dim=-1)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # [frames, |A|, |B|]
    best_similarity, best_partner = similarity.max(dim=-1)  # [frames, |A|]
    merged_a = best_similarity.argsort(dim=-1, descending=True)[:, :r]  # [frames, r], indices into A

    is_merged = torch.zeros(frames, n, dtype=torch.bool, device=device)
    is_merged.scatter_(1, merged_a * 2, True)
    new_index = (~is_merged).cumsum(dim=1) - 1  # survivor index of each kept token, in original order
    partner_position = best_partner.gather(1, merged_a) * 2 + 1  # [frames, r], positions in the full sequence
    destination = new_index.clone()
    destination.scatter_(1, merged_a * 2, new_index.gather(1, partner_position))

    kept = n - r
    weights = sizes.to(tokens.dtype).unsqueeze(-1)
    summed = tokens.new_zeros(frames, kept, dim).scatter_add_(
        1, destination.unsqueeze(-1).expand(-1, -1, dim), tokens * weights
    )
    new_sizes = sizes.new_zeros(frames, kept).scatter_add_(1, destination, sizes)
    return summed / new_sizes.to(tokens.dtype).unsqueeze(-1), new_sizes, destination


def merge_frames(tokens: torch.Tensor, keep_ratio: float, max_round_fraction: float = MAX_MERGE_ROUND) -> MergeResult:
    """Merge each frame's tokens on its own down to `keep_ratio` of them, by repeated bipartite matching.

    Each round removes at most `max_round_fraction` of the tokens it starts with (`round_size`). At 0.5, the released
    AIM code's rounds, a round may fold all of set A, so 25% takes two rounds (196 -> 98 -> 49); `AIMConfig()` merges
    in rounds of `aim_core.config.MERGE_ROUND`. Any ratio in (0, 1] is reached exactly; a ratio of 1.0 returns the
    tokens unchanged.

    Args:
        tokens: `[frames, n, dim]` visual tokens of each frame, in raster order.
        keep_ratio: fraction of each frame's tokens to keep, in (0, 1].
        max_round_fraction: the most of its tokens one round removes, in (0, 0.5].
    """
    return merge_further(MergeResult.start(tokens), merged_count(tokens.shape[1], keep_ratio), max_round_fraction)


def round_size(current: int, target: int, max_fraction: float = MAX_MERGE_ROUND) -> int:
    """Tokens one bipartite round removes on the way from `current` to `target` tokens: at most `max_fraction` of
    `current`, at least 1. At 0.5 (the released AIM code's rounds) a round may fold all of set A, well matched or not; a
    smaller fraction lets the worst-matched A tokens, a small object's among background, wait for a better partner."""
    return min(current - target, max(1, math.ceil(current * min(max_fraction, MAX_MERGE_ROUND))))


def merge_further(merged: MergeResult, target: int, max_round_fraction: float = MAX_MERGE_ROUND) -> MergeResult:
    """Continue merging each frame of `merged` down to `target` tokens (at least 1), by repeated bipartite matching,
    each round removing at most `max_round_fraction` of the tokens it starts with (`round_size`).

    `merged.source` must map every original token to a current one; the result's maps original tokens to the new
    survivors. At or below `target` tokens nothing changes.
    """
    tokens, sizes, source = merged.tokens, merged.sizes, merged.source
    while tokens.shape[1] > target:
        r = round_size(tokens.shape[1], target, max_round_fraction)
        tokens, sizes, destination = bipartite_merge_step(tokens, sizes, r)
        source = destination.gather(1, source)
    return MergeResult(tokens=tokens, sizes=sizes, source=source.contiguous())


def cluster_means(tokens: torch.Tensor, source: torch.Tensor, kept: int) -> torch.Tensor:
    """`[frames, kept, dim]`: the mean of each merged token's cluster of `[frames, n, dim]` tokens, by a merge's
    `source` map `[frames, n]` (-1 for a token in no cluster). What merging made of the tokens themselves (its
    size-weighted means compose to the plain mean), applied to other values of the same tokens."""
    frames, _, dim = tokens.shape
    member = (source >= 0)[..., None].to(tokens.dtype)
    index = source.clamp(min=0)[..., None]
    summed = tokens.new_zeros(frames, kept, dim).scatter_add_(1, index.expand(-1, -1, dim), tokens * member)
    return summed / tokens.new_zeros(frames, kept, 1).scatter_add_(1, index, member)


def unmerge(tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`[frames, n, dim]`: every original token takes the value of the merged token it went into.

    Args:
        tokens: `[frames, kept, dim]` merged tokens.
        source: `[frames, n]` index of each original token's merged token (`MergeResult.source`).
    """
    return tokens.gather(1, source.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def representatives(source: torch.Tensor, grid: tuple[int, int], kept: int) -> torch.Tensor:
    """For each merged token, the original token whose place it takes: the member of its cluster nearest to the
    cluster's centre on the grid (the lowest index on ties).

    Args:
        source: `[steps, n]` merged token of each original token (`MergeResult.source`; -1 for a dropped one).
        grid: `(rows, cols)` of the `n` tokens.
        kept: merged tokens per step.

    Returns:
        `[steps, kept]` indices into the `n` tokens.
    """
    steps, n = source.shape
    index = torch.arange(n)
    place = torch.stack([index // grid[1], index % grid[1]], dim=-1).float()  # [n, 2]: (row, column)
    member = (source >= 0).float()[..., None]
    cluster = source.clamp(min=0)
    by_cluster = cluster[..., None].expand(-1, -1, 2)
    centre = torch.zeros(steps, kept, 2).scatter_add_(1, by_cluster, place * member)
    centre = centre / torch.zeros(steps, kept, 1).scatter_add_(1, cluster[..., None], member)
    distance = (place - centre.gather(1, by_cluster)).square().sum(-1).masked_fill(source < 0, math.inf)
    nearest = torch.full((steps, kept), math.inf).scatter_reduce(1, cluster, distance, "amin")
    candidates = torch.where(distance == nearest.gather(1, cluster), index, n)
    return torch.full((steps, kept), n).scatter_reduce(1, cluster, candidates, "amin")
