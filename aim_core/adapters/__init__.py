"""Model-family adapters: the only code that knows a family's classes."""

from transformers import PreTrainedModel, ProcessorMixin

from ..errors import ModelError
from .base import Prompt, VideoEncoding, VideoLLMAdapter, VisualLayout
from .llava_onevision import LlavaOnevisionAdapter
from .qwen_vl import QwenVLAdapter

ADAPTERS: tuple[type[VideoLLMAdapter], ...] = (LlavaOnevisionAdapter, QwenVLAdapter)


def adapter_for(model: PreTrainedModel, processor: ProcessorMixin) -> VideoLLMAdapter:
    """The adapter for `model`'s family, or `ModelError` naming the supported ones."""
    model_type = model.config.model_type
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter(model, processor)
    supported = ", ".join(t for adapter in ADAPTERS for t in adapter.model_types)
    raise ModelError(f"models of type {model_type!r} are not supported; supported: {supported}")


__all__ = ["ADAPTERS", "Prompt", "VideoEncoding", "VideoLLMAdapter", "VisualLayout", "adapter_for"]
