"""Stage 2 of AIM: rank visual tokens by importance at a pruning layer and choose which to keep.

Pure torch and model-agnostic: the functions take the layer's rotated queries and keys (the adapter computes
them from the layer's own projections) and never materialise more attention than they need, so the model itself
keeps running SDPA or FlashAttention.
"""

from __future__ import annotations

import torch


def _causal_scores(query: torch.Tensor, key: torch.Tensor, query_positions: torch.Tensor,
                   key_positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Causally masked attention logits `[heads, nq, n]` in float32."""
    logits = (query.float() @ key.float().transpose(-1, -2)) * scale
    future = key_positions[None, :] > query_positions[:, None]
    return logits.masked_fill(future, float("-inf"))


def text_to_visual_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    visual_columns: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention that the text tokens pay to each visual token, averaged over heads and text tokens.

    Costs O(n_text x n) per head rather than O(n^2): only the text rows of the attention are computed.

    Args:
        query: `[heads, n_text, head_dim]` rotated queries of the text tokens that rank the visual ones.
        key: `[heads, n, head_dim]` rotated keys of every token the layer sees (KV heads already repeated).
        query_positions: `[n_text]` sequence positions of the queries, for the causal mask.
        key_positions: `[n]` sequence positions of the keys.
        visual_columns: `[n_visual]` which of the `n` keys are visual tokens.
        scale: the attention's softmax scale, usually head_dim ** -0.5.

    Returns:
        `[n_visual]` importance of each visual token.
    """
    probabilities = _causal_scores(query, key, query_positions, key_positions, scale).softmax(dim=-1)
    return probabilities[:, :, visual_columns].mean(dim=(0, 1))


def pagerank_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    visual_columns: torch.Tensor,
    scale: float,
    temperature: float = 0.1,
    iterations: int = 5,
) -> torch.Tensor:
    """AIM's multi-modal importance: PageRank over the sharpened causal attention graph of all tokens.

    For each head, `p <- p A` for `iterations` steps from a uniform `p`, where `A = softmax(QK^T * scale /
    temperature)`; a token scores `sqrt(mean over heads of p^2)`. One head's `n x n` matrix is held at a time.

    Args:
        query: `[heads, n, head_dim]` rotated queries of every token.
        key: `[heads, n, head_dim]` rotated keys of every token (KV heads already repeated).
        positions: `[n]` sequence positions, for the causal mask.
        visual_columns: `[n_visual]` which tokens are visual.
        scale: the attention's softmax scale.

    Returns:
        `[n_visual]` importance of each visual token.
    """
    heads, n, _ = query.shape
    squared = torch.zeros(n, dtype=torch.float32, device=query.device)
    for head in range(heads):
        transition = _causal_scores(query[head : head + 1], key[head : head + 1], positions, positions,
                                    scale / temperature)[0].softmax(dim=-1)
        rank = torch.full((n,), 1.0 / n, dtype=torch.float32, device=query.device)
        for _ in range(iterations):
            rank = rank @ transition
        squared += rank.square()
    return (squared / heads).sqrt()[visual_columns]


def keep_most_important(importance: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, in ascending order so survivors keep their sequence order."""
    return importance.topk(count, sorted=False).indices.sort().values
