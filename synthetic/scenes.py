"""Seeded synthetic long videos with one-word questions about specific moments.

A scene is a textured, slowly changing background over which coloured shapes appear, move in a straight line and
disappear, each at its own moment. Most shapes stay for a large part of the video; "brief" ones flash for a couple
of frames, so that only dense frame sampling sees them. Everything is a pure function of the seed.

Every question is labelled with `min_frames`: the fewest uniformly sampled frames (from FRAME_COUNTS) that show
all the evidence it needs, for every common way of placing a uniform sampling grid (`sampling_grids`). A model that
is given that many frames can answer it; a model given fewer may not be able to.

Question rules: a question is asked about some sampled frames only when a person looking at just those frames, at the
demo model's 64 px, answers it for certain (`_answerable`; tests/test_synthetic.py checks them from the pixels):
- "first" / "last": the first (last) shape to be seen is alone in the frame where it is first seen.
- "right after X": X and the shape after it are first seen in different frames, and no other shape is first seen
  in the same frames or between them.
- "what colour is the ring" / "what shape is the red object": the video holds one such shape, and it is seen.
- "how many": every shape of that colour (or shape) in the video is seen.
- "which way": the shape is seen in two or more frames, and between the first and the last of them it moves at
  least MIN_SHIFT of the frame width (3.8 px at 64 px, a quarter of a pooled visual token) along its direction.
- "does a ... appear": "yes" when it is seen; "no" only for pairs absent from the whole video, whose colour or shape
  is in it (so both must be checked together).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "yellow": (240, 210, 30),
    "green": (40, 190, 60),
    "cyan": (30, 200, 220),
    "blue": (40, 70, 240),
    "purple": (160, 50, 210),
}
# Chosen to differ at the scale of a few 8 px patches (filled, hollow, elongated, thin-armed): from scratch, a
# small ViT tells these apart much sooner than circles from squares or triangles.
SHAPES = ("circle", "ring", "bar", "cross")
PLURALS = {"circle": "circles", "ring": "rings", "bar": "bars", "cross": "crosses"}
DIRECTIONS = ("left", "right", "up", "down")
NUMBERS = ("zero", "one", "two", "three")
KINDS = ("first", "last", "after", "which", "count", "direction", "exists")

# Frame counts a question's `min_frames` is chosen from; the app samples 32 frames by default, up to 128 or more.
FRAME_COUNTS = (4, 8, 16, 32, 64, 128, 256)
MIN_VIDEO_FRAMES, MAX_VIDEO_FRAMES = 64, 256

# Seeds of the three splits never overlap.
SPLITS: dict[str, range] = {
    "train": range(1_000_000_000),
    "val": range(1_000_000_000, 1_100_000_000),
    "test": range(2_000_000_000, 2_100_000_000),
}

# A move must shift a shape by this much (fraction of the frame width) between the first and last sampled frames
# showing it before its direction counts as visible: a quarter of a pooled visual token at 4x4 tokens per frame.
MIN_SHIFT = 0.06
_NOISE_GRID = 32  # per-frame noise lives on this grid at every render size, so it looks the same at 64 and 256 px


@dataclass(frozen=True)
class Sprite:
    """A shape that is visible in frames [start, stop) and moves in a straight line from (x0, y0) to (x1, y1).

    Coordinates are fractions of the frame (x to the right, y down); `size` is the diameter, a fraction too.
    """

    shape: str
    colour: str
    start: int
    stop: int
    x0: float
    y0: float
    x1: float
    y1: float
    size: float

    def centre(self, t: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Centre at frame(s) t, interpolated linearly over the visible frames."""
        a = (np.asarray(t, dtype=np.float64) - self.start) / max(self.stop - 1 - self.start, 1)
        return self.x0 + a * (self.x1 - self.x0), self.y0 + a * (self.y1 - self.y0)

    def shown_at(self, frames: np.ndarray) -> np.ndarray:
        """Indices into `frames` (frame numbers) of the frames that show the sprite."""
        return np.flatnonzero((frames >= self.start) & (frames < self.stop))

    def moved(self, a: int, b: int) -> bool:
        """Whether the sprite's direction is visible between frames a and b: it shifts by at least MIN_SHIFT."""
        (xa, xb), (ya, yb) = self.centre(np.array([a, b]))
        return max(abs(xb - xa), abs(yb - ya)) >= MIN_SHIFT

    def seen_moving(self, frames: np.ndarray) -> bool:
        """Whether the frame numbers `frames` show which way the sprite moves: two or more show it, and it `moved`
        between the first and the last of them."""
        shown = frames[self.shown_at(frames)]
        return len(shown) >= 2 and self.moved(shown[0], shown[-1])

    @property
    def direction(self) -> str:
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Background:
    """A tinted grey with a slowly turning linear gradient, a static low-frequency texture and per-frame noise."""

    base: tuple[float, float, float]  # RGB in [0, 1]
    gradient: float  # peak-to-peak amplitude of the linear gradient
    angle0: float  # gradient direction at the first frame, radians
    turn: float  # how far the gradient direction turns over the whole video, radians
    texture: float  # amplitude of the low-frequency texture
    noise: float  # amplitude of the per-frame noise
    seed: int  # seeds the texture and noise grids, which do not depend on the render size


