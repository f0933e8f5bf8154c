"""Randomly initialised video-LLMs of real architectures, built offline from configs.

No weights can be downloaded on the machines this project is tested on, so tests, benchmarks and the demo-model
training build their models here: a small BPE tokenizer trained on the spot, the model family's own processor
classes built from constructor arguments, and the stock `transformers` model class built from a config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    SiglipVisionConfig,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
LLAVA_NAMED_TOKENS = {"image_token": "<image>", "video_token": "<video>"}

# The chat template of the llava-hf LLaVA-OneVision checkpoints (images, then videos, then the text of each turn).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DEFAULT_CORPUS = (
    "What happens in this video? Describe the scene in one word.",
    "Which colour appears first? red green blue yellow white black purple orange",
    "How many objects move to the left or to the right? one two three four five six",
    "Is there a circle, a square or a triangle? yes no",
    "The quick brown fox jumps over the lazy dog. A person walks into the room and sits down.",
)


def build_tokenizer(
    corpus: Iterable[str] = DEFAULT_CORPUS,
    vocab_size: int = 512,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    named_tokens: Mapping[str, str] = LLAVA_NAMED_TOKENS,
    chat_template: str = LLAVA_ONEVISION_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus`, with the Qwen chat special tokens and, by default, LLaVA's
    `<image>`/`<video>` (`named_tokens` become attributes such as `tokenizer.video_token`, which processors read)."""
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(named_tokens),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_llava_onevision_processor(
    tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int
) -> LlavaOnevisionProcessor:
    """The stock LLaVA-OneVision processor for frames resized to `image_size` and cut into `patch_size` patches."""
    size = {"height": image_size, "width": image_size}
    pinpoints = [[image_size * i, image_size * j] for i in (1, 2) for j in (1, 2)]
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )


@dataclass(frozen=True)
class LlavaOnevisionShape:
    """The sizes of a LLaVA-OneVision model: a SigLIP tower, a 2-layer projector and a Qwen2 decoder."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    max_positions: int = 32768
    vision_intermediate: int | None = None  # 2 x vision_hidden by default
    rope_theta: float = 10_000.0  # Qwen2Config's default; the published Qwen2 checkpoints use 1e6


# llava-hf/llava-onevision-qwen2-0.5b-ov-hf's real shapes: the SigLIP-so400m tower as the checkpoint ships it (26 of
# its 27 layers, 384 px in 14 px patches: 27 x 27 patches, pooled to 196 tokens a frame) and Qwen2-0.5B.
LLAVA_ONEVISION_0_5B_SHAPE = LlavaOnevisionShape(
    image_size=384, patch_size=14, vision_hidden=1152, vision_layers=26, vision_heads=16, vision_intermediate=4304,
    text_hidden=896, text_layers=24, text_heads=14, text_kv_heads=2, text_intermediate=4864, rope_theta=1e6,
)
# A model shaped like llava-onevision-qwen2-0.5b's language model (Qwen2-0.5B), with a tiny vision tower that
# still yields 27x27 patches, i.e. 196 visual tokens per frame after pooling, as the real model does.
QWEN2_0_5B_SHAPE = LlavaOnevisionShape(
    image_size=378, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=896, text_layers=24, text_heads=14, text_kv_heads=2, text_intermediate=4864, rope_theta=1e6,
)
# The same for llava-onevision-qwen2-7b (Qwen2-7B), for benchmarks on a GPU.
QWEN2_7B_SHAPE = LlavaOnevisionShape(
    image_size=378, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944, rope_theta=1e6,
)


def build_llava_onevision(
    shape: LlavaOnevisionShape = LlavaOnevisionShape(),
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """A randomly initialised stock `LlavaOnevisionForConditionalGeneration` and its processor; the weights are
    drawn on `device` (a 7B-shaped model initialises in seconds on a GPU, minutes on a CPU)."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    processor = build_llava_onevision_processor(tokenizer, shape.image_size, shape.patch_size)
    pinpoints = processor.image_processor.image_grid_pinpoints
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=shape.vision_hidden,
            intermediate_size=shape.vision_intermediate or shape.vision_hidden * 2,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=shape.vision_heads,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            vision_use_head=False,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=shape.text_hidden,
            intermediate_size=shape.text_intermediate,
            num_hidden_layers=shape.text_layers,
            num_attention_heads=shape.text_heads,
            num_key_value_heads=shape.text_kv_heads,
            max_position_embeddings=shape.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
            tie_word_embeddings=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]
QWEN_NAMED_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                     "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}

# The chat template of the Qwen2-VL / Qwen2.5-VL instruct checkpoints, without tools and vision ids.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class QwenVLShape:
    """The sizes of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model (`family` is the config's `model_type`).

    A frame is cut into `patch_size` patches, 2 frames deep (one temporal patch), and 2x2 patches are merged into
    one LLM token, so a 48x64 frame pair gives 3x4 = 12 visual tokens. Qwen3-VL adds the features of its first
    `deepstack_layers` vision layers to the hidden states of as many first decoder layers.
    """

    family: str = "qwen2_5_vl"
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 3
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 8
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    deepstack_layers: int = 3
    max_positions: int = 32768
    vision_intermediate: int | None = None  # 2 x vision_hidden by default
    vision_window: int | None = None  # Qwen2.5-VL: pixels a window's side covers (4 merged tokens by default)
    full_attention_blocks: tuple[int, ...] = (0,)  # Qwen2.5-VL: blocks that attend across windows


