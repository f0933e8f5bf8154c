"""aim_core: AIM (token merging before the LLM, progressive pruning inside it) for stock transformers video-LLMs.

    import aim_core
    frames = aim_core.sample_frames("video.mp4", num_frames=32)
    qa = aim_core.VideoQA.from_pretrained("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    ans = qa.answer(frames, "What happens?", config=aim_core.AIMConfig.from_efficiency(0.7))
    ans.text, ans.stats.flops_reduction, ans.stats.tokens_per_layer
"""

from .config import AIMConfig
from .cost import BudgetPlan, CostEstimate, estimate_cost, plan_for_budget
from .errors import AIMError, ModelError, QuestionError, SettingsError, VideoError
from .flops import DecoderShape, layer_flops, prefill_flops
from .merge import MergeResult, merge_frames
from .qa import Answer, AnswerStream, Stats, Trace, VideoQA
from .video import SampledFrames, VideoInfo, probe_video, sample_frames

__all__ = [
    "AIMConfig", "AIMError", "Answer", "AnswerStream", "BudgetPlan", "CostEstimate", "DecoderShape", "MergeResult",
    "ModelError", "QuestionError", "SampledFrames", "SettingsError", "Stats", "Trace", "VideoError", "VideoInfo",
    "VideoQA", "estimate_cost", "layer_flops", "merge_frames", "plan_for_budget", "prefill_flops", "probe_video",
    "sample_frames",
]