@dataclass(frozen=True)
class Scene:
    seed: int
    num_frames: int
    background: Background
    sprites: tuple[Sprite, ...]  # ordered by start frame; starts are distinct


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    kind: str  # one of KINDS
    min_frames: int  # fewest frames in FRAME_COUNTS whose every uniform sampling grid shows the evidence


@dataclass(frozen=True)
class Example:
    seed: int
    scene: Scene
    frames: np.ndarray  # uint8 [T, size, size, 3]
    questions: list[Question]


def split_seeds(split: str, count: int, offset: int = 0) -> range:
    """`count` seeds of `split` ("train", "val" or "test"), starting `offset` seeds into it."""
    seeds = SPLITS[split]
    if offset + count > len(seeds):
        raise ValueError(f"the {split} split has {len(seeds)} seeds, asked for {offset + count}")
    return seeds[offset : offset + count]


def make_example(seed: int, num_video_frames: int | None = None, size: int = 64) -> Example:
    """The scene of `seed`, rendered at `size` x `size` pixels, with every question about it."""
    scene = make_scene(seed, num_video_frames)
    return Example(seed, scene, render(scene, size), questions(scene))


# ---------------------------------------------------------------------------------------------------- sampling


def sampling_grids(num_video_frames: int, num_frames: int) -> list[np.ndarray]:
    """The uniform ways of picking `num_frames` of `num_video_frames` frames that question labels must survive.

    Segment starts, quarters and centres (the app's `aim_core.video.frame_indices` uses centres), and
    `np.linspace` over the whole video, truncated and rounded (LLaVA's own loaders). All frames when there are
    no more frames than asked for.
    """
    if num_frames >= num_video_frames:
        return [np.arange(num_video_frames)]
    stride = num_video_frames / num_frames
    grids = [((np.arange(num_frames) + phase) * stride).astype(np.int64) for phase in (0.0, 0.25, 0.5, 0.75)]
    line = np.linspace(0, num_video_frames - 1, num_frames)
    return grids + [line.astype(np.int64), line.round().astype(np.int64)]


# ---------------------------------------------------------------------------------------------------- scenes


def make_scene(seed: int, num_video_frames: int | None = None) -> Scene:
    """A random scene: 3 to 5 long-lived moving shapes and 0 to 2 brief ones, all (colour, shape) pairs distinct,
    at most 3 of any colour or shape, starts well apart, no two shapes overlapping while both are visible."""
    rng = np.random.default_rng(seed)
    num_frames = num_video_frames or int(rng.integers(MIN_VIDEO_FRAMES, MAX_VIDEO_FRAMES + 1))
    background = Background(
        base=tuple(float(v) for v in rng.uniform(0.35, 0.55) + rng.uniform(-0.05, 0.05, 3)),
        gradient=float(rng.uniform(0.1, 0.2)),
        angle0=float(rng.uniform(0, 2 * np.pi)),
        turn=float(rng.uniform(-np.pi, np.pi)),
        texture=float(rng.uniform(0.06, 0.12)),
        noise=float(rng.uniform(0.02, 0.04)),
        seed=int(rng.integers(2**31)),
    )
    while True:  # rejection sampling; rarely needs more than a few tries
        sprites = _try_sprites(rng, num_frames)
        if sprites is not None:
            return Scene(seed, num_frames, background, sprites)


