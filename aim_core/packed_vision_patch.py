"""Token merging inside a vision tower whose blocks take one packed sequence (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), through
hooks on its stock modules.

Such a tower runs all the frames (temporal steps) of a video as one `[rows, dim]` sequence: each block is handed the
rows, `cu_seqlens` (where each attention segment starts: a step, or in Qwen2.5-VL's windowed blocks a window of one,
its rows laid out window after window) and each row's rotary `position_embeddings` (cos, sin). Merging stays within
the smallest of those segments (`PackedLayout.units`: windows nest in steps), so every block's segments stay whole.
Before each block that the schedule (`aim_core.config.vision_keep_counts`) gives fewer patches than it received, a
forward pre-hook merges every unit's rows (`aim_core.packed_merge`, in rounds of at most `MERGE_ROUND` of them);
from then on each block is handed the merged rows, its own `cu_seqlens` counted in merged rows, and each row's cos/sin
of its representative patch. The modules that read the blocks' output (the patch merger, Qwen3-VL's deepstack mergers)
get every merged row copied back to its patches (ToMe-for-SD's unmerge), as does the tower's `last_hidden_state`, so
they and the LLM see the stock grid.

The blocks' attention takes no mask or bias (every path passes `attention_mask=None`), so here a merged token counts
once in attention, not as many times as the patches it holds (no proportional attention, unlike `vision_patch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import MERGE_ROUND, vision_keep_counts
from .packed_merge import PackedMerge, merge_segments, remap_boundaries, split_count
from .vision_patch import VisionRecord


@dataclass(frozen=True)
class PackedLayout:
    """Where a tower's rows are, for one image or video.

    Attributes:
        units: rows of each smallest attention segment, in row order: the windows (Qwen2.5-VL) or the steps.
        steps: steps of the input (Qwen's temporal patches of 2 frames; 1 for an image), laid out alike.
        grid: `(rows, cols)` of a step's patches.
        raster: `[patches per step]` for each row of a step, its index in `grid` in raster order.
    """

    units: list[int]
    steps: int
    grid: tuple[int, int]
    raster: torch.Tensor


class PackedVisionTokenMerger:
    """Merges patch tokens inside a packed-sequence vision tower, for the forwards run inside `with`.

    Args:
        tower: the vision model, called as `tower(pixels, grid_thw=...)` with one image or video.
        layers: its blocks, each called as `block(hidden [rows, dim], cu_seqlens=, max_seqlen=,
            position_embeddings=(cos, sin))`; the model reads the last one's output.
        readers: the modules that read the blocks' output as `reader(hidden [rows, dim])`.
        keep: fraction of each step's patches left after merging, in (0, 1]; 1.0 installs no hook.
        layout: the rows' layout for the tower's `grid_thw`.
    """

    def __init__(self, tower: nn.Module, layers: Sequence[nn.Module], readers: Sequence[nn.Module], keep: float,
                 layout: Callable[[torch.Tensor], PackedLayout]) -> None:
        self.tower = tower
        self.layers = list(layers)
        self.readers = list(readers)
        self.keep = keep
        self.layout_of = layout
        self.record = VisionRecord()
        self._layout: PackedLayout | None = None
        self._schedule: list[int] = []
        self._state: PackedMerge | None = None
        self._original_bounds: torch.Tensor | None = None
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> PackedVisionTokenMerger:
        if self.keep >= 1.0:
            return self
        self._handles.append(self.tower.register_forward_pre_hook(self._start, with_kwargs=True))
        self._handles.append(self.tower.register_forward_hook(self._finish))
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_block_hook(index), with_kwargs=True))
        self._handles.extend(reader.register_forward_pre_hook(self._unmerge_input) for reader in self.readers)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._state = self._rotary = None

    def _start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        self._layout = layout = self.layout_of(grid_thw)
        self._schedule = vision_keep_counts(len(self.layers), sum(layout.units) // layout.steps, self.keep)
        self.record = VisionRecord()
        self._state = self._rotary = None

    def _make_block_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
            if self._layout is None:
                raise RuntimeError("vision merging: the tower's forward did not run first")
            hidden = args[0] if args else kwargs["hidden_states"]
            if self._state is None:
                self._state = PackedMerge.start(hidden, self._layout.units)
                self._original_bounds = self._state.bounds
            steps, target = self._layout.steps, self._schedule[index]
            if target < len(hidden) // steps:
                step_units = self._layout.units[: len(self._layout.units) // steps]
                self._state = merge_segments(self._state, hidden, split_count(target, step_units) * steps,
                                             MERGE_ROUND)
                hidden, self._rotary = self._state.tokens, None
            self.record.tokens_per_layer.append(len(hidden) // steps)
            # Every block gets the rows' own segments and positions, also before the first merge (then unchanged).
            cu_seqlens = remap_boundaries(self._state, self._original_bounds, kwargs["cu_seqlens"])
            kwargs = {**kwargs, "cu_seqlens": cu_seqlens, "position_embeddings": self._positions(kwargs)}
            if kwargs.get("max_seqlen") is not None:  # flash attention's bound on a segment's rows
                kwargs["max_seqlen"] = int(cu_seqlens.diff().max())
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def _positions(self, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's cos and sin: its representative patch's."""
        if self._rotary is None:
            cos, sin = kwargs["position_embeddings"]
            self._rotary = cos[self._state.representative], sin[self._state.representative]
        return self._rotary

    def _unmerge_input(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._state is None:
            return None
        return (args[0][self._state.source], *args[1:])

    def _finish(self, module: nn.Module, args: tuple, output: Any) -> Any:
        state, layout = self._state, self._layout
        if state is None:
            return output
        output.last_hidden_state = output.last_hidden_state[state.source]
        rows, patches = len(state.tokens) // layout.steps, len(layout.raster)
        step = torch.arange(layout.steps, device=state.source.device)[:, None]
        clusters = state.source.view(layout.steps, patches) - step * rows  # each patch's merged row in its step
        source = torch.empty_like(clusters)
        source[:, layout.raster.to(clusters.device)] = clusters
        self.record = VisionRecord(self.record.tokens_per_layer, source, layout.grid)
        self._state = self._rotary = None
        return output
