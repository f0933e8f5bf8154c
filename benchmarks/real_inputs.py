"""Videos as people have them: memory for huge frames, speed on a long video, frames of a variable-frame-rate video.

    .venv/bin/python -m benchmarks.real_inputs

1. Peak RSS while sampling (each case in a fresh child process, so that one's memory does not hide the next's):
   a 1920x1080 H.264 video at 32 frames and a 4000x4000 H.264 video (260 frames, a few MB) at 256 frames, decoded at
   the size LLaVA-OneVision needs (its processor squashes frames to 384 x 384); and the 4000x4000 one at source size,
   where the memory budget for decoded frames holds. The child imports `aim_core` (torch and transformers) first, as
   the server has, and reports its RSS before sampling and its peak during it (Linux: /proc/self/status VmHWM,
   reset after the imports).
2. A 2-hour video (1 fps, 320x240, a keyframe every 5 minutes): the time to read every packet's timestamp (the
   probe) and to sample 32 frames (probe included), in a fresh process.
3. A variable-frame-rate video (250 frames, gaps growing from 10 ms to 1.25 s): whether every backend returns the
   frames on screen at the segment centres, the same pixels as PyAV, and the frames' own timestamps.

Videos are made with PyAV (libx264) once and cached under $XDG_CACHE_HOME/aim-video-qa, never in the repository.
"""

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import psutil

from aim_core.adapters.llava_onevision import LlavaOnevisionAdapter
from aim_core.video import BACKENDS, probe_video, sample_frames
from benchmarks.frame_sampling import MODULES, cache_dir

RESULTS = Path(__file__).parent / "results"
LLAVA_SIDE = 384  # the hub LLaVA-OneVision checkpoints' video processor size
VFR_FRAMES = 250