def _try_sprites(rng: np.random.Generator, num_frames: int) -> tuple[Sprite, ...] | None:
    num_long = int(rng.integers(3, 6))
    num_brief = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = [pairs[i] for i in rng.choice(len(pairs), num_long + num_brief, replace=False)]
    for values in (c for c, _ in chosen), (s for _, s in chosen):
        if max(np.unique(list(values), return_counts=True)[1]) > 3:
            return None

    # Long shapes start at least 7% of the video apart (two strides of a 32-frame grid) and stay 12-40% of it,
    # so 32 sampled frames always show each of them several times and in the right order.
    starts = np.sort(rng.uniform(0.0, 0.85, num_long))
    if num_long > 1 and np.diff(starts).min() < 0.07:
        return None
    spans = [(round(a * num_frames), min(round((a + rng.uniform(0.12, 0.4)) * num_frames), num_frames)) for a in starts]
    # Brief shapes last 0.8-1.8% of the video: 2-4 frames of 256, fewer than a 32-frame grid's stride of 8, so
    # 32 sampled frames can miss them, while 128 (stride 2) catch them. Their starts keep 3% from all others.
    for _ in range(num_brief):
        a = rng.uniform(0.02, 0.97)
        start = round(a * num_frames)
        if any(abs(start - s) < 0.03 * num_frames for s, _ in spans):
            return None
        spans.append((start, min(start + max(1, round(rng.uniform(0.008, 0.018) * num_frames)), num_frames)))

    sprites: list[Sprite] = []
    for i, ((colour, shape), (start, stop)) in enumerate(zip(chosen, spans)):
        sprite = _place(rng, shape, colour, start, stop, brief=i >= num_long, others=sprites)
        if sprite is None:
            return None
        sprites.append(sprite)
    return tuple(sorted(sprites, key=lambda s: s.start))


def _place(
    rng: np.random.Generator, shape: str, colour: str, start: int, stop: int, brief: bool, others: list[Sprite]
) -> Sprite | None:
    """A path for a new sprite that keeps clear of every sprite visible at the same time (None after 100 tries)."""
    size = float(rng.uniform(0.22, 0.3))
    margin = size / 2 + 0.03
    for _ in range(100):
        direction = DIRECTIONS[rng.integers(4)]
        shift = rng.uniform(0.0, 0.02) if brief else rng.uniform(0.2, 0.5)
        across = rng.uniform(margin, 1 - margin)
        along0 = rng.uniform(margin, 1 - margin - shift)
        along = (along0, along0 + shift) if direction in ("right", "down") else (along0 + shift, along0)
        x0, x1, y0, y1 = (*along, across, across) if direction in ("left", "right") else (across, across, *along)
        sprite = Sprite(shape, colour, start, stop, float(x0), float(y0), float(x1), float(y1), size)
        if all(_clear(sprite, other) for other in others):
            return sprite
    return None


def _clear(a: Sprite, b: Sprite) -> bool:
    frames = np.arange(max(a.start, b.start), min(a.stop, b.stop))
    if len(frames) == 0:
        return True
    (ax, ay), (bx, by) = a.centre(frames), b.centre(frames)
    return bool(np.hypot(ax - bx, ay - by).min() > (a.size + b.size) / 2 + 0.03)


# ---------------------------------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int, frames: np.ndarray | None = None) -> np.ndarray:
    """uint8 [len(frames), size, size, 3]: the given frame indices (default all) at size x size pixels.

    Rendering at 256 px and resizing to 64 px gives about what rendering at 64 px gives: shapes are anti-aliased
    from exact outlines, and the texture and noise live on fixed grids."""
    frames = np.arange(scene.num_frames) if frames is None else np.asarray(frames)
    images = _background(scene.background, scene.num_frames, size, frames)
    centres = (np.arange(size) + 0.5) / size
    for sprite in scene.sprites:
        colour = np.array(COLOURS[sprite.colour], dtype=np.float32) / 255
        half = int(np.ceil(sprite.size * 0.55 * size)) + 1  # box around the centre that holds the whole outline
        for k in sprite.shown_at(frames):
            cx, cy = sprite.centre(frames[k])
            px, py = int(cx * size), int(cy * size)
            x_lo, x_hi, y_lo, y_hi = max(px - half, 0), min(px + half, size), max(py - half, 0), min(py + half, size)
            dx = (centres[x_lo:x_hi] - cx)[None, :]
            dy = (centres[y_lo:y_hi] - cy)[:, None]
            # Coverage from the signed distance in pixels: a one-pixel-wide anti-aliased edge.
            cover = np.clip(0.5 - _SDF[sprite.shape](dx, dy, sprite.size / 2) * size, 0, 1)[..., None]
            patch = images[k, y_lo:y_hi, x_lo:x_hi]
            images[k, y_lo:y_hi, x_lo:x_hi] = patch + cover * (colour - patch)
    images *= 255
    images += 0.5
    return np.clip(images, 0, 255, out=images).astype(np.uint8)


