"""Tests for aim_core.video on small generated videos whose frames encode their own index, so that each test can
check which frame came back, not only its shape."""

import importlib.util
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from aim_core import VideoQA
from aim_core.errors import SettingsError, VideoError
from aim_core.video import (
    BACKENDS,
    DEFAULT_FRAME_BUDGET,
    SampledFrames,
    frame_indices,
    probe_video,
    sample_frames,
    write_video,
)

NUM_FRAMES, FPS, WIDTH, HEIGHT = 100, 30, 64, 48
CODECS = {"mp4": "libx264", "webm": "libvpx-vp9", "mkv": "libx264", "mov": "libx264", "avi": "mpeg4"}
INSTALLED = [name for name in BACKENDS if importlib.util.find_spec({"pyav": "av", "opencv": "cv2"}.get(name, name))]


def indexed_frame(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 [H, W, 3]: the left part's top half shows index // 16 and bottom half index % 16 as gray levels 16
    apart (robust to lossy coding); the right 16 columns hold a fixed gradient, so that frames are not flat."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[: height // 2] = (index // 16) * 16 + 8
    frame[height // 2 :] = (index % 16) * 16 + 8
    frame[:, -16:] = np.linspace(0, 255, height * 16, dtype=np.uint8).reshape(height, 16, 1)
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of indexed_frame, reading away from the edges that chroma subsampling blurs."""
    half = frame.shape[0] // 2
    high, low = frame[2 : half - 2, 2:-20].mean(), frame[half + 2 : -2, 2:-20].mean()
    return round((high - 8) / 16) * 16 + round((low - 8) / 16)


def encode(path: Path, codec: str, frames: list[np.ndarray], rotation: int = 0, live: bool = False) -> Path:
    """Encode RGB frames at FPS with a keyframe every 10 frames, so that sampling has to seek."""
    with av.open(str(path), "w", container_options={"live": "1"} if live else {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.gop_size = 10
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    frames = [indexed_frame(i) for i in range(NUM_FRAMES)]
    return {ext: encode(folder / f"clip.{ext}", codec, frames) for ext, codec in CODECS.items()}


@pytest.mark.parametrize("ext", CODECS)
def test_probe_reads_metadata(videos, ext):
    info = probe_video(videos[ext])
    assert (info.fps, info.num_frames, info.width, info.height, info.rotation) == (FPS, NUM_FRAMES, WIDTH, HEIGHT, 0)
    assert info.duration == pytest.approx(NUM_FRAMES / FPS, abs=1e-3)  # mkv and webm count in milliseconds


def test_frame_indices_are_segment_centres():
    assert frame_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert frame_indices(5, 9).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("backend", INSTALLED)
@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv"])
def test_sample_frames_returns_the_uniform_frames(videos, ext, backend):
    sampled = sample_frames(videos[ext], 8, backend=backend)
    expected = [6, 18, 31, 43, 56, 68, 81, 93]  # centres of 8 segments of 100 frames
    assert [read_index(frame) for frame in sampled.frames] == expected
    np.testing.assert_allclose(sampled.timestamps, np.array(expected) / FPS, atol=1e-3)
    assert sampled.frames.shape == (8, HEIGHT, WIDTH, 3) and sampled.frames.dtype == np.uint8
    assert (sampled.backend, sampled.fps, sampled.path, len(sampled)) == (backend, FPS, str(videos[ext]), 8)
    assert sampled.duration == pytest.approx(NUM_FRAMES / FPS, abs=1e-3)


@pytest.mark.parametrize("ext", CODECS)
def test_backends_agree(videos, ext):
    results = [sample_frames(videos[ext], 32, backend=backend).frames.astype(np.int16) for backend in INSTALLED]
    for frames in results[1:]:
        assert np.abs(frames - results[0]).mean() < 2


def test_default_backend_is_the_first_installed(videos):
    assert sample_frames(videos["mp4"], 4).backend == INSTALLED[0]


def test_more_frames_than_the_video_has_returns_each_once(videos):
    sampled = sample_frames(videos["webm"], 500)
    assert [read_index(frame) for frame in sampled.frames] == list(range(NUM_FRAMES))


@pytest.mark.parametrize("backend", INSTALLED)
def test_single_frame_video(tmp_path, backend):
    path = encode(tmp_path / "still.mp4", "libx264", [indexed_frame(7)])
    info = probe_video(path)
    assert (info.num_frames, info.duration) == (1, pytest.approx(1 / FPS, abs=1e-3))
    sampled = sample_frames(path, 4, backend=backend)
    assert [read_index(frame) for frame in sampled.frames] == [7] and sampled.timestamps.tolist() == [0.0]


def test_webm_without_duration_or_frame_count(tmp_path):
    """A live-mode webm (as browsers record) states neither duration nor frame count, and has no seek index."""
    path = encode(tmp_path / "live.webm", "libvpx-vp9", [indexed_frame(i) for i in range(40)], live=True)
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.video[0].frames == 0
    sampled = sample_frames(path, 4)
    assert [read_index(frame) for frame in sampled.frames] == [5, 15, 25, 35]


def test_odd_size_video(tmp_path):
    path = encode(tmp_path / "odd.webm", "libvpx-vp9", [indexed_frame(i, 49, 65) for i in range(20)])
    for backend in INSTALLED:
        sampled = sample_frames(path, 4, backend=backend)
        assert sampled.frames.shape == (4, 49, 65, 3)
        assert [read_index(frame) for frame in sampled.frames] == [2, 7, 12, 17]


def test_rotated_video_comes_back_upright(tmp_path):
    stored = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stored[:10, :20] = 255  # a block at the stored top-left; a 90 degree turn counter-clockwise puts it bottom-left
    path = encode(tmp_path / "rotated.mp4", "libx264", [stored] * 10, rotation=90)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (HEIGHT, WIDTH, 90)
    for backend in [None, *INSTALLED]:
        try:
            sampled = sample_frames(path, 2, backend=backend)
        except VideoError:
            assert backend == "decord"  # decord garbles rotated videos; the default order skips past it
            continue
        assert sampled.frames.shape == (2, WIDTH, HEIGHT, 3)
        assert sampled.frames[0, 50:60, 2:8].mean() > 200 and sampled.frames[0, 2:10, 30:40].mean() < 50


@pytest.mark.parametrize("num_frames", [0, -3, 2.5, "8", True, None])
def test_bad_num_frames_raises_settings_error(videos, num_frames):
    with pytest.raises(SettingsError, match="num_frames"):
        sample_frames(videos["mp4"], num_frames)


def test_unknown_backend_raises_settings_error(videos):
    with pytest.raises(SettingsError, match="backend"):
        sample_frames(videos["mp4"], 4, backend="ffmpeg")


def zero_frame_mp4(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = WIDTH, HEIGHT
        container.start_encoding()


def header_only_mp4(path: Path, source: Path) -> None:
    """The index (moov, first in a faststart file) of a real video, without any frame data."""
    data = source.read_bytes()
    path.write_bytes(data[: data.index(b"mdat") + 4])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos) -> dict[str, tuple[Path, str]]:
    """name -> (path, pattern the VideoError message must match)."""
    folder = tmp_path_factory.mktemp("bad")
    faststart = folder / "faststart.mp4"
    write_video(faststart, np.stack([indexed_frame(i) for i in range(NUM_FRAMES)]), FPS)
    (folder / "empty.mp4").touch()
    (folder / "text.mp4").write_text("this is not a video\n" * 20)
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    for name, source in [("cut.mp4", videos["mp4"]), ("cut_faststart.mp4", faststart)]:
        (folder / name).write_bytes(source.read_bytes()[: int(source.stat().st_size * 0.3)])
    zero_frame_mp4(folder / "zero_frames.mp4")
    header_only_mp4(folder / "header_only.mp4", faststart)
    return {
        "missing": (folder / "missing.mp4", "not found"),
        "directory": (folder, "directory"),
        "empty": (folder / "empty.mp4", r"empty \(0 bytes\)"),
        "text": (folder / "text.mp4", "not a readable video"),
        "random": (folder / "random.mp4", "not a readable video"),
        "truncated mp4": (folder / "cut.mp4", "truncated"),
        "truncated faststart mp4": (folder / "cut_faststart.mp4", "truncated"),
        "zero frames": (folder / "zero_frames.mp4", "no video stream"),
        "header only": (folder / "header_only.mp4", "no decodable video frames"),
    }


@pytest.mark.parametrize(
    "name",
    ["missing", "directory", "empty", "text", "random", "truncated mp4", "truncated faststart mp4", "zero frames"]
    + ["header only"],
)
def test_bad_input_raises_video_error(bad_files, name):
    path, pattern = bad_files[name]
    with pytest.raises(VideoError, match=pattern) as error:
        sample_frames(path, 8)
    assert "\n" not in str(error.value) and "Invalid data" not in str(error.value)  # decoder internals: in the log


def test_decord_neither_hangs_nor_crashes_on_damaged_files(bad_files, videos, tmp_path):
    """decord can hang or segfault on corrupt input, which would take the test run down: run it in a child process
    on every bad file and on a video whose middle is overwritten with random bytes (which the probe accepts)."""
    pytest.importorskip("decord")
    data = bytearray(videos["mp4"].read_bytes())
    data[len(data) // 3 : len(data) // 2] = np.random.default_rng(0).bytes(len(data) // 2 - len(data) // 3)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    paths = [str(path) for path, _ in bad_files.values()] + [str(tmp_path / "damaged.mp4")]
    # The child loads aim_core's video module without the package's __init__, which imports torch (seconds).
    script = """
import sys, types
sys.modules["aim_core"] = types.ModuleType("aim_core")
sys.modules["aim_core"].__path__ = ["aim_core"]
from aim_core.errors import VideoError
from aim_core.video import sample_frames
for path in sys.argv[1:]:
    try:
        sample_frames(path, 8, backend="decord")
    except VideoError:
        pass
print("done")
"""
    repo = Path(__file__).parents[1]
    child = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=60, cwd=repo)
    assert child.returncode == 0 and child.stdout.strip() == "done", child.stderr[-2000:]


def test_from_array_wraps_frames():
    frames = np.stack([indexed_frame(i) for i in range(6)])
    sampled = SampledFrames.from_array(frames, fps=2.0)
    assert len(sampled) == 6 and sampled.frames is frames and sampled.backend == "array" and sampled.path is None
    np.testing.assert_allclose(sampled.timestamps, [0, 0.5, 1, 1.5, 2, 2.5])
    assert (sampled.fps, sampled.duration) == (2.0, 3.0)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((2, 8, 8), np.uint8),
        np.zeros((2, 8, 8, 4), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
        [[[[0, 0, 0]]]],
    ],
    ids=["float32", "no channels", "rgba", "no frames", "list"],
)
def test_from_array_rejects_bad_frames(frames):
    with pytest.raises(VideoError, match="frames must"):
        SampledFrames.from_array(frames)


def test_from_array_rejects_bad_fps():
    with pytest.raises(SettingsError, match="fps"):
        SampledFrames.from_array(np.zeros((2, 8, 8, 3), np.uint8), fps=0)


def test_write_video_is_browser_playable_h264(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(path, np.stack([indexed_frame(i, 47, 63) for i in range(30)]), fps=10)  # odd size: padded
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (30, 10, 64, 48)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playback can begin before the download ends
    sampled = sample_frames(path, 30)
    assert [read_index(frame[:47, :63]) for frame in sampled.frames] == list(range(30))


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(VideoError, match="frames must"):
        write_video(tmp_path / "out.mp4", np.zeros((2, 8, 8), np.uint8), fps=10)


# Frame times in ms of a variable-frame-rate video: gaps growing from 20 ms to 610 ms, as a screen recording's or a
# phone's frames come.
VFR_TIMES_MS = [20 * i + 5 * i * (i - 1) for i in range(60)]


def encode_timed(path: Path, codec: str, times_ms: list[int]) -> Path:
    """Frame i, showing its index, at presentation time `times_ms[i]` (set explicitly), a keyframe every 10."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 10
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, time in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(indexed_frame(index), format="rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def vfr_videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vfr")
    return {ext: encode_timed(folder / f"vfr.{ext}", CODECS[ext], VFR_TIMES_MS) for ext in ("mp4", "mkv", "webm")}


@pytest.mark.parametrize("ext", ["mp4", "mkv", "webm"])
def test_variable_frame_rate_gives_the_frames_on_screen_at_segment_centres(vfr_videos, ext):
    times = np.array(VFR_TIMES_MS) / 1000
    info = probe_video(vfr_videos[ext])
    assert info.num_frames == len(times)
    assert times[-1] < info.duration <= times[-1] + 0.7  # the last frame lasts at most its gap
    centres = (np.arange(8) + 0.5) * info.duration / 8
    expected = (np.searchsorted(times, centres, side="right") - 1).tolist()
    assert expected != frame_indices(len(times), 8).tolist()  # counting frames instead of time would fail
    results = [sample_frames(vfr_videos[ext], 8, backend=backend) for backend in INSTALLED]
    for sampled in results:
        assert [read_index(frame) for frame in sampled.frames] == expected, sampled.backend
        np.testing.assert_allclose(sampled.timestamps, times[expected], atol=1e-3)
        assert np.abs(sampled.frames.astype(np.int16) - results[0].frames).mean() < 2, sampled.backend


@pytest.mark.parametrize("backend", INSTALLED)
def test_all_frames_of_a_variable_frame_rate_video_come_once(vfr_videos, backend):
    sampled = sample_frames(vfr_videos["mp4"], 500, backend=backend)
    assert [read_index(frame) for frame in sampled.frames] == list(range(len(VFR_TIMES_MS)))
    np.testing.assert_allclose(sampled.timestamps, np.array(VFR_TIMES_MS) / 1000, atol=1e-3)


@pytest.mark.parametrize("backend", INSTALLED)
def test_frames_are_decoded_at_the_size_fit_asks(videos, backend):
    asked = []
    sampled = sample_frames(videos["mp4"], 8, backend, fit=lambda h, w: asked.append((h, w)) or (h // 2, w // 2))
    assert asked == [(HEIGHT, WIDTH)]
    assert sampled.frames.shape == (8, HEIGHT // 2, WIDTH // 2, 3)
    assert [read_index(frame) for frame in sampled.frames] == [6, 18, 31, 43, 56, 68, 81, 93]


def test_fit_gets_and_gives_the_upright_size_of_a_rotated_video(tmp_path):
    stored = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stored[:12, :24] = 255  # stored top-left; upright (90 degrees counter-clockwise) bottom-left
    path = encode(tmp_path / "rotated.mp4", "libx264", [stored] * 10, rotation=90)
    for backend in ["pyav", "opencv"]:
        asked = []
        sampled = sample_frames(path, 2, backend, fit=lambda h, w: asked.append((h, w)) or (h // 2, w // 2))
        assert asked == [(WIDTH, HEIGHT)] and sampled.frames.shape == (2, WIDTH // 2, HEIGHT // 2, 3)
        assert sampled.frames[0, 26:30, 1:5].mean() > 200 and sampled.frames[0, 1:5, 18:22].mean() < 50


@pytest.mark.parametrize("backend", INSTALLED)
def test_memory_budget_scales_frames_down_keeping_the_aspect(videos, backend):
    budget = 8 * (HEIGHT // 2) * (WIDTH // 2) * 3
    sampled = sample_frames(videos["mp4"], 8, backend=backend, max_bytes=budget)
    assert sampled.frames.shape == (8, HEIGHT // 2, WIDTH // 2, 3) and sampled.frames.nbytes <= budget
    assert [read_index(frame) for frame in sampled.frames] == [6, 18, 31, 43, 56, 68, 81, 93]
    assert DEFAULT_FRAME_BUDGET == 3 * 2**29  # 1.5 GiB


def test_frames_that_cannot_fit_the_budget_raise_video_error(videos):
    with pytest.raises(VideoError, match="memory budget"):
        sample_frames(videos["mp4"], 8, max_bytes=1000)


@pytest.mark.parametrize("fit", [lambda h, w: (0, w), lambda h, w: (h / 2, w / 2), lambda h, w: h])
def test_bad_fit_raises_settings_error(videos, fit):
    with pytest.raises(SettingsError, match="fit"):
        sample_frames(videos["mp4"], 4, fit=fit)


def failing_reader(backend: str, monkeypatch) -> None:
    """Make `backend` fail inside with its own kind of error."""
    from aim_core import video

    if backend == "pyav":
        monkeypatch.setattr(video, "_seek_pyav", lambda *args: (_ for _ in ()).throw(MemoryError("bad_alloc")))
    elif backend == "decord":
        import decord

        def broken(*args, **kwargs):
            raise decord.DECORDError("[12:00:00] src/video/video_reader.cc:1: cannot allocate")

        monkeypatch.setattr(decord, "VideoReader", broken)
    else:
        import cv2

        def broken(*args, **kwargs):
            raise cv2.error("OpenCV(5.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate")

        monkeypatch.setattr(cv2, "resize", broken)


@pytest.mark.parametrize("backend", INSTALLED)
def test_backend_errors_become_one_plain_video_error(videos, backend, monkeypatch, caplog):
    failing_reader(backend, monkeypatch)
    with pytest.raises(VideoError, match="could not be decoded") as error:
        sample_frames(videos["mp4"], 4, backend=backend)
    assert "alloc" not in str(error.value) and f"{backend} could not decode" in caplog.text  # details: in the log


def test_a_failing_backend_falls_back_to_the_next(videos, monkeypatch):
    failing_reader("pyav", monkeypatch)
    sampled = sample_frames(videos["mp4"], 8)
    assert sampled.backend == INSTALLED[1] and sampled.note == "" and sampled.damaged == 0
    assert [read_index(frame) for frame in sampled.frames] == [6, 18, 31, 43, 56, 68, 81, 93]


@pytest.fixture(scope="module")
def damaged_video(tmp_path_factory) -> Path:
    """250 frames (a keyframe every 10) whose frames 103 to 107 have their data overwritten with zeros."""
    path = encode(tmp_path_factory.mktemp("damaged") / "damaged.mp4", "libx264",
                  [indexed_frame(i) for i in range(250)])
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size and 103 <= round(packet.pts * stream.time_base * FPS) <= 107:
                data[packet.pos : packet.pos + packet.size] = bytes(packet.size)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("backend", ["pyav", "opencv"])  # decord runs on damaged files in a child process (above)
def test_damaged_frames_are_replaced_by_later_decodable_ones(damaged_video, backend):
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed")
    sampled = sample_frames(damaged_video, 25, backend=backend)
    wanted = list(range(5, 250, 10))  # centres of 25 segments of 250 frames; frame 105 is damaged
    decoded = np.round(sampled.timestamps * FPS).astype(int).tolist()
    assert sampled.damaged >= 1 and f"{sampled.damaged} of the 25 sampled frames could not be decoded" in sampled.note
    assert decoded[:10] == wanted[:10] and decoded[10] > 105 and decoded[-10:] == wanted[-10:]
    assert [read_index(frame) for frame in sampled.frames[:10]] == wanted[:10]
    if backend == "pyav":  # decodes on from the next packet; OpenCV, from the next keyframe it can seek to
        assert sampled.damaged == 1 and decoded[11:] == wanted[11:]


def test_header_claiming_more_than_the_file_holds_is_read_for_what_it_holds(tmp_path):
    """An mkv whose DURATION tag and segment duration say 99 h, holding 8 s of video."""
    path = encode(tmp_path / "eight_seconds.mkv", "libx264", [indexed_frame(i) for i in range(240)])
    data = path.read_bytes()
    assert data.count(b"00:00:08.000000000") == 1
    data = data.replace(b"00:00:08.000000000", b"99:00:00.000000000")
    at = data.index(b"\x44\x89\x88") + 3  # the segment's Duration element: a float64 of milliseconds
    path.write_bytes(data[:at] + struct.pack(">d", 99 * 3600 * 1000) + data[at + 8 :])
    with av.open(str(path)) as container:
        assert container.duration > 98 * 3600 * av.time_base
    info = probe_video(path)
    assert (info.num_frames, info.duration) == (240, pytest.approx(8, abs=1e-3)) and "99:00:00" in info.note
    sampled = sample_frames(path, 4)
    assert [read_index(frame) for frame in sampled.frames] == [30, 90, 150, 210] and sampled.note == info.note


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_truncated_file_is_read_for_what_it_holds(tmp_path, ext):
    frames = [indexed_frame(i) for i in range(200)]
    full = encode(tmp_path / f"full.{ext}", "libx264", frames) if ext == "mkv" else tmp_path / "full.mp4"
    if ext == "mp4":
        write_video(full, np.stack(frames), FPS)  # faststart: the header is whole, the data cut
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    info = probe_video(cut)
    assert 50 < info.num_frames < 150 and info.duration == pytest.approx(info.num_frames / FPS, abs=1e-3)
    assert "cut short" in info.note
    sampled = sample_frames(cut, 4)
    assert [read_index(frame) for frame in sampled.frames] == frame_indices(info.num_frames, 4).tolist()


def test_video_qa_decodes_at_the_size_the_model_needs(tiny_llava, tmp_path):
    qa = VideoQA.from_model(*tiny_llava)
    side = qa.adapter.processor.video_processor.size.height  # LLaVA-OneVision squashes frames to side x side
    for height, width in [(1080, 1920), (1920, 1080), (4000, 4000)]:
        fitted = qa.adapter.frame_size(height, width, 32)
        assert min(fitted) == side and max(fitted) == -(-max(height, width) * side // min(height, width))
    assert qa.adapter.frame_size(side // 2, side * 2, 32) == (side // 2, side * 2)  # never above the source
    path = encode(tmp_path / "large.mp4", "libx264", [indexed_frame(i, 6 * side, 8 * side) for i in range(20)])
    frames = qa.sample_frames(path, 4)
    assert frames.frames.shape == (4, side, -(-8 * side // 6), 3)
    assert [read_index(frame) for frame in frames.frames] == [2, 7, 12, 17]
