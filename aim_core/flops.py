"""Analytic FLOPs of the LLM prefill, from the decoder's config and the tokens each layer processes (as in AIM), and of
the vision tower and projector, from their weights and the tokens each block processes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder that its FLOPs depend on.

    Attributes:
        hidden: model width d.
        query_width: width of all query heads, heads x head_dim (equal to `hidden` in Qwen2/LLaMA).
        kv_width: width of all key (or value) heads, kv_heads x head_dim.
        intermediate: FFN width m.
        heads: attention heads H.
        layers: decoder layers L.
    """

    hidden: int
    query_width: int
    kv_width: int
    intermediate: int
    heads: int
    layers: int

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> DecoderShape:
        """Read the shape from a text (decoder) config, e.g. `model.config.text_config`."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            query_width=config.num_attention_heads * head_dim,
            kv_width=kv_heads * head_dim,
            intermediate=config.intermediate_size,
            heads=config.num_attention_heads,
            layers=config.num_hidden_layers,
        )


def layer_flops(n: int, shape: DecoderShape) -> int:
    """FLOPs of one decoder layer on `n` tokens at prefill.

    AIM's formula, `2n(2d^2 + 2d*d_kv) + 6n*d*m + 4n^2*d + 5H*n^2 + 17n*d`, with the query width in place of d in
    the attention terms so that models whose heads x head_dim differs from d are counted right: projections
    (q, o, k, v), the gated FFN, QK^T and AV, softmax, and norms/residuals/rotary.
    """
    d, dq = shape.hidden, shape.query_width
    projections = 2 * n * (2 * d * dq + 2 * d * shape.kv_width)
    ffn = 6 * n * d * shape.intermediate
    attention = 4 * n * n * dq + 5 * shape.heads * n * n
    elementwise = 17 * n * d
    return projections + ffn + attention + elementwise


def prefill_flops(tokens_per_layer: Sequence[int], shape: DecoderShape) -> int:
    """FLOPs of the whole prefill, given the sequence length each layer processed."""
    if len(tokens_per_layer) != shape.layers:
        raise ValueError(f"expected {shape.layers} layer lengths, got {len(tokens_per_layer)}")
    return sum(layer_flops(n, shape) for n in tokens_per_layer)


@dataclass(frozen=True)
class VisionShape:
    """The sizes of a vision tower and its projector that their FLOPs depend on.

    Attributes:
        hidden: block width d.
        heads: attention heads H.
        layers: blocks.
        block_weights: weights of one block's linear maps (multiply-adds per token).
        embed_weights: weights of the patch embedding (multiply-adds per patch).
        projector_weights: weights of the projector's linear maps, every projector counted (Qwen3-VL's deepstack
            mergers too); multiply-adds per projected token.
        patches_per_projected_token: 1 (LLaVA-OneVision's projector sees every patch) or spatial_merge_size**2 (Qwen).
        attention_window: patches a windowed block attends to (Qwen2.5-VL), None where every block sees the whole step.
        full_attention_layers: blocks that see the whole step despite the window.
    """

    hidden: int
    heads: int
    layers: int
    block_weights: int
    embed_weights: int
    projector_weights: int
    patches_per_projected_token: int = 1
    attention_window: int | None = None
    full_attention_layers: tuple[int, ...] = ()

    @classmethod
    def from_modules(cls, hidden: int, heads: int, embedding: nn.Module, blocks: Sequence[nn.Module],
                     projectors: Sequence[nn.Module], patches_per_projected_token: int = 1,
                     attention_window: int | None = None, full_attention_layers: Sequence[int] = ()) -> VisionShape:
        """Read the weights off the tower's own modules (all blocks alike: the first is counted)."""
        return cls(hidden=hidden, heads=heads, layers=len(blocks), block_weights=_linear_weights(blocks[0]),
                   embed_weights=_linear_weights(embedding),
                   projector_weights=sum(_linear_weights(projector) for projector in projectors),
                   patches_per_projected_token=patches_per_projected_token, attention_window=attention_window,
                   full_attention_layers=tuple(full_attention_layers))


def vision_layer_flops(n: int, span: int, shape: VisionShape) -> int:
    """FLOPs of one vision block on `n` tokens that each attend to `span` of them: the linear maps, QK^T and AV,
    softmax, and norms/residuals (counted as in `layer_flops`)."""
    d = shape.hidden
    return 2 * n * shape.block_weights + 4 * n * span * d + 5 * shape.heads * n * span + 17 * n * d


def vision_flops(shape: VisionShape, steps: int, patches: int, tokens_per_layer: Sequence[int] | None = None) -> int:
    """FLOPs of the vision tower and projector on `steps` steps (frames, Qwen's temporal patches, image tiles) of
    `patches` patches each, with `tokens_per_layer[l]` tokens per step processed by block l (all of them by
    default; fewer where tokens are merged inside the tower, whose output grid is whole again for the projector)."""
    tokens_per_layer = [patches] * shape.layers if tokens_per_layer is None else tokens_per_layer
    if len(tokens_per_layer) != shape.layers:
        raise ValueError(f"expected {shape.layers} block lengths, got {len(tokens_per_layer)}")
    blocks = 0
    for layer, n in enumerate(tokens_per_layer):
        windowed = shape.attention_window is not None and layer not in shape.full_attention_layers
        # Merging keeps each window's share of the tokens, so a merged token attends to as many fewer.
        blocks += vision_layer_flops(n, min(n, shape.attention_window * n // patches) if windowed else n, shape)
    embed = 2 * patches * shape.embed_weights
    project = 2 * (patches // shape.patches_per_projected_token) * shape.projector_weights
    return steps * (embed + blocks + project)


def _linear_weights(module: nn.Module) -> int:
    """Weights of the linear maps and convolutions (the patch embedding) in `module`."""
    return sum(part.weight.numel() for part in module.modules() if isinstance(part, (nn.Linear, nn.Conv2d, nn.Conv3d)))
