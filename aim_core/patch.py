"""The thin layer that applies AIM's pruning to a running decoder, through forward pre-hooks on its layers.

No model code is copied or forked: the decoder runs its own forward, and before each layer a hook removes the
tokens that layer no longer processes from everything the layer is handed (hidden states, rotary cos/sin, mask).
The layer's attention then writes only the kept tokens to its KV cache, so the saving is real time and memory.
Kept tokens keep their original rotary positions, and decoding continues after the unpruned prompt because the
position of each new token comes from layer 0, which is never pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import Importance
from .prune import keep_most_important, pagerank_importance, text_to_visual_importance

# (layer, hidden [n, dim], cos [n, head_dim], sin [n, head_dim], query_rows [nq] or None for all rows)
#   -> (query [heads, nq, head_dim], key [heads, n, head_dim], softmax scale)
QKProjector = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
    tuple[torch.Tensor, torch.Tensor, float],
]


@dataclass
class PrefillRecord:
    """What the decoder processed at prefill.

    Attributes:
        tokens_per_layer: sequence length each layer processed.
        kept_visual: for each layer, indices (into the visual tokens, `0..num_visual-1`) of those it processed,
            on the model's device (moving them would wait for the device at every layer).
    """

    tokens_per_layer: list[int] = field(default_factory=list)
    kept_visual: list[torch.Tensor] = field(default_factory=list)


class VisualTokenPruner:
    """Removes visual tokens inside a decoder, progressively over depth, for the forwards run inside `with`.

    Every forward that starts a sequence (prefill, or a full recomputation without cache) is pruned; forwards
    that extend a cached sequence (decoding) only have their attention mask narrowed to the cached tokens.

    Args:
        layers: the decoder layers, in order.
        project_qk: computes a layer's rotated queries and keys, for ranking (see `QKProjector`).
        visual: where the visual tokens are in the prompt: the position of the first of a contiguous run, or a
            `[num_visual]` tensor of their ascending positions when text comes between them (Qwen3-VL puts a
            timestamp before each temporal step).
        num_visual: number of visual tokens.
        prompt_length: length of the prompt; tokens after the last visual one and before this rank the visual ones.
        keep_counts: visual tokens each layer processes (non-increasing; layer 0 keeps all).
        importance: "text" (the prompt's tokens after the visual ones rank them), "last" (its last token does) or
            "pagerank" (see `aim_core.prune`).
        forced_kept: per layer, visual indices to keep instead of ranking them (to replay an earlier prefill).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        project_qk: QKProjector,
        visual: int | torch.Tensor,
        num_visual: int,
        prompt_length: int,
        keep_counts: Sequence[int],
        importance: Importance = "text",
        forced_kept: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if len(keep_counts) != len(layers):
            raise ValueError(f"need one keep count per layer ({len(layers)}), got {len(keep_counts)}")
        if keep_counts[0] != num_visual or any(b > a for a, b in zip(keep_counts, keep_counts[1:])):
            raise ValueError("keep counts must start with all visual tokens and never increase")
        self.layers = list(layers)
        self.project_qk = project_qk
        if isinstance(visual, int):
            visual = torch.arange(visual, visual + num_visual)
        if len(visual) != num_visual:
            raise ValueError(f"got {len(visual)} visual positions for {num_visual} visual tokens")
        self.visual_positions = visual.cpu()
        self.visual_end = int(visual[-1]) + 1 if num_visual else 0
        self.prompt_length = prompt_length
        self.keep_counts = list(keep_counts)
        self.importance = importance
        self.forced_kept = forced_kept
        self.record = PrefillRecord()
        self._scoring = _Stopwatch()
        self._positions: torch.Tensor | None = None  # sequence positions held by the current layer's input
        # per position of the forward's unpruned sequence, its visual index or -1 (text)
        self._visual_index: torch.Tensor | None = None
        self._layer_positions: list[torch.Tensor] = []  # positions each layer kept in its cache at prefill
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> VisualTokenPruner:
        for index, layer in enumerate(self.layers):
            hook = self._make_hook(index)
            self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, index: int) -> Callable[..., tuple[tuple, dict]]:
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is None or cache.get_seq_length(index) == 0:
                return self._prefill_layer(index, module, args, kwargs)
            return args, self._decode_layer(index, kwargs)

        return hook

    def _prefill_layer(self, index: int, layer: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        if index == 0:
            self._positions = torch.arange(hidden.shape[1], device=hidden.device)
            self._visual_index = torch.full((hidden.shape[1],), -1, device=hidden.device)
            self._visual_index[self.visual_positions.to(hidden.device)] = torch.arange(
                len(self.visual_positions), device=hidden.device)
            self._visual_count = self.keep_counts[0]
            self._kept_visual = torch.arange(self._visual_count, device=hidden.device)
            self._layer_positions = []
            self.record = PrefillRecord()
        positions = self._positions
        full_length = cos.shape[-2]

        if self.keep_counts[index] < self._visual_count:
            rows, chosen = self._rows_to_keep(index, layer, hidden, cos[:, positions], sin[:, positions], positions)
            self._kept_visual = self._visual_index[positions[chosen]]
            hidden = hidden[:, rows]
            positions = positions[rows]
            self._positions = positions
            self._visual_count = self.keep_counts[index]

        self._layer_positions.append(positions)
        self.record.tokens_per_layer.append(len(positions))
        self.record.kept_visual.append(self._kept_visual)
        if len(positions) == full_length:
            return args, kwargs

        kwargs = dict(kwargs)
        kwargs["position_embeddings"] = (cos[:, positions], sin[:, positions])
        # FlashAttention reads gaps in position_ids as packed sequences; RoPE already comes from cos/sin.
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = None
        mask = kwargs.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = _select_mask(mask, positions, positions)
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs

    def _decode_layer(self, index: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        mask = kwargs.get("attention_mask")
        kept = self._layer_positions[index] if self._layer_positions else None
        if mask is None or kept is None or len(kept) == self.prompt_length:
            return kwargs
        decoded = torch.arange(self.prompt_length, mask.shape[-1], device=kept.device)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = _select_mask(mask, None, torch.cat([kept, decoded]))
        return kwargs

    @property
    def scoring_seconds(self) -> float:
        """Time spent ranking visual tokens, in all the forwards run so far."""
        return self._scoring.seconds()

    def _rows_to_keep(
        self, index: int, layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the layer's input to keep (every text token and the most important visual tokens, ascending),
        and the rows of the visual tokens kept (ascending).

        The rows are found by a stable sort on "is text" rather than `nonzero`, whose output size the host must read
        back: on a GPU that wait, at every pruning layer, stalled the queue of kernels the host had launched ahead.
        """
        order = torch.sort((self._visual_index[positions] < 0).to(torch.uint8), stable=True).indices
        visual_rows, text_rows = order[:self._visual_count], order[self._visual_count:]
        count = self.keep_counts[index]
        if self.forced_kept is not None:
            wanted = self.visual_positions[self.forced_kept[index].cpu()].to(positions.device)
            chosen = visual_rows[torch.isin(positions[visual_rows], wanted)]
            if len(chosen) != count:
                raise ValueError(f"layer {index}: forced kept set has {len(chosen)} tokens, expected {count}")
        elif count == 0:
            chosen = visual_rows[:0]
        else:
            with self._scoring.timing(hidden.device):
                importance = self._importance(layer, hidden, cos, sin, positions, visual_rows)
                chosen = visual_rows[keep_most_important(importance, count)]
        return torch.cat([text_rows, chosen]).sort().values, chosen

    def _importance(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        visual_rows: torch.Tensor,
    ) -> torch.Tensor:
        """`[len(visual_rows)]` importance of the visual tokens at this layer's input."""
        if self.importance == "pagerank":
            query, key, scale = self.project_qk(layer, hidden[0], cos[0], sin[0], None)
            return pagerank_importance(query, key, positions, visual_rows, scale)
        # Text is never pruned, so the prompt's tokens after the visual ones are the rows just before those past the
        # prompt (a full recomputation runs the answer's tokens too), known without reading `positions` back.
        after_visual = self.prompt_length - self.visual_end
        if self.importance == "last" or after_visual == 0:  # no text after the visual tokens: the last one ranks
            after_visual = 1
        end = len(positions) - max(len(self._visual_index) - self.prompt_length, 0)
        query_rows = torch.arange(end - after_visual, end, device=positions.device)
        query, key, scale = self.project_qk(layer, hidden[0], cos[0], sin[0], query_rows)
        return text_to_visual_importance(query, key, positions[query_rows], positions, visual_rows, scale)


class _Stopwatch:
    """Adds up the time of timed stretches; on a GPU with CUDA events, read once at the end, so that timing does not
    make the host wait for the device at every stretch."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def timing(self, device: torch.device) -> Iterator[None]:
        if device.type != "cuda":
            started = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - started
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._events.append((start, end))

    def seconds(self) -> float:
        for start, end in self._events:
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000
        self._events.clear()
        return self._seconds


def _select_mask(mask: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """Narrow a 4-D attention mask `[batch, heads, q, kv]` to the given query rows and key columns."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise NotImplementedError(
            f"token pruning supports 4-D tensor masks or none (SDPA, eager, FlashAttention), got {type(mask)}"
        )
    if rows is not None:
        mask = mask[:, :, rows]
    return mask[:, :, :, columns]
