"""Read and write videos: probe without decoding, sample frames uniformly, write browser-playable H.264.

`sample_frames` decodes only the frames it returns (plus the frames between each one and the keyframe before it),
so its cost grows with the number of frames asked for, not with the length of the video. Backends, tried in order:
decord (`VideoReader.get_batch`), PyAV (seek + decode forward), OpenCV. All of them pick the same frame indices, so
they return the same frames up to small decoder differences. Frame indices map to times through the average frame
rate, which is exact for constant-frame-rate videos (nearly all files a camera or an encoder writes).

Every file is first probed with PyAV, which checks that it is a readable video and finds how many frames its data
really holds; decord only ever sees files that passed, because it can hang or crash on corrupt input.
"""

import os
import re
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from aim_core.errors import SettingsError, VideoError

BACKENDS = ("decord", "pyav", "opencv")

# A file whose data ends more than this before the end its header declares is reported as truncated. Smaller gaps
# are not worth refusing a video for, and a declared duration can be rounded or count the last frame's display time.
_TRUNCATION_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` reads without decoding more than one frame.

    `num_frames` counts the frames the file's data actually holds (not only what its header claims), and
    `duration = num_frames / fps`. `width` and `height` are of the upright picture: frames are returned rotated by
    `rotation` degrees counter-clockwise, as the file's display matrix asks (phones record portrait this way).
    """

    path: str
    fps: float
    duration: float
    num_frames: int
    width: int
    height: int
    rotation: int = 0


@dataclass(frozen=True)
class SampledFrames:
    """Frames sampled from a video.

    frames: uint8 [T, H, W, 3], RGB, upright.
    timestamps: float64 [T], seconds from the start of the video.
    fps, duration: of the whole video (duration in seconds).
    path: the video file, or None for frames that came from memory.
    backend: "decord", "pyav", "opencv" or "array".
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    duration: float
    path: str | None
    backend: str

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_array(cls, frames: np.ndarray, fps: float = 1.0) -> "SampledFrames":
        """Wrap in-memory frames, uint8 [T, H, W, 3] RGB, taken `fps` times a second."""
        _check_frames(frames)
        _check_fps(fps)
        timestamps = np.arange(len(frames), dtype=np.float64) / fps
        return cls(frames, timestamps, float(fps), len(frames) / fps, None, "array")


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's frame rate, frame count and size, and check that it is readable. Raises VideoError."""
    path = _check_file(path)
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            fps = _frame_rate(stream, path)
            first = _first_frame(container, stream, path)
            declared = _declared_frame_count(stream, fps)
            # The container's duration covers every stream (the audio may run on), so it only says where to look.
            end_hint = declared or round((container.duration or 0) / av.time_base * fps)
            num_frames = _readable_frame_count(container, stream, fps, end_hint)
            _check_not_truncated(path, declared, num_frames, fps)
    except av.FFmpegError as error:
        raise VideoError(f"{path} is not a readable video (not a video, or corrupt or truncated): {error}") from None
    rotation = round(first.rotation / 90) * 90 % 360
    width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
    return VideoInfo(path, fps, num_frames / fps, num_frames, width, height, rotation)


def frame_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices, int64 [min(num_frames, num_available)], at the centres of `num_frames` equal segments."""
    if num_frames >= num_available:
        return np.arange(num_available)
    return ((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)


def sample_frames(path: str | os.PathLike, num_frames: int, backend: str | None = None) -> SampledFrames:
    """Decode `num_frames` frames spread uniformly over the whole video (all frames if it has fewer).

    backend: one of BACKENDS, or None to try them in order, moving on when one is not installed or fails.
    Raises SettingsError for a bad `num_frames` or backend, VideoError when the video cannot be read.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise SettingsError(f"num_frames must be a whole number >= 1, got {num_frames!r}")
    if backend is not None and backend not in BACKENDS:
        raise SettingsError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    info = probe_video(path)
    indices = frame_indices(info.num_frames, num_frames)
    failures = []
    for name in [backend] if backend else BACKENDS:
        try:
            frames = _upright(_READERS[name](info.path, indices, info.fps), info.rotation)
            _check_decoded(frames, len(indices), info)
        except ImportError:
            failures.append(f"{name} is not installed")
            continue
        except VideoError as error:
            failures.append(f"{name}: {error}")
            continue
        return SampledFrames(frames, indices / info.fps, info.fps, info.duration, info.path, name)
    raise VideoError(f"could not decode {info.path}: " + "; ".join(failures))


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


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream: it holds no frames, or it is truncated or not a video")
    return container.streams.video[0]


def _frame_rate(stream: av.video.stream.VideoStream, path: str) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        raise VideoError(f"{path} does not say its frame rate")
    return float(rate)


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str
) -> av.VideoFrame:
    """Decode the first frame: it proves the codec works and carries the size and the rotation."""
    frame = next(container.decode(stream), None)
    if frame is None:
        raise VideoError(f"{path} has no decodable video frames")
    return frame


def _declared_frame_count(stream: av.video.stream.VideoStream, fps: float) -> int | None:
    """The video stream's own frame count, or its duration times fps: mp4, mov and avi headers state these; mkv and
    webm have neither, but their writers (ffmpeg, mkvmerge) usually add a DURATION tag."""
    if stream.frames > 0:
        return stream.frames
    if stream.duration is not None:
        return round(float(stream.duration * stream.time_base) * fps)
    seconds = _tag_seconds(stream.metadata.get("DURATION", ""))
    return round(seconds * fps) if seconds else None


def _tag_seconds(tag: str) -> float | None:
    """Seconds in a Matroska "HH:MM:SS.nnnnnnnnn" tag, or None."""
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _readable_frame_count(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float, end_hint: int
) -> int:
    """One past the index of the last frame whose packet is in the file.

    Demuxes (reads packets without decoding) from the last keyframe before frame `end_hint`, so it costs about one
    group of pictures; with no hint (0) it reads every packet. Timestamps, not counts, give the index, so it is
    right even when the seek lands well before the end.
    """
    container.seek(_frame_pts(stream, fps, max(end_hint - 1, 0)), stream=stream)
    timestamps = [packet.pts for packet in container.demux(stream) if packet.pts is not None]
    return _frame_index(stream, fps, max(timestamps)) + 1 if timestamps else 0


def _check_not_truncated(path: str, declared: int | None, readable: int, fps: float) -> None:
    if readable == 0:
        raise VideoError(f"{path} has no readable video frames (it may be truncated)")
    if declared and (declared - readable) / fps > _TRUNCATION_TOLERANCE_S:
        raise VideoError(
            f"{path} looks truncated or corrupt: its header declares {declared} frames ({declared / fps:.1f} s), "
            f"but its data ends after {readable} frames ({readable / fps:.1f} s)"
        )


def _frame_pts(stream: av.video.stream.VideoStream, fps: float, index: int) -> int:
    return (stream.start_time or 0) + int(index / fps / stream.time_base)


def _frame_index(stream: av.video.stream.VideoStream, fps: float, pts: int) -> int:
    return round(float((pts - (stream.start_time or 0)) * stream.time_base) * fps)


def _upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate [T, H, W, C] frames counter-clockwise by `rotation` degrees (a multiple of 90)."""
    return np.ascontiguousarray(np.rot90(frames, rotation // 90, axes=(1, 2))) if rotation else frames


def _check_decoded(frames: np.ndarray, count: int, info: VideoInfo) -> None:
    # decord, for one, returns garbage 4-channel frames for rotated videos instead of failing.
    expected = (count, info.height, info.width, 3)
    if frames.dtype != np.uint8 or frames.shape != expected:
        raise VideoError(f"decoded {frames.dtype} frames of shape {list(frames.shape)}, expected uint8 {expected}")


def _read_decord(path: str, indices: np.ndarray, fps: float) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames at `indices`, as stored (not rotated)."""
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        if indices[-1] >= len(reader):
            raise VideoError(f"decord sees {len(reader)} frames, fewer than the {indices[-1] + 1} needed")
        return reader.get_batch(indices.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as error:  # decord raises both
        # Drop decord's "[12:00:00] src/file.cc:12: " prefixes, which say nothing to a user.
        raise VideoError(re.sub(r"\[[\d:]+\] \S+:\d+: ", "", str(error).splitlines()[0])) from None


def _read_pyav(path: str, indices: np.ndarray, fps: float) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames at `indices` (sorted), as stored: seeks to the keyframe before each one and
    decodes forward to it, unless it can be reached by decoding forward from the frame before without passing one."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames, decoded, position, keyframes = [], None, -1, None
            for index in indices:
                if keyframes is None or index <= position or _keyframe_between(keyframes, position, index):
                    container.seek(_frame_pts(stream, fps, index), stream=stream)
                    # Read after the first seek: mkv and webm load their keyframe index (cues) only then.
                    keyframes = _keyframe_indices(stream, fps) if keyframes is None else keyframes
                    decoded = container.decode(stream)
                for frame in decoded:
                    position = _frame_index(stream, fps, frame.pts) if frame.pts is not None else position
                    if position >= index:
                        break
                else:
                    raise VideoError(f"the video ended before frame {index}")
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as error:
        raise VideoError(str(error)) from None
    return np.stack(frames)


def _keyframe_indices(stream: av.video.stream.VideoStream, fps: float) -> np.ndarray:
    """Sorted frame indices of the keyframes in the container's index; empty when it has none (then always seek).

    mp4 indexes by decoding time, which can run a frame or two ahead of the presentation time that the frame
    indices use; an early estimate only ever causes an extra seek, never a wrong frame.
    """
    entries = [entry.timestamp for entry in stream.index_entries if entry.is_keyframe]
    return np.array(sorted(_frame_index(stream, fps, pts) for pts in entries), dtype=np.int64)


def _keyframe_between(keyframes: np.ndarray, position: int, index: int) -> bool:
    """Whether a keyframe lies after `position` and at or before `index`, so that seeking to `index` decodes less
    than going on from `position`. With no keyframe index, assume there is one."""
    if len(keyframes) == 0:
        return True
    return bool(np.searchsorted(keyframes, index, side="right") > np.searchsorted(keyframes, position, side="right"))


def _read_opencv(path: str, indices: np.ndarray, fps: float) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames at `indices` (sorted), as stored (not rotated)."""
    import cv2

    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise VideoError("OpenCV cannot open the file")
        # OpenCV rotates by the display matrix itself; turn that off so that _upright does it once, as for the others.
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
        frames, position = [], -1
        for index in indices:
            if index != position + 1:
                capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = capture.read()
            if not ok:
                raise VideoError(f"OpenCV could not read frame {index}")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            position = index
    finally:
        capture.release()
    return np.stack(frames)


_READERS = {"decord": _read_decord, "pyav": _read_pyav, "opencv": _read_opencv}
