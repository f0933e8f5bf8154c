"""Randomly initialised video-LLMs of real architectures, built offline from configs.

No weights can be downloaded on the machines this project is tested on, so tests, benchmarks and the demo-model
training build their models here: a small BPE tokenizer trained on the spot, the model family's own processor
classes built from constructor arguments, and the stock `transformers` model class built from a config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

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


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus`, with the Qwen chat special tokens and `<image>`/`<video>`."""
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer.chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE
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


# A model shaped like llava-onevision-qwen2-0.5b's language model (Qwen2-0.5B), with a tiny vision tower that
# still yields 27x27 patches, i.e. 196 visual tokens per frame after pooling, as the real model does.
QWEN2_0_5B_SHAPE = LlavaOnevisionShape(
    image_size=378, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=896, text_layers=24, text_heads=14, text_kv_heads=2, text_intermediate=4864,
)
# The same for llava-onevision-qwen2-7b (Qwen2-7B), for benchmarks on a GPU.
QWEN2_7B_SHAPE = LlavaOnevisionShape(
    image_size=378, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2,
    text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
)


def build_llava_onevision(
    shape: LlavaOnevisionShape = LlavaOnevisionShape(),
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """A randomly initialised stock `LlavaOnevisionForConditionalGeneration` and its processor."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    processor = build_llava_onevision_processor(tokenizer, shape.image_size, shape.patch_size)
    pinpoints = processor.image_processor.image_grid_pinpoints
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=shape.vision_hidden,
            intermediate_size=shape.vision_hidden * 2,
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
    model = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor
