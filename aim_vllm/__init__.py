"""AIM's token merging in vLLM: a general plugin that merges each frame's visual tokens of Qwen2.5-VL and Qwen3-VL
videos before the LLM, as `aim_core` does, with survivors keeping their M-RoPE positions.

    AIM_VLLM_MERGE_KEEP=0.25 vllm serve Qwen/Qwen2.5-VL-7B-Instruct      # every video merged to 25% per frame
    llm.generate(..., mm_processor_kwargs={"aim_merge_keep": 0.5})      # per request, while the plugin is on

Only the merging stage: AIM's pruning inside the LLM does not fit vLLM, which builds one set of attention metadata
per step for all layers and keeps KV blocks per request.
"""

from .config import ENV_VAR, REQUEST_KWARG, default_keep

__all__ = ["ENV_VAR", "REQUEST_KWARG", "default_keep"]
