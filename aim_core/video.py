"""Read and write videos: probe without decoding, sample frames uniformly in time, write browser-playable H.264.

Frames are picked by their real presentation times, so variable-frame-rate videos (phones, screen recordings) come
out right: the probe demuxes the video stream's packets (no decoding) to list every frame's timestamp, and
`sample_frames` takes the frame on screen at the centre of each of `num_frames` equal segments of the real duration.
Backends, tried in order: PyAV (seek + decode forward), decord (`VideoReader.get_batch`), OpenCV. Each decodes exactly
the frames of that list, so all of them return the same frames (up to small decoder and scaler differences) with the
same timestamps: the frames' own.

Cost and memory: `sample_frames` decodes only the frames it returns (plus the frames between each one and the
keyframe before it), and scales each one while decoding to the size the caller asks for (`fit`), under a budget for
all the decoded frames, so neither a long video nor a huge frame size makes it slow or large.

Damaged files: a frame that does not decode is replaced by the next one that does (or the last one before it at the
end of the file), and `SampledFrames.note` says how many were replaced; a file whose header claims more than its data
holds is read for what it holds, with a note. Decoders' own messages go to the log, not into exceptions.
"""

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from aim_core.errors import SettingsError, VideoError

log = logging.getLogger(__name__)

BACKENDS = ("pyav", "decord", "opencv")

# Decoded frames of one call may take this much memory at most; beyond it they are scaled down further.
DEFAULT_FRAME_BUDGET = 3 * 2**29  # 1.5 GiB

# A header that declares more than this beyond the last frame's end gets a note. Smaller gaps are not worth
# mentioning: a declared duration can be rounded or count an audio track's tail.
_TRUNCATION_TOLERANCE_S = 1.0
_MIN_SIDE = 16  # the smallest frame side the memory budget may scale frames down to
_DECORD_CHUNK = 16  # frames per decord batch: bounds decord's own copy of the batch
# Above this many pixels a frame, decoders run one frame at a time: frame threading keeps a frame per thread in
# flight (~100 MB more at 4000x4000, measured by benchmarks/real_inputs.py) for a small gain in speed.
_FRAME_THREADING_MAX_PIXELS = 3840 * 2160
_RETRIES = 3  # earlier keyframes tried when a seek lands past the frame wanted, or later ones when a frame is damaged

