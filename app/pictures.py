"""The galleries of the last answer: merged clusters on every frame, and the tokens a chosen LLM layer kept.

A `Pictures` keeps only what the galleries need (small frames, cluster ids, kept masks), not the full-resolution
frames of the trace, since it lives in the browser session's state until the next answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aim_core import Trace
from aim_core.visualize import cluster_overlay, fit, kept_overlay

DISPLAY_SIDE = 288  # pixels on the longer side of a gallery picture
Gallery = list[tuple[np.ndarray, str]]


@dataclass
class Pictures:
    """Attributes:
        frames: uint8 [T, h, w, 3], resized for display.
        timestamps: [T] seconds into the video.
        clusters: [T, rows, cols] merged token of every original token, within its frame.
        kept: bool [layers, T, rows, cols] whether each original token's merged token reached that layer.
        vision_clusters: [T, side, side] the token every patch was merged into inside the vision tower, or None.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    clusters: np.ndarray
    kept: np.ndarray
    vision_clusters: np.ndarray | None = None

    @classmethod
    def of(cls, trace: Trace) -> Pictures:
        frames = np.stack([fit(frame, DISPLAY_SIDE) for frame in trace.frames.frames])
        kept = np.stack([trace.kept_patches(layer) for layer in range(len(trace.kept_per_layer))])
        return cls(frames, np.asarray(trace.frames.timestamps), trace.clusters(), kept, trace.vision_clusters())

    @property
    def num_layers(self) -> int:
        return len(self.kept)

    def first_pruned_layer(self) -> int:
        """The first layer that processed fewer visual tokens than layer 0 (0 when none did): the default view."""
        counts = self.kept.reshape(self.num_layers, -1).sum(axis=1)
        return int(np.argmax(counts < counts[0])) if (counts < counts[0]).any() else 0

    def cluster_gallery(self) -> Gallery:
        """Each frame with its merged clusters, captioned "time · tokens before → after"."""
        tokens = self.clusters[0].size
        return [
            (cluster_overlay(frame, clusters), f"{self._when(t)} · {tokens}→{len(np.unique(clusters))}")
            for t, (frame, clusters) in enumerate(zip(self.frames, self.clusters, strict=True))
        ]

    def vision_gallery(self) -> Gallery:
        """Each frame with the patches merged inside the vision tower, captioned "time · patches before → after";
        empty when the tower ran whole."""
        if self.vision_clusters is None:
            return []
        patches = self.vision_clusters[0].size
        return [
            (cluster_overlay(frame, clusters), f"{self._when(t)} · {patches}→{len(np.unique(clusters))}")
            for t, (frame, clusters) in enumerate(zip(self.frames, self.vision_clusters, strict=True))
        ]

    def kept_gallery(self, layer: int) -> Gallery:
        """Each frame with the tokens `layer` kept, captioned "time · kept/merged tokens"."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be from 0 to {self.num_layers - 1}, got {layer}")
        return [
            (kept_overlay(frame, kept),
             f"{self._when(t)} · {len(np.unique(clusters[kept]))}/{len(np.unique(clusters))}")
            for t, (frame, clusters, kept) in enumerate(zip(self.frames, self.clusters, self.kept[layer], strict=True))
        ]

    def _when(self, index: int) -> str:
        """Short enough for a thumbnail's caption: "4.2s" in the first minute, else "12:05"."""
        seconds = float(self.timestamps[index])
        return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}:{int(seconds % 60):02d}"
