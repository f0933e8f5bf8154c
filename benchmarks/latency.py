"""Prefill speed, memory and decode speed of AIM against no reduction, measured side by side in one run.

    python -m benchmarks.latency                      # Qwen2-0.5B-shaped LLaVA-OneVision, 16 frames, CPU
    python -m benchmarks.latency --shape qwen2-7b --frames 32 --dtype bfloat16   # on a GPU
    python -m benchmarks.latency --shape qwen2-7b --frames 32 --dtype bfloat16 --attention flash_attention_4
    python -m benchmarks.latency --family qwen2_5_vl --frames 32 --dtype bfloat16   # Qwen2.5-VL-3B-shaped

The model has random weights (no downloads here), so the answers are meaningless but the work is real: the stock
`LlavaOnevisionForConditionalGeneration` runs its own forward on 196 visual tokens per frame, as the released
checkpoints do (with `--family qwen2_5_vl`, the stock `Qwen2_5_VLForConditionalGeneration` on 448 px frames:
256 visual tokens per temporal patch of 2 frames). Settings run interleaved (A B C A B C ...) and report medians,
so drift on a noisy machine hits them all alike; every ratio compares numbers from this one run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aim_core import AIMConfig, Answer, VideoQA
from aim_core.random_models import (
    QWEN2_0_5B_SHAPE,
    QWEN2_5_VL_3B_SHAPE,
    QWEN2_7B_SHAPE,
    build_llava_onevision,
    build_qwen_vl,
)

SHAPES = {"qwen2-0.5b": QWEN2_0_5B_SHAPE, "qwen2-7b": QWEN2_7B_SHAPE}
RESULTS = Path(__file__).parent / "results"


@dataclass
class Setting:
    name: str
    config: AIMConfig


class PeakRSS:
    """Highest resident memory of this process while the block runs, sampled every millisecond (CPU runs).

    glibc keeps freed memory in its heap, where later allocations reuse it unseen, so the block first hands the
    heap's free memory back (`malloc_trim`; earlier runs in this process leave it large enough to hold a whole answer,
    which then measured 0 MB) and asks malloc to serve every allocation over 64 KiB with its own mmap, which is
    returned on free and shows in RSS.
    """

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 (typing.Self needs Python 3.11)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        gc.collect()
        libc.malloc_trim(0)
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.start


M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def run_once(qa: VideoQA, frames: np.ndarray, config: AIMConfig, new_tokens: int) -> Answer:
    return qa.answer(frames, "What happens in this video?", config=config, max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens)


def peak_memory(qa: VideoQA, frames: np.ndarray, config: AIMConfig, new_tokens: int) -> int:
    """Peak memory of one answer beyond what was held before it: allocated GPU memory, or sampled CPU RSS."""
    if qa.model.device.type == "cuda":
        return run_once(qa, frames, config, new_tokens).stats.peak_memory_bytes - torch.cuda.memory_allocated()
    with PeakRSS() as memory:
        run_once(qa, frames, config, new_tokens)
    return memory.extra_bytes


def device_label(device: str) -> str:
    """The device a benchmark ran on, as its tables say it."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def save_table(table: str, out: str | Path) -> None:
    """Print a benchmark's markdown table and write it where `update_readme` copies it from."""
    print()
    print(table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(table + "\n")
    print(f"\nwritten to {out} ({time.strftime('%Y-%m-%d')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("llava_onevision", "qwen2_5_vl"), default="llava_onevision",
                        help="qwen2_5_vl: a Qwen2.5-VL-3B-shaped model (--shape is for LLaVA-OneVision)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--efficiencies", default="0.5,0.9,1.0",
                        help="extra points of the sweep, besides 0 and default")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", default="sdpa", help="the LLM's and the tower's attention kernel: sdpa, "
                        "eager, flash_attention_2, flash_attention_4 (FlashAttention needs its package and a GPU)")
    parser.add_argument("--out", help="where to write the markdown table (default: results/latency.md, or "
                                      "results/latency-qwen2_5_vl.md for Qwen2.5-VL)")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.family == "qwen2_5_vl":
        model, processor = build_qwen_vl(QWEN2_5_VL_3B_SHAPE, dtype=getattr(torch, args.dtype), device=args.device,
                                         attn_implementation=args.attention)
        size, model_name, out = 448, "Qwen2.5-VL with a Qwen2.5-VL-3B-shaped", RESULTS / "latency-qwen2_5_vl.md"
    else:
        model, processor = build_llava_onevision(SHAPES[args.shape], dtype=getattr(torch, args.dtype),
                                                 device=args.device, attn_implementation=args.attention)
        size, model_name, out = 378, f"LLaVA-OneVision with a {args.shape}-shaped", RESULTS / "latency.md"
    args.out = args.out or str(out)
    shape = "" if args.family == "qwen2_5_vl" else f" --shape {args.shape}"
    attention = "" if args.attention == "sdpa" else f" --attention {args.attention}"
    command = (f"--family {args.family}{shape} --frames {args.frames} --repeats {args.repeats} --dtype {args.dtype}"
               f"{attention}")
    qa = VideoQA.from_model(model, processor)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, size, size, 3), dtype=np.uint8)
    settings = [Setting("no reduction", AIMConfig.none()), Setting("AIM default", AIMConfig()),
                Setting("AIM default, PageRank importance", AIMConfig(importance="pagerank"))]
    settings += [Setting(f"efficiency {e}", AIMConfig.from_efficiency(float(e))) for e in args.efficiencies.split(",")]

    device_name = device_label(args.device)
    # Warm-up: every setting once, so no timed run pays for loading its kernels (a GPU loads each on first use); then
    # the vision cache is filled again, so each setting's merge is timed fresh and only the LLM side is timed.
    for setting in settings:
        run_once(qa, frames, setting.config, 2)
    qa.clear_cache()
    visual = run_once(qa, frames, settings[0].config, 2).stats.visual_tokens_before_merge
    print(f"device: {device_name}; model: {model_name} language model, random weights, {args.dtype}, "
          f"{args.attention} attention; "
          f"{args.frames} frames, {visual} visual tokens")
    runs: dict[str, list[Answer]] = {s.name: [] for s in settings}
    for repeat in range(args.repeats):
        for setting in settings:
            runs[setting.name].append(run_once(qa, frames, setting.config, args.new_tokens))
            stats = runs[setting.name][-1].stats
            print(f"  [{repeat + 1}/{args.repeats}] {setting.name}: prefill {stats.prefill_seconds:.3f} s", flush=True)
    memory = {s.name: peak_memory(qa, frames, s.config, args.new_tokens) for s in settings}

    def median(name: str, value) -> float:
        return statistics.median(value(answer.stats) for answer in runs[name])

    base_prefill = median("no reduction", lambda s: s.prefill_seconds)
    memory_label = "peak GPU memory" if args.device.startswith("cuda") else "peak extra RSS"
    lines = [
        (f"Device: {device_name}. Model: {model_name} language model (random weights, {args.dtype}, "
        f"{args.attention} attention), "
        f"{args.frames} frames, {visual} visual tokens, {args.new_tokens} new tokens, median of "
        f"{args.repeats} interleaved runs. Command: `python -m benchmarks.latency {command}`."),
        "",
        (f"| setting | visual tokens to LLM | prefill TFLOPs | FLOPs cut | prefill s | prefill speedup | "
        f"merge + scoring / prefill | KV cache MB | {memory_label} MB | memory saved | decode tokens/s |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in settings:
        stats = runs[setting.name][0].stats
        prefill = median(setting.name, lambda s: s.prefill_seconds)
        overhead = median(setting.name, lambda s: (s.merge_seconds + s.scoring_seconds) / s.prefill_seconds)
        decode = median(setting.name, lambda s: s.decode_tokens_per_second)
        # Below a megabyte the measurement is noise, and a ratio against it means nothing.
        used = memory[setting.name]
        saved = f"{memory['no reduction'] / used:.2f}x" if used >= 2**20 else "n/a (< 1 MB)"
        lines.append(
            f"| {setting.name} | {stats.visual_tokens_after_merge} | {stats.flops / 1e12:.2f} | "
            f"{stats.flops_reduction:.2f}x | {prefill:.3f} | {base_prefill / prefill:.2f}x | {100 * overhead:.2f}% | "
            f"{stats.kv_cache_bytes / 2**20:.1f} | {used / 2**20:.0f} | "
            f"{saved} | {decode:.1f} |"
        )
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