def llava_fit(height: int, width: int) -> tuple[int, int]:
    """The decode size `LlavaOnevisionAdapter.frame_size` gives with the hub checkpoints' 384 x 384 processor."""
    processor = SimpleNamespace(video_processor=SimpleNamespace(size={"height": LLAVA_SIDE, "width": LLAVA_SIDE},
                                                                do_resize=True))
    return LlavaOnevisionAdapter.frame_size(SimpleNamespace(processor=processor), height, width, 0)


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] whose top half shows index // 16 and bottom half index % 16 as gray levels 16 apart."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[: height // 2] = (index // 16) * 16 + 8
    frame[height // 2 :] = (index % 16) * 16 + 8
    return frame


def read_index(frame: np.ndarray) -> int:
    half = frame.shape[0] // 2
    high, low = frame[2 : half - 2, 2:-2].mean(), frame[half + 2 : -2, 2:-2].mean()
    return round((high - 8) / 16) * 16 + round((low - 8) / 16)


def encode(path: Path, frames, size: tuple[int, int], rate: int, gop: int, times_ms: list[int] | None = None) -> Path:
    """Encode RGB frames (an iterable of uint8 [H, W, 3]) as H.264 once, at `rate` or at explicit `times_ms`."""
    if path.exists():
        print(f"using cached {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial" + path.suffix)  # renamed when complete: no bad cache after an interrupt
    start = time.perf_counter()
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "28"})
        stream.height, stream.width = size
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", gop
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    partial.rename(path)
    print(f"generated {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    return path


def moving_square(count: int, height: int, width: int, seed: int = 0):
    """A fixed smooth background with a square moving across it: compresses to little at any size."""
    rows, cols = np.linspace(0, 255, height, dtype=np.float32), np.linspace(0, 255, width, dtype=np.float32)
    background = np.stack([np.add.outer(rows, cols) / 2, np.add.outer(rows, 255 - cols) / 2,
                           np.broadcast_to(rows[:, None], (height, width))], axis=-1).astype(np.uint8)
    side = max(height // 10, 8)
    for index in range(count):
        frame = background.copy()
        top, left = (index * 7) % (height - side), (index * 13) % (width - side)
        frame[top : top + side, left : left + side] = (255, 32, 32)
        yield frame


def videos() -> dict[str, Path]:
    folder = cache_dir()
    vfr_times = np.cumsum([0] + np.linspace(10, 1250, VFR_FRAMES - 1).round().astype(int).tolist()).tolist()
    return {
        "1080p": encode(folder / "square_1080p_300f.mp4", moving_square(300, 1080, 1920), (1080, 1920), 30, 250),
        "4000x4000": encode(folder / "square_4000x4000_260f.mp4", moving_square(260, 4000, 4000), (4000, 4000),
                            30, 250),
        "2h": encode(folder / "index_2h_1fps_320x240.mp4", (index_frame(i % 256, 240, 320) for i in range(7200)),
                     (240, 320), 1, 300),
        "vfr": encode(folder / "index_vfr_250f.mp4", (index_frame(i, 120, 160) for i in range(VFR_FRAMES)),
                      (120, 160), 30, 25, vfr_times),
    }


def peak_rss() -> int:
    """Bytes: the most this process has held in RAM since the last `reset_peak_rss` (Linux's VmHWM)."""
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS, so that the imports' own peak does not count (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(path: str, num_frames: int, backend: str, fit: bool) -> dict:
    """In this (fresh) process: RSS before, peak RSS while probing and sampling, and seconds of each."""
    import aim_core  # noqa: F401  the server's imports, before the baseline

    reset_peak_rss()
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    probe_video(path)
    probed = time.perf_counter()
    sampled = sample_frames(path, num_frames, backend, fit=llava_fit if fit else None)
    done = time.perf_counter()
    return {"rss_before": before, "peak_rss": peak_rss(), "probe_s": probed - start, "total_s": done - start,
            "shape": list(sampled.frames.shape), "frame_bytes": sampled.frames.nbytes}


def in_child(path: Path, num_frames: int, backend: str, fit: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.real_inputs", "--measure", str(path), str(num_frames), backend,
               str(int(fit))]
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def vfr_agreement(path: Path, backends: list[str], num_frames: int) -> list[str]:
    """Table rows: per backend, frames on screen at the centres, pixels against PyAV's, timestamps against PTS."""
    info = probe_video(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(packet.pts for packet in container.demux(stream) if packet.size)
    times = (np.array(pts) - pts[0]) * float(stream.time_base)
    centres = (np.arange(num_frames) + 0.5) * info.duration / num_frames
    expected = np.searchsorted(times, centres, side="right") - 1
    results = {backend: sample_frames(path, num_frames, backend=backend) for backend in backends}
    reference = results["pyav"].frames.astype(np.int16)
    rows = []
    for backend, sampled in results.items():
        shown = np.array([read_index(frame) for frame in sampled.frames])
        rows.append(
            f"| {backend} | {num_frames} | {(shown == expected).sum()}/{num_frames} | "
            f"{np.abs(sampled.frames.astype(np.int16) - reference).mean():.2f} | "
            f"{np.abs(sampled.timestamps - times[shown]).max() * 1000:.3f} |"
        )
    return rows


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs=4, metavar=("PATH", "FRAMES", "BACKEND", "FIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        path, frames, backend, fit = args.measure
        print(json.dumps(measure(path, int(frames), backend, bool(int(fit)))))
        return

    paths = videos()
    backends = [name for name in BACKENDS if importlib.util.find_spec(MODULES[name])]
    memory = ["| video | frames | decoded at | backend | RSS before MiB | peak RSS MiB | peak - before MiB | "
              "frames MiB | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    peaks = {}
    cases = [("1080p", 32, True), ("4000x4000", 256, True), ("4000x4000", 256, False)]
    for name, num_frames, fit in cases:
        for backend in backends if fit else backends[:1]:
            result = in_child(paths[name], num_frames, backend, fit)
            peaks[name, backend, fit] = result["peak_rss"]
            size = "x".join(map(str, result["shape"][2:0:-1]))
            memory.append(
                f"| {name} | {num_frames} | {size} ({'LLaVA-OneVision' if fit else 'source, 1.5 GiB budget'}) | "
                f"{backend} | {mib(result['rss_before'])} | {mib(result['peak_rss'])} | "
                f"{mib(result['peak_rss'] - result['rss_before'])} | {mib(result['frame_bytes'])} | "
                f"{result['total_s']:.1f} |"
            )
            print(memory[-1], flush=True)
    ratios = ", ".join(f"{backend} {peaks['4000x4000', backend, True] / peaks['1080p', backend, True]:.2f}x"
                       for backend in backends)

    long_video = probe_video(paths["2h"])
    timing = ["| backend | read every packet's timestamp (probe) s | sample 32 frames, probe included, s |",
              "|---|---|---|"]
    for backend in backends:
        result = in_child(paths["2h"], 32, backend, True)
        timing.append(f"| {backend} | {result['probe_s']:.2f} | {result['total_s']:.2f} |")
        print(timing[-1], flush=True)

    agreement = ["| backend | frames | frames on screen at the segment centres | mean abs pixel difference to "
                 "PyAV | max timestamp error ms |", "|---|---|---|---|---|"]
    for num_frames in (8, 32):
        agreement += vfr_agreement(paths["vfr"], backends, num_frames)

    vfr = probe_video(paths["vfr"])
    table = "\n".join([
        "Command: `python -m benchmarks.real_inputs`. Each memory case runs in a fresh process that has imported "
        "`aim_core` (torch, transformers) as the server has.",
        "",
        f"Peak RSS while sampling; peak RSS of the 4000x4000 case at 256 frames over the 1080p case at 32 frames: "
        f"{ratios}.",
        "",
        *memory,
        "",
        f"A {long_video.duration / 3600:.1f} h video, {long_video.num_frames} frames at {long_video.fps:g} fps, "
        f"{long_video.width}x{long_video.height}, a keyframe every 5 min, in a fresh process:",
        "",
        *timing,
        "",
        f"A variable-frame-rate video: {vfr.num_frames} frames over {vfr.duration:.0f} s, gaps growing from 10 ms "
        "to 1.25 s:",
        "",
        *agreement,
    ])
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_inputs.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
