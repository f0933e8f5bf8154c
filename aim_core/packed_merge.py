"""Token merging within the segments of a packed sequence: the math behind merging inside Qwen's vision towers.

A packed sequence holds many attention segments back to back (`[rows, dim]`, boundaries as `cu_seqlens`), and each
row has its own rotary position. Each segment is merged on its own by the bipartite soft matching of
`aim_core.merge` (segments of equal length together, as one batch), so no token ever leaves its segment and the
survivors keep their order; every merged token takes the position of its survivor, the one row of its cluster that
was never folded into another (its "representative"). Pure torch: no model classes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .merge import MAX_MERGE_ROUND, bipartite_merge_step, round_size


@dataclass
class PackedMerge:
    """The merged rows of a packed sequence of segments.

    Attributes:
        tokens: `[rows, dim]` merged rows, segment after segment, each segment's in their original order.
        sizes: `[rows]` original rows each row stands for.
        source: `[original rows]` the row each original row ended in.
        representative: `[rows]` the original row whose position each row takes (a member of its cluster).
        lengths: `[segments]` rows of each segment now (a long tensor on the CPU).
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    source: torch.Tensor
    representative: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def start(cls, tokens: torch.Tensor, lengths: Sequence[int]) -> PackedMerge:
        """Nothing merged yet: `tokens [rows, dim]` in segments of `lengths` rows."""
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return cls(tokens, torch.ones_like(rows), rows, rows, torch.tensor(list(lengths), dtype=torch.long))

    @property
    def bounds(self) -> torch.Tensor:
        """`[segments + 1]` cumulative rows at the segments' boundaries (their `cu_seqlens`), on the tokens' device."""
        return F.pad(self.lengths.cumsum(0), (1, 0)).to(self.tokens.device)


def merge_segments(state: PackedMerge, tokens: torch.Tensor, targets: Sequence[int],
                   max_round_fraction: float = MAX_MERGE_ROUND) -> PackedMerge:
    """Merge each segment of `tokens` down to `targets[s]` rows (fewer than it has, or it stays as it is).

    Args:
        state: what earlier merging made of the original rows; `state.lengths` says where the segments are.
        tokens: `[rows, dim]` the rows of `state` as the blocks since updated them.
        targets: rows each segment keeps, at least 1.
        max_round_fraction: the most of a segment's rows one bipartite round removes (`aim_core.merge.round_size`).
    """
    lengths = state.lengths
    new_lengths = torch.minimum(torch.tensor(list(targets), dtype=torch.long), lengths)
    device = tokens.device
    offsets, new_offsets = (_starts(count).to(device) for count in (lengths, new_lengths))
    merged = tokens.new_empty(int(new_lengths.sum()), tokens.shape[1])
    sizes = state.sizes.new_empty(len(merged))
    destination = torch.empty(len(tokens), dtype=torch.long, device=device)  # each row's row after merging
    survivor = torch.empty(len(merged), dtype=torch.long, device=device)  # each merged row's row before
    for length, target in sorted(set(zip(lengths.tolist(), new_lengths.tolist()))):
        segments = ((lengths == length) & (new_lengths == target)).nonzero()[:, 0].to(device)
        rows = offsets[segments, None] + torch.arange(length, device=device)  # [segments, length]
        new_rows = new_offsets[segments, None] + torch.arange(target, device=device)
        batch_tokens, batch_sizes, local_destination, local_survivor = _merge_batch(tokens[rows], state.sizes[rows],
                                                                                   target, max_round_fraction)
        merged[new_rows], sizes[new_rows] = batch_tokens, batch_sizes
        destination[rows] = new_offsets[segments, None] + local_destination
        survivor[new_rows] = offsets[segments, None] + local_survivor
    return PackedMerge(merged, sizes, destination[state.source], state.representative[survivor], new_lengths)


def _merge_batch(tokens: torch.Tensor, sizes: torch.Tensor, target: int, max_round_fraction: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge `[segments, n, dim]` tokens of `[segments, n]` sizes to `target` each, by repeated bipartite matching.

    Returns `(tokens [segments, target, dim], sizes, destination [segments, n], survivor [segments, target])`: each
    token's merged token, and each merged token's survivor among the `n` (all local indices)."""
    segments, n, _ = tokens.shape
    destination = torch.arange(n, device=tokens.device).expand(segments, n)
    survivor = destination
    while tokens.shape[1] > target:
        tokens, sizes, step = bipartite_merge_step(tokens, sizes, round_size(tokens.shape[1], target,
                                                                             max_round_fraction))
        destination = step.gather(1, destination)
        survivor = survivor.gather(1, step_survivors(step, tokens.shape[1]))
    return tokens, sizes, destination, survivor


def step_survivors(destination: torch.Tensor, kept: int) -> torch.Tensor:
    """`[segments, kept]`: which of the `n` tokens each merged token of one `bipartite_merge_step` is the survivor of.

    The step folds some even-index tokens into odd-index ones: every odd-index token survives, keeping its own merged
    token, and an even-index token that merged nowhere is alone in its merged token. So a merged token's survivor is
    the odd-index token that went into it, or else the one token that did.

    Args:
        destination: `[segments, n]` the step's merged token of each token.
        kept: merged tokens per segment.
    """
    segments, n = destination.shape
    index = torch.arange(n, device=destination.device).expand(segments, n)
    preference = torch.where(index % 2 == 1, index, index + n)  # odd-index tokens first
    first = torch.full((segments, kept), 2 * n, device=destination.device)
    return first.scatter_reduce(1, destination, preference, "amin") % n


def split_count(total: int, lengths: Sequence[int]) -> list[int]:
    """Share `total` rows among segments of `lengths` rows in proportion to their lengths (largest remainders
    first), each keeping at least 1 and at most its length.

    The shares sum to `total` unless it is below the number of segments (each then keeps 1) or above their rows.
    """
    whole = sum(lengths)
    counts = [max(1, min(length, length * total // whole)) for length in lengths]
    by_remainder = sorted(range(len(lengths)), key=lambda i: (-(lengths[i] * total % whole), i))
    while (missing := total - sum(counts)) > 0 and any(c < n for c, n in zip(counts, lengths)):
        for i in [i for i in by_remainder if counts[i] < lengths[i]][:missing]:
            counts[i] += 1
    while (extra := sum(counts) - total) > 0 and any(c > 1 for c in counts):
        for i in [i for i in reversed(by_remainder) if counts[i] > 1][:extra]:
            counts[i] -= 1
    return counts


def remap_boundaries(state: PackedMerge, original_bounds: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """`cu_seqlens` of the original rows (boundaries that fall between `state`'s segments: a frame's, made of its
    windows) counted in `state`'s merged rows.

    Args:
        original_bounds: `[segments + 1]` the segments' boundaries before any merging (their `cu_seqlens`).
        cu_seqlens: boundaries to move, each one of `original_bounds`.

    Raises ValueError for a boundary inside a segment (merging there would have mixed two attention segments).
    """
    wanted = cu_seqlens.to(original_bounds.dtype)
    at = torch.searchsorted(original_bounds, wanted).clamp(max=len(original_bounds) - 1)
    if not torch.equal(original_bounds[at], wanted):
        raise ValueError("an attention boundary falls inside a merging segment")
    return state.bounds[at].to(cu_seqlens.dtype)


def _starts(lengths: torch.Tensor) -> torch.Tensor:
    return lengths.cumsum(0) - lengths
