"""Other ways to cut visual tokens, run through the same engine so they can be measured beside AIM.

Each is a `TokenReduction` (see `aim_core.config`): pass it as `config=` to `VideoQA.answer`. Merge-only and
prune-only are plain `AIMConfig`s (`prune_start=1.0`, or `merge_keep=1.0`); frame subsampling is `AIMConfig.none()`
with fewer frames.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from .config import Importance
from .errors import SettingsError
from .merge import MergeResult, merge_frames, merged_count


@dataclass(frozen=True)
class FastV:
    """FastV (Chen et al., 2024): from decoder layer `layer` on, keep the `keep` fraction of visual tokens that the
    prompt's last token attends to most at that layer."""

    layer: int = 2
    keep: float = 0.5
    importance: Importance = "last"
    merge_keep: float = 1.0
    vision_keep: float = 1.0

    def __post_init__(self) -> None:
        if self.layer < 1 or not 0.0 <= self.keep <= 1.0:
            raise SettingsError(f"FastV needs layer >= 1 and keep in [0, 1], got {self.layer}, {self.keep}")

    @property
    def frame_reduction_key(self) -> Hashable:
        return ("merge", 1.0)

    def reduce_frames(self, tokens: torch.Tensor) -> MergeResult:
        return merge_frames(tokens, 1.0)

    def visual_keep_counts(self, num_layers: int, num_visual: int) -> list[int]:
        return [num_visual if layer < self.layer else int(self.keep * num_visual) for layer in range(num_layers)]


@dataclass(frozen=True)
class RandomDrop:
    """Keep a random `keep` fraction of each frame's visual tokens before the LLM (seeded), drop the rest."""

    keep: float
    seed: int = 0
    importance: Importance = "text"
    vision_keep: float = 1.0

    @property
    def merge_keep(self) -> float:
        return self.keep

    @property
    def frame_reduction_key(self) -> Hashable:
        return ("random", self.keep, self.seed)

    def reduce_frames(self, tokens: torch.Tensor) -> MergeResult:
        """Survivors keep their order; `source` is -1 for a dropped token."""
        frames, n, _ = tokens.shape
        count = merged_count(n, self.keep)
        generator = torch.Generator().manual_seed(self.seed)
        kept = torch.rand(frames, n, generator=generator).topk(count, dim=1).indices.sort(dim=1).values
        kept = kept.to(tokens.device)
        source = torch.full((frames, n), -1, dtype=torch.long, device=tokens.device)
        source.scatter_(1, kept, torch.arange(count, device=tokens.device).expand(frames, count))
        selected = tokens.gather(1, kept.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return MergeResult(tokens=selected, sizes=torch.ones_like(kept), source=source)

    def visual_keep_counts(self, num_layers: int, num_visual: int) -> list[int]:
        return [num_visual] * num_layers
