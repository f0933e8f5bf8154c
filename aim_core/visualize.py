"""Pictures of what AIM did to a video's visual tokens, drawn over its frames (numpy in, numpy out).

- `cluster_overlay`: ToMe-style merged clusters. Every patch is tinted with the mean colour of the cluster it was
  merged into and clusters are outlined, so a region that became one token reads as one flat patch.
- `kept_overlay`: the tokens one LLM layer still processed at prefill; the dropped ones are dimmed to grey.

A token grid covers the whole frame: the model's processor resizes each frame to its input size, so token
`(r, c)` of a `rows x cols` grid sees rows `r * H / rows` to `(r + 1) * H / rows` of the frame, whatever its shape.

    answer = qa.answer("video.mp4", "What happens?")
    trace = answer.trace
    frames = [fit(frame, 320) for frame in trace.frames.frames]
    clusters = [cluster_overlay(f, c) for f, c in zip(frames, trace.clusters())]
    kept = [kept_overlay(f, k) for f, k in zip(frames, trace.kept_patches(layer=5))]
    PIL.Image.fromarray(clusters[0]).save("clusters.png")
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BORDER_COLOUR = (255, 255, 255)
KEPT_BORDER_COLOUR = (255, 196, 0)


def fit(frame: np.ndarray, max_side: int) -> np.ndarray:
    """`frame` (uint8 [H, W, 3]) resized so that its longer side is `max_side`, keeping its aspect ratio.

    Enlarging uses nearest neighbour, so small frames stay crisp (and patch edges stay sharp); shrinking uses
    Lanczos, so large frames do not alias.
    """
    _check_frame(frame)
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return frame
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(frame).resize(size, resample))


def token_map(grid_values: np.ndarray, height: int, width: int) -> np.ndarray:
    """`grid_values` ([rows, cols]) spread over a `height x width` picture: each pixel takes its token's value."""
    rows, cols = grid_values.shape
    row_of = np.arange(height) * rows // height
    col_of = np.arange(width) * cols // width
    return grid_values[row_of[:, None], col_of[None, :]]


def cluster_overlay(frame: np.ndarray, clusters: np.ndarray, tint: float = 0.65) -> np.ndarray:
    """The frame with each merged token's patches tinted with their mean colour and every cluster outlined.

    Args:
        frame: uint8 [H, W, 3].
        clusters: int [rows, cols], the merged token of each original token (`Trace.clusters()[t]`).
        tint: 0 leaves the frame as it is, 1 paints each cluster in its flat mean colour.
    """
    _check_frame(frame)
    _check_grid(clusters, "clusters")
    if not 0.0 <= tint <= 1.0:
        raise ValueError(f"tint must be in [0, 1], got {tint}")
    ids = token_map(np.unique(clusters, return_inverse=True)[1].reshape(clusters.shape), *frame.shape[:2])
    pixels = frame.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(ids.ravel())
    means = np.stack([np.bincount(ids.ravel(), weights=pixels[:, c]) for c in range(3)], axis=1) / counts[:, None]
    picture = (1 - tint) * frame + tint * means[ids]
    picture[_edges(ids)] = BORDER_COLOUR
    return picture.round().astype(np.uint8)


def kept_overlay(frame: np.ndarray, kept: np.ndarray, dim: float = 0.3) -> np.ndarray:
    """The frame with the tokens that were dropped shown in dark grey and the kept region outlined.

    Args:
        frame: uint8 [H, W, 3].
        kept: bool [rows, cols], whether each original token's merged token was processed (`Trace.kept_patches`).
        dim: brightness left to dropped tokens, in [0, 1].
    """
    _check_frame(frame)
    _check_grid(kept, "kept")
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"dim must be in [0, 1], got {dim}")
    mask = token_map(kept.astype(bool), *frame.shape[:2])
    # Grey rather than only darker: dropped tokens must stand out even in a dark frame.
    grey = frame.astype(np.float64).mean(axis=2, keepdims=True)
    picture = np.where(mask[..., None], frame, dim * grey + (1 - dim) * 24)
    # Outline on the kept side of the boundary, so it never hides a dropped token.
    picture[_edges(mask, both_sides=True) & mask] = KEPT_BORDER_COLOUR
    return picture.round().astype(np.uint8)


def _edges(ids: np.ndarray, both_sides: bool = False) -> np.ndarray:
    """bool [H, W]: pixels whose right or lower neighbour has another id (a 1-pixel line between regions), or,
    with `both_sides`, any of whose four neighbours has (a line on each side)."""
    edges = np.zeros(ids.shape, dtype=bool)
    across = ids[:, :-1] != ids[:, 1:]
    down = ids[:-1, :] != ids[1:, :]
    edges[:, :-1] |= across
    edges[:-1, :] |= down
    if both_sides:
        edges[:, 1:] |= across
        edges[1:, :] |= down
    return edges


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be a uint8 [H, W, 3] array, got {getattr(frame, 'shape', type(frame))}")


def _check_grid(grid: np.ndarray, name: str) -> None:
    if not isinstance(grid, np.ndarray) or grid.ndim != 2 or 0 in grid.shape:
        raise ValueError(f"{name} must be a [rows, cols] array, got {getattr(grid, 'shape', type(grid))}")
