"""Time uniform frame sampling against decoding every frame, on a long generated video.

    .venv/bin/python -m benchmarks.frame_sampling                      # default: 60 min, 720p, 5 fps
    .venv/bin/python -m benchmarks.frame_sampling --minutes 2 --height 360

The video is ffmpeg's `testsrc2` pattern encoded as H.264 (preset veryfast, CRF 23, a keyframe every 10 s, as
x264's default of 250 frames is at 25 fps). A low frame rate keeps generation to a few minutes on 2 cores without
flattering sampling: both the full decode and a sample's seek-and-decode-forward scale with the frame rate, so their
ratio depends on the duration and the keyframe interval in seconds. The file is cached under
$XDG_CACHE_HOME/aim-video-qa (default ~/.cache/aim-video-qa), never in the repository.
"""

import argparse
import importlib.util
import os
import subprocess
import time
from pathlib import Path

import av

from aim_core.video import BACKENDS, frame_indices, probe_video, sample_frames

KEYFRAME_INTERVAL_S = 10
RESULTS = Path(__file__).parent / "results"
MODULES = {"decord": "decord", "pyav": "av", "opencv": "cv2"}  # what each backend imports


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aim-video-qa"


def make_video(minutes: float, fps: int, height: int) -> Path:
    """Generate (once) a `minutes`-long 16:9 H.264 test video and return its path."""
    width = round(height * 16 / 9 / 2) * 2
    path = cache_dir() / f"testsrc2_{minutes:g}min_{height}p_{fps}fps.mp4"
    if path.exists():
        print(f"using cached {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")  # renamed when complete, so an interrupted run leaves no bad cache
    command = [
        "ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
        "-t", str(minutes * 60), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
        "-g", str(KEYFRAME_INTERVAL_S * fps), "-pix_fmt", "yuv420p", str(partial),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True)
    partial.rename(path)
    print(f"generated {path} in {time.perf_counter() - start:.1f} s")
    return path


def decode_everything(path: Path, num_frames: int) -> float:
    """Seconds to decode every frame in one sequential PyAV pass, keeping the `num_frames` uniform ones as RGB."""
    start = time.perf_counter()
    info = probe_video(path)
    wanted = set(frame_indices(info.num_frames, num_frames).tolist())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        kept = [frame.to_ndarray(format="rgb24") for i, frame in enumerate(container.decode(stream)) if i in wanted]
    assert len(kept) == len(wanted), (len(kept), len(wanted))
    return time.perf_counter() - start


def time_sampling(path: Path, num_frames: int, backend: str) -> float:
    """Seconds for `sample_frames`, probing included."""
    start = time.perf_counter()
    sampled = sample_frames(path, num_frames, backend=backend)
    assert len(sampled) == num_frames and sampled.backend == backend
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="video length (default 60)")
    parser.add_argument("--fps", type=int, default=5, help="video frame rate (default 5)")
    parser.add_argument("--height", type=int, default=720, help="video height in pixels, 16:9 (default 720)")
    args = parser.parse_args()

    path = make_video(args.minutes, args.fps, args.height)
    info = probe_video(path)
    print(
        f"{path.name}: {info.width}x{info.height}, {info.fps:g} fps, {info.num_frames} frames, "
        f"{info.duration / 60:.1f} min, {path.stat().st_size / 2**20:.0f} MiB, keyframe every {KEYFRAME_INTERVAL_S} s"
    )
    sizes = (32, 128)
    # Decoding everything costs the same whatever is kept, so one pass is the baseline for every size.
    full = decode_everything(path, max(sizes))
    rows = {"pyav, decode every frame": [full] * len(sizes)}
    for backend in BACKENDS:
        if importlib.util.find_spec(MODULES[backend]):
            rows[f"sample_frames, {backend}"] = [time_sampling(path, size, backend) for size in sizes]

    lines = [
        (f"Video: {path.name}, {info.width}x{info.height}, {info.num_frames} frames, {info.duration / 60:.1f} min, "
        f"keyframe every {KEYFRAME_INTERVAL_S} s. Command: `python -m benchmarks.frame_sampling --minutes "
        f"{args.minutes:g} --fps {args.fps} --height {args.height}`."),
        "",
        "| method | " + " | ".join(f"{size} frames: seconds | speedup" for size in sizes) + " |",
        "|---|" + "---|---|" * len(sizes),
    ]
    for method, times in rows.items():
        lines.append(f"| {method} | " + " | ".join(f"{s:.2f} | {full / s:.1f}x" for s in times) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "frame_sampling.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
