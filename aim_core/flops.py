"""Analytic FLOPs of the LLM prefill, from the decoder's config and the tokens each layer processes (as in AIM)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