def _background(bg: Background, num_frames: int, size: int, frames: np.ndarray) -> np.ndarray:
    """float32 [len(frames), size, size, 3]: a static coloured part plus a grey part that changes every frame."""
    rng = np.random.default_rng(bg.seed)
    coarse = rng.uniform(-1, 1, (6, 6, 1)) + 0.35 * rng.uniform(-1, 1, (6, 6, 3))
    fine = rng.uniform(-1, 1, (14, 14, 1))
    noise = rng.uniform(-1, 1, (num_frames, _NOISE_GRID, _NOISE_GRID)).astype(np.float32)[frames]
    static = np.asarray(bg.base) + bg.texture * (0.6 * _upsample(coarse, size) + 0.4 * _upsample(fine, size))
    cell = np.arange(size) * _NOISE_GRID // size
    angle = bg.angle0 + bg.turn * frames / num_frames
    pos = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    cos, sin = (bg.gradient * np.cos(angle)).astype(np.float32), (bg.gradient * np.sin(angle)).astype(np.float32)
    grey = cos[:, None, None] * pos[None, None, :] + sin[:, None, None] * pos[None, :, None]
    grey += bg.noise * noise[:, cell[:, None], cell[None, :]]
    return static.astype(np.float32)[None] + grey[..., None]


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolation of a [g, g, C] grid, spread over the frame, at the centres of size x size pixels."""
    g = grid.shape[0]
    u = np.clip((np.arange(size) + 0.5) / size * g - 0.5, 0, g - 1)
    lo = np.minimum(u.astype(np.int64), g - 2)
    weights = np.zeros((size, g))
    weights[np.arange(size), lo] = 1 - (u - lo)
    weights[np.arange(size), lo + 1] = u - lo
    # optimize=True contracts one operand at a time instead of looping over all three at once: far faster, and
    # equal up to float rounding (about 1e-15), so the rendered uint8 frames are identical.
    return np.einsum("yi,ijc,xj->yxc", weights, grid, weights, optimize=True)


def _box(dx: np.ndarray, dy: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    return np.maximum(np.abs(dx) - half_w, np.abs(dy) - half_h)


# The radius r is half the sprite size; the shapes are scaled to about the same visual weight.
_SDF: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "circle": lambda dx, dy, r: np.hypot(dx, dy) - 0.85 * r,
    "ring": lambda dx, dy, r: np.abs(np.hypot(dx, dy) - 0.72 * r) - 0.28 * r,
    "bar": lambda dx, dy, r: _box(dx, dy, 1.0 * r, 0.38 * r),
    "cross": lambda dx, dy, r: np.minimum(_box(dx, dy, 1.0 * r, 0.3 * r), _box(dx, dy, 0.3 * r, 1.0 * r)),
}


# ---------------------------------------------------------------------------------------------------- questions


def questions(scene: Scene) -> list[Question]:
    """Every question about the scene, each with the fewest frames (FRAME_COUNTS) that answer it reliably."""
    return _labelled(scene, _answerable(scene, np.arange(scene.num_frames)))


def questions_seen(scene: Scene, frames: np.ndarray) -> list[Question]:
    """The questions about the scene that someone shown only the given frame indices can answer for sure."""
    seen = _answerable(scene, frames)
    truth = _answerable(scene, np.arange(scene.num_frames))
    return _labelled(scene, {text: truth[text] for text in truth if text in seen})


def _labelled(scene: Scene, asked: dict[str, tuple[str, str]]) -> list[Question]:
    """The `asked` questions ({question: (answer, kind)}), each labelled with its `min_frames`."""
    remaining = set(asked)
    min_frames: dict[str, int] = {}
    for count in FRAME_COUNTS:
        if not remaining:  # each count costs five `_answerable` calls; a short sampling shows few questions
            break
        seen = [set(_answerable(scene, grid)) for grid in sampling_grids(scene.num_frames, count)]
        for text in [t for t in remaining if all(t in s for s in seen)]:
            min_frames[text] = count
            remaining.remove(text)
    return [Question(text, answer, kind, min_frames[text]) for text, (answer, kind) in asked.items()]


def _answerable(scene: Scene, frames: np.ndarray) -> dict[str, tuple[str, str]]:
    """{question: (answer, kind)} for every question that someone shown only `frames` can answer for sure."""
    frames = np.unique(frames)
    sprites = scene.sprites
    shown = [frames[s.shown_at(frames)] for s in sprites]
    # When each sprite is first seen; None if never. Ties make an order unreadable.
    first = [int(f[0]) if len(f) else None for f in shown]
    seen = [f for f in first if f is not None]

    def alone(i: int) -> bool:
        return first[i] is not None and seen.count(first[i]) == 1

    out: dict[str, tuple[str, str]] = {}

    def ask(kind: str, text: str, answer: str) -> None:
        out[text] = (answer, kind)

    # Sprites are sorted by start, so sprite 0 appears first and the last one last.
    if alone(0) and first[0] == min(seen):
        ask("first", "Which colour appears first?", sprites[0].colour)
        ask("first", "Which shape appears first?", sprites[0].shape)
    if alone(-1) and first[-1] == max(seen):
        ask("last", "Which colour appears last?", sprites[-1].colour)
        ask("last", "Which shape appears last?", sprites[-1].shape)
    for i in range(len(sprites) - 1):
        later = [f for f in seen if f > first[i]] if first[i] is not None else []
        if alone(i) and alone(i + 1) and first[i + 1] == min(later, default=None):
            ask("after", f"Which colour appears right after the {sprites[i].name}?", sprites[i + 1].colour)
            ask("after", f"Which shape appears right after the {sprites[i].name}?", sprites[i + 1].shape)

    for shape in SHAPES:
        having = [i for i, s in enumerate(sprites) if s.shape == shape]
        if len(having) == 1 and first[having[0]] is not None:
            ask("which", f"What colour is the {shape}?", sprites[having[0]].colour)
        if all(first[i] is not None for i in having):
            ask("count", f"How many {PLURALS[shape]} appear?", NUMBERS[len(having)])
    for colour in COLOURS:
        having = [i for i, s in enumerate(sprites) if s.colour == colour]
        if len(having) == 1 and first[having[0]] is not None:
            ask("which", f"What shape is the {colour} object?", sprites[having[0]].shape)
        if all(first[i] is not None for i in having):
            ask("count", f"How many {colour} objects appear?", NUMBERS[len(having)])

    for sprite in sprites:
        if sprite.seen_moving(frames):
            ask("direction", f"Which way does the {sprite.name} move?", sprite.direction)

    names = {s.name for s in sprites}
    colours, shapes = {s.colour for s in sprites}, {s.shape for s in sprites}
    for sprite, f in zip(sprites, first):
        if f is not None:
            ask("exists", f"Does a {sprite.name} appear?", "yes")
    # Absent pairs whose colour or shape is in the video, so that "no" needs both to be checked together.
    for colour in COLOURS:
        for shape in SHAPES:
            if f"{colour} {shape}" not in names and (colour in colours or shape in shapes):
                ask("exists", f"Does a {colour} {shape} appear?", "no")
    return out


def pick(
    candidates: list[Question], rng: np.random.Generator, per_kind: int, kinds: tuple[str, ...] = KINDS
) -> Iterator[Question]:
    """Up to `per_kind` questions of each kind, without repeats, each drawn by first choosing an answer uniformly
    among the answers the kind has left, so that no answer dominates (e.g. yes and no come equally often)."""
    for kind in kinds:
        pool = [q for q in candidates if q.kind == kind]
        for _ in range(min(per_kind, len(pool))):
            answers = sorted({q.answer for q in pool})
            answer = answers[rng.integers(len(answers))]
            matching = [q for q in pool if q.answer == answer]
            chosen = matching[rng.integers(len(matching))]
            pool.remove(chosen)
            yield chosen