FitSize = Callable[[int, int], tuple[int, int]]


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` reads: the video stream's packets, and its first decodable frame.

    `num_frames` counts the frames the file's data holds (not what its header claims), and `duration` runs from the
    first frame's presentation time to the end of the last one's. `fps` is the stream's average frame rate.
    `width` and `height` are of the upright picture: frames are returned rotated by `rotation` degrees
    counter-clockwise, as the file's display matrix asks (phones record portrait this way). `note` says, in a
    sentence, what is wrong with a file that is read anyway (its header claims more than it holds), or is empty.
    """

    path: str
    fps: float
    duration: float
    num_frames: int
    width: int
    height: int
    rotation: int = 0
    note: str = ""


@dataclass(frozen=True)
class SampledFrames:
    """Frames sampled from a video.

    frames: uint8 [T, H, W, 3], RGB, upright.
    timestamps: float64 [T], presentation times of those frames, seconds from the start of the video.
    fps, duration: of the whole video (average frame rate; duration in seconds).
    path: the video file, or None for frames that came from memory.
    backend: "decord", "pyav", "opencv" or "array".
    damaged: how many of the frames stand in for ones that could not be decoded (the next decodable frame, or at the
        end of the file the last one).
    note: a sentence for the user about a damaged or truncated file, or empty.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    duration: float
    path: str | None
    backend: str
    damaged: int = 0
    note: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_array(cls, frames: np.ndarray, fps: float = 1.0) -> "SampledFrames":
        """Wrap in-memory frames, uint8 [T, H, W, 3] RGB, taken `fps` times a second."""
        _check_frames(frames)
        _check_fps(fps)
        timestamps = np.arange(len(frames), dtype=np.float64) / fps
        return cls(frames, timestamps, float(fps), len(frames) / fps, None, "array")


@dataclass(frozen=True)
class _Timeline:
    """The video stream's frames in presentation order, as its packets list them.

    pts: int64 [N], sorted and distinct, in `time_base` units. end: where the last frame's display ends.
    keyframes: int64 [K], sorted indices into `pts` of the frames a decoder can start from (the first frame always
    counts as one). start_time: the stream's start, which OpenCV counts its times from.
    """

    pts: np.ndarray
    end: int
    keyframes: np.ndarray
    time_base: Fraction
    start_time: int

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def seconds(self) -> np.ndarray:
        """float64 [N]: each frame's time from the first frame's."""
        return (self.pts - self.pts[0]) * float(self.time_base)

    @property
    def duration(self) -> float:
        return float((self.end - self.pts[0]) * self.time_base)

    def index_of(self, pts: int) -> int:
        """The frame on screen at `pts`."""
        return max(int(np.searchsorted(self.pts, pts, side="right")) - 1, 0)

    def keyframe_before(self, index: int) -> int:
        """Position in `keyframes` of the last keyframe at or before frame `index` (0 if none is)."""
        return max(int(np.searchsorted(self.keyframes, index, side="right")) - 1, 0)

    def keyframe_between(self, position: int, index: int) -> bool:
        """Whether a keyframe lies after frame `position` and at or before frame `index`, so that seeking decodes
        less than going on from `position`."""
        return bool(np.searchsorted(self.keyframes, index, side="right") >
                    np.searchsorted(self.keyframes, position, side="right"))


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's frame rate, frame count, duration and size, and check that it is readable. Raises VideoError.

    Reads every packet of the video stream (not decoding them, so it costs little next to decoding) and decodes the
    first frame; the result is kept for the file while it is unchanged, so `sample_frames` does not read it again.
    """
    return _probe(_check_file(path))[0]


def frame_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices, int64 [min(num_frames, num_available)], at the centres of `num_frames` equal segments."""
    if num_frames >= num_available:
        return np.arange(num_available)
    return ((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)


def sample_frames(path: str | os.PathLike, num_frames: int, backend: str | None = None, *,
                  fit: FitSize | None = None, max_bytes: int = DEFAULT_FRAME_BUDGET) -> SampledFrames:
    """Decode the `num_frames` frames on screen at the centres of equal segments of the video's duration (every frame
    once if it has no more than that).

    fit: maps the upright source `(height, width)` to the `(height, width)` to decode at (a model's input size);
        None keeps the source size. Frames are scaled while decoding, never held at the source size.
    backend: one of BACKENDS, or None to try them in order, moving on when one is not installed or fails.
    max_bytes: the most the decoded frames may take together; larger frames are scaled down further, aspect kept.
    Raises SettingsError for a bad argument, VideoError when the video cannot be read or its frames cannot fit.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise SettingsError(f"num_frames must be a whole number >= 1, got {num_frames!r}")
    if backend is not None and backend not in BACKENDS:
        raise SettingsError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise SettingsError(f"max_bytes must be a whole number >= 1, got {max_bytes!r}")
    info, timeline = _probe(_check_file(path))
    wanted = _presented_frames(timeline, int(num_frames))
    distinct, slots = np.unique(wanted, return_inverse=True)  # short segments of a VFR video can share a frame
    height, width = _decode_size(info, fit, len(wanted), max_bytes)
    stored_size = (width, height) if info.rotation % 180 else (height, width)
    missing = []
    for name in [backend] if backend else BACKENDS:
        try:
            frames, decoded = _decode(name, info, timeline, distinct, stored_size)
        except ImportError:
            missing.append(name)
            continue
        except VideoError as error:
            log.warning("%s could not decode %s: %s", name, info.path, error)
            continue
        damaged = int((decoded != distinct)[slots].sum())
        notes = [info.note] if info.note else []
        if damaged:
            notes.append(f"{damaged} of the {len(wanted)} sampled frames could not be decoded; neighbouring "
                         "decodable frames stand in for them.")
        return SampledFrames(frames[slots] if len(distinct) < len(wanted) else frames,
                             timeline.seconds[decoded][slots], info.fps, info.duration, info.path, name, damaged,
                             " ".join(notes))
    if len(missing) == (1 if backend else len(BACKENDS)):
        raise VideoError(f"no video decoder is installed (tried {', '.join(missing)})")
    raise VideoError(f"{info.path} could not be decoded: it is damaged, or its format is not supported")


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write uint8 [T, H, W, 3] RGB frames as an H.264 yuv420p mp4 that browsers play.

    yuv420p needs even sizes, so an odd height or width is padded by repeating the last row or column.
    """
    _check_frames(frames)
    _check_fps(fps)
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    try:
        # faststart puts the index first, so a browser can start playing before the whole file has arrived.
        with av.open(os.fspath(path), "w", format="mp4", container_options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"could not write {path}: {error}") from None


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video file not found: {path}")
    if not os.path.isfile(path):
        raise VideoError(f"{path} is a directory or special file, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path} is empty (0 bytes)")
    return path


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise VideoError(f"frames must be a uint8 numpy array, got {getattr(frames, 'dtype', type(frames).__name__)}")
    if frames.ndim != 4 or frames.shape[3] != 3 or 0 in frames.shape:
        raise VideoError(f"frames must have shape [T, H, W, 3] with T, H, W >= 1, got {list(frames.shape)}")


def _check_fps(fps: float) -> None:
    if not np.isfinite(fps) or fps <= 0:
        raise SettingsError(f"fps must be a positive number, got {fps!r}")


def _probe(path: str) -> tuple[VideoInfo, _Timeline]:
    status = os.stat(path)
    return _probe_file(path, status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=16)
def _probe_file(path: str, mtime_ns: int, size: int) -> tuple[VideoInfo, _Timeline]:
    """The probe of a file as it is at (`mtime_ns`, `size`): the app probes on upload and samples next."""
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            first = _first_frame(container, stream, path)
        with av.open(path) as container:
            stream = container.streams.video[0]
            timeline = _read_timeline(container, stream, path)
            declared = _declared_seconds(stream)
            rate = stream.average_rate or stream.guessed_rate
    except av.FFmpegError as error:
        log.warning("probing %s failed: %s", path, error)
        raise VideoError(f"{path} is not a readable video (not a video, or corrupt or truncated)") from None
    duration = timeline.duration
    if rate and rate > 0:
        fps = float(rate)
    elif len(timeline) > 1:
        fps = (len(timeline) - 1) / float(timeline.seconds[-1])
    else:
        raise VideoError(f"{path} does not say its frame rate")
    note = ""
    if declared and declared - duration > _TRUNCATION_TOLERANCE_S:
        note = (f"The file says it lasts {_clock(declared)} but holds {_clock(duration)} of video (it may be cut "
                f"short); the {_clock(duration)} it holds were used.")
    rotation = round(first.rotation / 90) * 90 % 360
    width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
    return VideoInfo(path, fps, duration, len(timeline), width, height, rotation, note), timeline


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream: it holds no frames, or it is truncated or not a video")
    return container.streams.video[0]


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str
) -> av.VideoFrame:
    """Decode the first decodable frame: it proves the codec works and carries the size and the rotation."""
    frame = next((frame for _, frame in _decoded_frames(container, stream)), None)
    if frame is None:
        raise VideoError(f"{path} has no decodable video frames (it may be damaged or truncated)")
    return frame


def _read_timeline(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str
) -> _Timeline:
    """Every frame's timestamp, from the packets (demuxed, not decoded): the data the file really holds."""
    stamps, durations, keyframes = [], {}, set()
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as error:  # damaged container data: keep the frames before it
            log.warning("%s: reading packets stopped early: %s", path, error)
            break
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None or packet.size == 0 or packet.is_discard:  # the flush packet; frames an edit list cuts
            continue
        stamps.append(pts)
        durations[pts] = packet.duration or 0
        if packet.is_keyframe:
            keyframes.add(pts)
    if not stamps:
        raise VideoError(f"{path} has no readable video frames (it may be truncated)")
    pts = np.unique(np.array(stamps, dtype=np.int64))
    last_duration = durations[int(pts[-1])] or (int(pts[-1] - pts[-2]) if len(pts) > 1 else 0)
    if not last_duration and stream.average_rate:
        last_duration = round(1 / (stream.average_rate * stream.time_base))
    return _Timeline(
        pts=pts,
        end=int(pts[-1]) + last_duration,
        keyframes=np.searchsorted(pts, sorted(keyframes | {int(pts[0])})),
        time_base=stream.time_base,
        start_time=stream.start_time or 0,
    )


def _declared_seconds(stream: av.video.stream.VideoStream) -> float | None:
    """How long the stream's header says it is: mp4, mov and avi state a duration or frame count; mkv and webm
    writers (ffmpeg, mkvmerge) usually add a DURATION tag."""
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if stream.frames > 0 and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return _tag_seconds(stream.metadata.get("DURATION", ""))


def _tag_seconds(tag: str) -> float | None:
    """Seconds in a Matroska "HH:MM:SS.nnnnnnnnn" tag, or None."""
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _clock(seconds: float) -> str:
    """'12.3 s', or '1:02:03' from a minute on."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _presented_frames(timeline: _Timeline, num_frames: int) -> np.ndarray:
    """int64 [min(num_frames, N)]: the frame on screen at the centre of each of `num_frames` equal segments of the
    duration; every frame once when there are no more than `num_frames`.

    Integer arithmetic on timestamps, with a frame counted as shown from one tick before its timestamp: timestamps
    are rounded to ticks (milliseconds in mkv and webm), and a centre that falls on a frame's start then still gets
    that frame, as `frame_indices` gives on a constant-rate video.
    """
    if num_frames >= len(timeline):
        return np.arange(len(timeline))
    offsets = (timeline.pts - timeline.pts[0] - 1) * (2 * num_frames)
    centres = (2 * np.arange(num_frames, dtype=np.int64) + 1) * (timeline.end - int(timeline.pts[0]))
    return (np.searchsorted(offsets, centres, side="right") - 1).clip(0)


def _decode_size(info: VideoInfo, fit: FitSize | None, count: int, max_bytes: int) -> tuple[int, int]:
    """The upright (height, width) to decode `count` frames at: `fit`'s choice, scaled down (aspect kept) until
    they take at most `max_bytes`."""
    size = fit(info.height, info.width) if fit is not None else (info.height, info.width)
    if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(side, (int, np.integer)) and side >= 1
                                                               for side in size)):
        raise SettingsError(f"fit must return (height, width) as two whole numbers >= 1, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if count * height * width * 3 <= max_bytes:
        return height, width
    scale = math.sqrt(max_bytes / (count * height * width * 3))
    smaller = int(height * scale), int(width * scale)
    if min(smaller) < _MIN_SIDE:
        raise VideoError(f"{count} frames do not fit in the {max_bytes / 2**20:.0f} MiB memory budget for decoded "
                         f"frames, even at {smaller[1]}x{smaller[0]} pixels; ask for fewer frames")
    log.info("%s: decoding %d frames at %dx%d instead of %dx%d to stay within %d MiB", info.path, count,
             smaller[1], smaller[0], width, height, max_bytes // 2**20)
    return smaller


def _decode(name: str, info: VideoInfo, timeline: _Timeline, wanted: np.ndarray,
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames `wanted` (sorted, distinct indices into `timeline`) decoded by backend `name` at the stored `size`.

    Returns uint8 [len(wanted), H, W, 3] upright RGB frames and int64 [len(wanted)] the index of the frame each
    really is (another one where the wanted frame could not be decoded).
    """
    upright = size[::-1] if info.rotation % 180 else size
    try:
        frames = np.empty((len(wanted), *upright, 3), np.uint8)
        decoded = np.empty(len(wanted), np.int64)
        count = 0
        for count, (index, frame) in enumerate(_READERS[name](info, timeline, wanted, size), start=1):
            if frame.shape != (*size, 3) or frame.dtype != np.uint8:
                raise VideoError(f"decoded a {frame.dtype} frame of shape {list(frame.shape)}, expected {size}")
            frames[count - 1] = np.rot90(frame, info.rotation // 90) if info.rotation else frame
            decoded[count - 1] = index
    except MemoryError:
        raise VideoError(f"not enough memory to decode {len(wanted)} frames at {upright[1]}x{upright[0]}") from None
    if count != len(wanted):
        raise VideoError(f"decoded {count} frames, expected {len(wanted)}")
    return frames, decoded


def _frame_threading(info: VideoInfo) -> bool:
    return info.width * info.height <= _FRAME_THREADING_MAX_PIXELS


def _decoded_frames(container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream) -> Iterator[tuple[int | None, av.VideoFrame]]:
    """(pts, frame) for every frame PyAV decodes from the container's current position; packets that fail to decode
    are skipped (a damaged file), and damaged container data ends the stream."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as error:
            log.debug("reading packets stopped early: %s", error)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as error:
            log.debug("skipping a packet that does not decode (pts %s): %s", packet.pts, error)
            continue
        for frame in frames:
            yield frame.pts, frame


def _read_pyav(info: VideoInfo, timeline: _Timeline, wanted: np.ndarray,
               size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 [H, W, 3] RGB as stored) for each of `wanted`: seeks to the keyframe before each one and decodes
    forward to it, unless it can be reached by decoding forward from the frame before without passing a keyframe."""
    height, width = size
    try:
        with av.open(info.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if _frame_threading(info) else "SLICE"
            frames, position, previous = None, -1, None
            for index in wanted:
                if frames is None or index <= position or timeline.keyframe_between(position, index):
                    frames = _seek_pyav(container, stream, timeline, index)
                found = None
                for pts, frame in frames:
                    position = timeline.index_of(pts) if pts is not None else position
                    if position >= index:
                        found = position, frame
                        break
                    previous = position, frame
                if found is None:  # nothing decodable from here to the end
                    if previous is None:
                        raise VideoError(f"no frame decodes from frame {index} on, nor before it")
                    found, frames = previous, iter(())
                yield found[0], found[1].to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
                previous = found
    except av.FFmpegError as error:
        raise VideoError(str(error)) from None


def _seek_pyav(container: av.container.InputContainer, stream: av.video.stream.VideoStream, timeline: _Timeline,
               index: int) -> Iterator[tuple[int | None, av.VideoFrame]]:
    """Frames decoded from the last keyframe before frame `index` on. When the first frame decoded is already past
    `index` (a container that indexes decoding times can land a keyframe late, or the keyframe is damaged), earlier
    keyframes are tried."""
    nearest = timeline.keyframe_before(index)
    for key in range(nearest, max(nearest - _RETRIES, -1), -1):
        container.seek(int(timeline.pts[timeline.keyframes[key]]), stream=stream)
        frames = _decoded_frames(container, stream)
        first = next(frames, None)
        if first is None:
            return iter(())
        if first[0] is None or timeline.index_of(first[0]) <= index:
            break
    return _chain(first, frames)


def _chain(first: tuple, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _read_decord(info: VideoInfo, timeline: _Timeline, wanted: np.ndarray,
                 size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 [H, W, 3] RGB) for each of `wanted`, in batches. decord numbers frames in presentation order,
    which is checked against the timeline's timestamps; a batch that fails is retried frame by frame."""
    import decord

    if info.rotation:
        raise VideoError("decord does not apply the file's rotation")  # it returns garbled 4-channel frames
    height, width = size
    try:
        reader = decord.VideoReader(info.path, ctx=decord.cpu(0), width=width, height=height,
                                    num_threads=0 if _frame_threading(info) else 1)
        _check_decord_timeline(reader, timeline)
        for start in range(0, len(wanted), _DECORD_CHUNK):
            chunk = wanted[start : start + _DECORD_CHUNK]
            try:
                batch = reader.get_batch(chunk.tolist()).asnumpy()
            except (decord.DECORDError, RuntimeError) as error:
                log.debug("decord failed on frames %s, retrying one by one: %s", chunk.tolist(), error)
                yield from (_decord_nearest(reader, timeline, index) for index in chunk)
            else:
                yield from zip(chunk.tolist(), batch)
    except (decord.DECORDError, RuntimeError) as error:  # decord raises both
        raise VideoError(str(error).splitlines()[0]) from None


def _check_decord_timeline(reader, timeline: _Timeline) -> None:
    """decord's frames must be the timeline's: same count, each within half a frame gap of the same time."""
    if len(reader) != len(timeline):
        raise VideoError(f"decord sees {len(reader)} frames, the packets {len(timeline)}")
    times = reader.get_frame_timestamp(list(range(len(reader))))[:, 0]  # seconds, pts * time base
    expected = timeline.pts * float(timeline.time_base)
    gap = np.diff(expected).min() if len(expected) > 1 else 1.0
    if np.abs(times - expected).max() > max(gap / 2, 1e-3):
        raise VideoError("decord's frame times differ from the packets' timestamps")


def _decord_nearest(reader, timeline: _Timeline, index: int) -> tuple[int, np.ndarray]:
    """Frame `index`, or when it does not decode the next keyframe that does, or the last frame of the video."""
    import decord

    later = timeline.keyframes[timeline.keyframes > index][: _RETRIES - 1].tolist()
    for candidate in [index, *later, len(timeline) - 1]:
        try:
            return candidate, reader.get_batch([candidate]).asnumpy()[0]
        except (decord.DECORDError, RuntimeError) as error:
            log.debug("decord could not decode frame %d: %s", candidate, error)
    raise VideoError(f"decord could not decode frame {index} nor any after it")


def _read_opencv(info: VideoInfo, timeline: _Timeline, wanted: np.ndarray,
                 size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 [H, W, 3] RGB as stored) for each of `wanted`, each scaled right after it is read.

    OpenCV seeks by frame number through the average frame rate, which on a variable-rate video lands anywhere
    near; so each frame is identified by its own timestamp (`CAP_PROP_POS_MSEC`) and read forward to the one wanted,
    seeking earlier when a seek lands past it.
    """
    import cv2

    height, width = size
    capture = cv2.VideoCapture(info.path, cv2.CAP_FFMPEG, [] if _frame_threading(info) else [cv2.CAP_PROP_N_THREADS, 1])
    try:
        if not capture.isOpened():
            raise VideoError("OpenCV cannot open the file")
        # OpenCV rotates by the display matrix itself; turn that off so that the caller does it, as for the others.
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
        reader = _OpenCVReader(capture, timeline)
        position, previous = -1, None
        for index in wanted:
            if position < 0 or index <= position or timeline.keyframe_between(position, index):
                position = reader.seek(index)
            while position is not None and position < index:
                position = reader.grab()
            if position is None:  # the frame and all after it failed (or a failure ended reading): try later keys
                position = reader.next_keyframe(index)
            if position is not None:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise VideoError(f"OpenCV could not read frame {position}")
                previous = position, cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA),
                                                  cv2.COLOR_BGR2RGB)
            elif previous is None:
                raise VideoError(f"OpenCV could not read frame {index} nor any after it")
            else:
                position = -1  # the end: stand in with the last frame read, and seek again for the next one
            yield previous
    except cv2.error as error:
        raise VideoError(str(error).strip().splitlines()[-1]) from None
    finally:
        capture.release()


class _OpenCVReader:
    """Positions an OpenCV capture on frames of the timeline, knowing each grabbed frame by its timestamp."""

    def __init__(self, capture, timeline: _Timeline) -> None:
        import cv2

        self.capture, self.timeline, self.cv2 = capture, timeline, cv2
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 1.0
        # OpenCV's times are milliseconds from the stream's start time.
        self.milliseconds = (timeline.pts - timeline.start_time) * float(timeline.time_base) * 1000

    def grab(self) -> int | None:
        """Grab the next frame; its timeline index, or None at the end or when it fails."""
        if not self.capture.grab():
            return None
        at = self.capture.get(self.cv2.CAP_PROP_POS_MSEC)  # the grabbed frame's own timestamp: find it by that
        after = min(int(np.searchsorted(self.milliseconds, at)), len(self.milliseconds) - 1)
        before = max(after - 1, 0)
        return before if abs(self.milliseconds[before] - at) <= abs(self.milliseconds[after] - at) else after

    def seek(self, index: int) -> int | None:
        """Grab a frame at or before frame `index`, or the first one after it that decodes; its index."""
        seconds = self.milliseconds / 1000
        key = self.timeline.keyframe_before(index)
        starts = [seconds[index], *(seconds[self.timeline.keyframes[max(key - i, 0)]] for i in range(_RETRIES))]
        for start in starts:
            self.capture.set(self.cv2.CAP_PROP_POS_FRAMES, math.floor(start * self.fps))
            position = self.grab()
            if position is not None and position <= index:
                return position
        self.capture.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
        return self.grab()

    def next_keyframe(self, index: int) -> int | None:
        """Grab the first frame that decodes from the keyframes after frame `index` on; its index, or None."""
        for key in self.timeline.keyframes[self.timeline.keyframes > index][:_RETRIES]:
            position = self.seek(int(key))
            while position is not None and position < key:
                position = self.grab()
            if position is not None:
                return position
        return None


_READERS = {"decord": _read_decord, "pyav": _read_pyav, "opencv": _read_opencv}
