"""Token merging inside the vision tower, through hooks on its stock blocks (ToMe, with ToMe-for-SD's unmerge).

Before each block that the schedule (`aim_core.config.vision_keep_counts`) gives fewer patch tokens than it received, a
forward pre-hook merges every frame's tokens by bipartite soft matching (`aim_core.merge`) in rounds of at most
`MERGE_ROUND` of them, so that block and the ones after it run on fewer tokens; each merged token then counts as
many times in attention as the patches it holds (ToMe's proportional attention, an additive mask of log sizes). After
the block whose output the model reads, a forward hook copies every merged token back to the patches it stands for, so
the projector, the pooling and the LLM get the grid they expect. No block's code changes, only the rows and the mask it
is handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import MERGE_ROUND, vision_keep_counts
from .merge import MergeResult, merge_further, unmerge


@dataclass
class VisionRecord:
    """What the vision tower processed.

    Attributes:
        tokens_per_layer: tokens per frame (or step, or tile) each block processed.
        source: `[frames, patches]` for every patch, the merged token it ended in at the output layer; None when
            nothing was merged.
        grid: `(rows, cols)` of a frame's patches in `source`, raster order; None for a square.
    """

    tokens_per_layer: list[int] = field(default_factory=list)
    source: torch.Tensor | None = None
    grid: tuple[int, int] | None = None


class VisionTokenMerger:
    """Merges patch tokens inside a vision tower, for the forwards run inside `with`.

    Args:
        layers: the tower's blocks, in order; each takes `(hidden_states [frames, patches, dim], attention_mask)`,
            the mask None (a ViT's blocks attend to every patch of their image).
        keep: fraction of each frame's patches left after merging, in (0, 1]; 1.0 installs no hook.
        output_layer: index of the block whose output the model reads; its output is unmerged.
    """

    def __init__(self, layers: Sequence[nn.Module], keep: float, output_layer: int) -> None:
        self.layers = list(layers)
        self.keep = keep
        self.output_layer = output_layer % len(self.layers)
        self.record = VisionRecord()
        self._state: MergeResult | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> VisionTokenMerger:
        if self.keep >= 1.0 or self.output_layer == 0:
            return self
        self._handles.append(self.layers[0].register_forward_pre_hook(self._start, with_kwargs=True))
        for index in range(1, self.output_layer + 1):
            hook = self._make_merge_hook(index)
            self._handles.append(self.layers[index].register_forward_pre_hook(hook, with_kwargs=True))
        # Prepended, so that hooks recording the block's output (transformers' hidden_states) see the whole grid.
        self._handles.append(self.layers[self.output_layer].register_forward_hook(self._unmerge_output, prepend=True))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._state = None

    def _start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = _hidden(args, kwargs)
        self.record = VisionRecord(vision_keep_counts(len(self.layers), hidden.shape[1], self.keep, self.output_layer))
        self._state = MergeResult.start(hidden)

    def _make_merge_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
            if self._state is None:
                raise RuntimeError("vision merging: the tower's first block did not run first")
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            if mask is not None:
                raise NotImplementedError("merging inside the vision tower needs blocks that attend without a mask")
            hidden = _hidden(args, kwargs)
            if self.record.tokens_per_layer[index] < hidden.shape[1]:
                self._state = merge_further(MergeResult(hidden, self._state.sizes, self._state.source),
                                            self.record.tokens_per_layer[index], MERGE_ROUND)
                hidden = self._state.tokens
            # Proportional attention: a key that stands for s patches gets s times the weight.
            sizes = self._state.sizes.to(hidden.dtype)
            mask = sizes.log()[:, None, None, :]
            rest = args[2:] if args else ()
            if args:
                return (hidden, mask, *rest), {key: value for key, value in kwargs.items() if key != "attention_mask"}
            return args, {**kwargs, "hidden_states": hidden, "attention_mask": mask}

        return hook

    def _unmerge_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        source = self._state.source
        self.record.source = source
        if isinstance(output, tuple):
            return (unmerge(output[0], source), *output[1:])
        return unmerge(output, source)


def _hidden(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]
