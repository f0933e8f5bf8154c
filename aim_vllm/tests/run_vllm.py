"""Run vLLM once on a saved model and print what the tests check, as JSON (one process per setting, because vLLM
loads its plugins once per process). Usage: run_vllm.py MODEL_DIR REQUESTS_JSON.

REQUESTS_JSON: a list of {"seed": int, "mm_processor_kwargs": {...}}; each asks about its own random video.
"""

from __future__ import annotations

import json
import sys

from vllm import LLM, SamplingParams

from aim_vllm.testing import video, video_request


def main(model_dir: str, requests_json: str) -> None:
    llm = LLM(model=model_dir, dtype="float32", max_model_len=4096, max_num_batched_tokens=4096, max_num_seqs=4,
              limit_mm_per_prompt={"video": 1}, enforce_eager=True, seed=0, gpu_memory_utilization=0.1)
    requests = [video_request(video(8, 64, 64, seed=r["seed"]), **r.get("mm_processor_kwargs", {}))
                for r in json.loads(requests_json)]
    outputs = llm.generate(requests, SamplingParams(max_tokens=6, temperature=0, logprobs=1))
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.get_model()
    print("RESULT " + json.dumps({
        "model_class": type(model).__name__,
        "outputs": [{"prompt_len": len(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids),
                     "logprobs": [step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]}
                    for o in outputs],
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