# A model shaped like Qwen2.5-VL-3B-Instruct's language model, with a tiny vision tower (14 px patches, as the
# real one: a 448x448 frame pair gives 16x16 = 256 visual tokens), for the latency benchmark.
QWEN2_5_VL_3B_SHAPE = QwenVLShape(
    family="qwen2_5_vl", patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=2048,
    text_layers=36, text_heads=16, text_kv_heads=2, text_intermediate=11008, mrope_section=(16, 24, 24),
)

# Qwen2.5-VL-3B-Instruct's real shapes, vision tower included (its published config: 32 blocks of width 1280, MLP
# 3420, 16 heads, windows of 112 px, full attention in blocks 7, 15, 23 and 31), for the end-to-end benchmark.
QWEN2_5_VL_3B_REAL_SHAPE = replace(
    QWEN2_5_VL_3B_SHAPE, vision_hidden=1280, vision_layers=32, vision_heads=16, vision_intermediate=3420,
    vision_window=112, full_attention_blocks=(7, 15, 23, 31),
)

_QWEN_CLASSES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel], type[ProcessorMixin], type]] = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, Qwen2VLVideoProcessor),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor),
}


def build_qwen_vl_processor(tokenizer: PreTrainedTokenizerFast, shape: QwenVLShape) -> ProcessorMixin:
    """The family's stock processor, resizing frames only to multiples of 2 patches (no minimum or maximum size
    that matters for small test frames). The video processor keeps its class defaults otherwise (Qwen3-VL's
    samples frames itself unless told not to, as the released checkpoints do)."""
    _, _, processor_class, video_processor_class = _QWEN_CLASSES[shape.family]
    factor = shape.patch_size * 2
    size = {"shortest_edge": factor * factor, "longest_edge": 4096 * factor * factor}
    common = {"size": size, "patch_size": shape.patch_size, "temporal_patch_size": 2, "merge_size": 2}
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=video_processor_class(**common, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def _qwen_vision_config(shape: QwenVLShape) -> dict:
    common = {"depth": shape.vision_layers, "num_heads": shape.vision_heads, "patch_size": shape.patch_size,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    if shape.family == "qwen2_vl":
        return {**common, "embed_dim": shape.vision_hidden, "hidden_size": shape.text_hidden, "mlp_ratio": 2}
    sized = {**common, "hidden_size": shape.vision_hidden, "out_hidden_size": shape.text_hidden,
             "intermediate_size": shape.vision_intermediate or shape.vision_hidden * 2}
    if shape.family == "qwen2_5_vl":
        # windows of 2x2 merged tokens by default, every layer but the first windowed, as the released towers alternate
        return {**sized, "window_size": shape.vision_window or shape.patch_size * 4,
                "fullatt_block_indexes": list(shape.full_attention_blocks), "tokens_per_second": 2}
    return {**sized, "num_position_embeddings": 64, "deepstack_visual_indexes": list(range(shape.deepstack_layers))}


def qwen_vl_config(shape: QwenVLShape, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    """The config of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model (`shape.family`) for `tokenizer`'s vocabulary."""
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(shape.mrope_section)}
    if shape.family == "qwen3_vl":
        rope["mrope_interleaved"] = True
    token_ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_NAMED_TOKENS.items()}
    return _QWEN_CLASSES[shape.family][0](
        vision_config=_qwen_vision_config(shape),
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": shape.text_hidden,
            "intermediate_size": shape.text_intermediate,
            "num_hidden_layers": shape.text_layers,
            "num_attention_heads": shape.text_heads,
            "num_key_value_heads": shape.text_kv_heads,
            "head_dim": shape.text_hidden // shape.text_heads,
            "max_position_embeddings": shape.max_positions,
            "rope_parameters": rope,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        tie_word_embeddings=False,
        **token_ids,
    )


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A small BPE tokenizer with the Qwen-VL special tokens and chat template."""
    return build_tokenizer(special_tokens=QWEN_SPECIAL_TOKENS, named_tokens=QWEN_NAMED_TOKENS,
                           chat_template=QWEN_VL_CHAT_TEMPLATE)


def build_qwen_vl(
    shape: QwenVLShape = QwenVLShape(),
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A randomly initialised stock Qwen2-VL, Qwen2.5-VL or Qwen3-VL (`shape.family`) and its processor; the weights
    are drawn on `device`."""
    tokenizer = tokenizer if tokenizer is not None else build_qwen_tokenizer()
    config = qwen_vl_config(shape, tokenizer)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = _QWEN_CLASSES[shape.family][1](config).to(dtype).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, build_qwen_vl_processor(tokenizer, shape)
