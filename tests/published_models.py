"""Random-weight checkpoints of the model picker's real models, built from their published configurations.

`tests/fixtures/published/<org>/<name>/` holds each checkpoint's config.json, image/video processor configs and chat
template as published (see SOURCES.md there: what was found where, and what was reconstructed), plus
`special_tokens.json`: the real special tokens at their real ids. `write_hub_cache` lays a checkpoint out as a
Hugging Face hub cache (`models--org--name/snapshots/<revision>/...`, `refs/main`), so that with `HF_HUB_CACHE`
pointing there and `HF_HUB_OFFLINE=1`, `VideoQA.from_pretrained("<hub id>")` loads it as on a user's machine.

What is real: the processor settings (patching, resizing limits, token counts per frame), the chat template, the
special tokens and their ids, the vocabulary size, head sizes and rotary sections. What is shrunk, so that a CPU
runs them in seconds (`SHRUNK`): widths, depths and head counts of both towers, and the tokenizer's ordinary
vocabulary (a small BPE trained here: ids between the few hundred it learns and the special tokens are unused).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedTokenizerFast

from aim_core.random_models import DEFAULT_CORPUS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "published"
# Files copied as published into the snapshot (config.json is copied with the `SHRUNK` values written in).
PUBLISHED_FILES = ("chat_template.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "processor_config.json", "generation_config.json")
TEXT_LAYERS = 8  # enough for the default schedule to prune at 3 layers (and, for Qwen3-VL, after its deepstack)

# Dotted config keys -> CPU-sized values. Head sizes stay real (128 for the Qwen decoders, so the M-RoPE sections fit;
# 64 for Qwen2-0.5B), as do patch sizes, image sizes, merge sizes and window sizes.
SIGLIP_SHRUNK = {"vision_config.hidden_size": 64, "vision_config.intermediate_size": 128,
                 "vision_config.num_hidden_layers": 2, "vision_config.num_attention_heads": 2}
# The 7B decoders (Qwen2-7B-Instruct's: 3584 wide, 28 heads) have 128-wide heads.
QWEN2_7B_SHRUNK = {
    "text_config.hidden_size": 256, "text_config.intermediate_size": 512,
    "text_config.num_hidden_layers": TEXT_LAYERS, "text_config.max_window_layers": TEXT_LAYERS,
    "text_config.num_attention_heads": 2, "text_config.num_key_value_heads": 1, **SIGLIP_SHRUNK,
}
QWEN2_5_VL_SHRUNK = {
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": TEXT_LAYERS,
    "max_window_layers": TEXT_LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
    "vision_config.hidden_size": 64, "vision_config.intermediate_size": 128, "vision_config.num_heads": 2,
    "vision_config.depth": 2, "vision_config.fullatt_block_indexes": [1], "vision_config.out_hidden_size": 256,
}
QWEN3_VL_TEXT_SHRUNK = {
    "text_config.hidden_size": 256, "text_config.intermediate_size": 512,
    "text_config.num_hidden_layers": TEXT_LAYERS, "text_config.num_attention_heads": 2,
    "text_config.num_key_value_heads": 1, "vision_config.num_heads": 2, "vision_config.depth": 3,
    "vision_config.deepstack_visual_indexes": [0, 1, 2], "vision_config.out_hidden_size": 256,
}
SHRUNK: dict[str, dict[str, Any]] = {
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": {
        "text_config.hidden_size": 128, "text_config.intermediate_size": 256,
        "text_config.num_hidden_layers": TEXT_LAYERS, "text_config.max_window_layers": TEXT_LAYERS,
        "text_config.num_attention_heads": 2, "text_config.num_key_value_heads": 1, **SIGLIP_SHRUNK,
    },
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": QWEN2_7B_SHRUNK,
    "llava-hf/LLaVA-Video-7B-Qwen2-hf": QWEN2_7B_SHRUNK,
    "Qwen/Qwen2-VL-2B-Instruct": {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": TEXT_LAYERS,
        "max_window_layers": TEXT_LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vision_config.embed_dim": 64, "vision_config.num_heads": 2, "vision_config.depth": 2,
        "vision_config.hidden_size": 256,
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": QWEN2_5_VL_SHRUNK,
    "Qwen/Qwen2.5-VL-7B-Instruct": QWEN2_5_VL_SHRUNK,
    "Qwen/Qwen3-VL-2B-Instruct": {
        **QWEN3_VL_TEXT_SHRUNK, "vision_config.hidden_size": 64, "vision_config.intermediate_size": 128,
    },
    # The 8B's vision tower keeps its real 72-wide heads (1152 / 16).
    "Qwen/Qwen3-VL-8B-Instruct": {
        **QWEN3_VL_TEXT_SHRUNK, "vision_config.hidden_size": 144, "vision_config.intermediate_size": 288,
    },
}
PUBLISHED_MODELS = tuple(SHRUNK)


def revision(repo_id: str) -> str:
    """A stable made-up commit hash for the snapshot folder (the hub's are 40 hex digits too)."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def write_hub_cache(repo_id: str, cache: Path, seed: int = 0) -> Path:
    """Build `repo_id`'s random-weight checkpoint into the hub cache at `cache`; returns its snapshot folder.

    The weights are saved in the published checkpoint's dtype (bfloat16 or float16), as the hub holds them.
    """
    published = FIXTURES / repo_id
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision(repo_id)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text(revision(repo_id))

    config = json.loads((published / "config.json").read_text())
    for key, value in SHRUNK[repo_id].items():
        _set(config, key, value)
    (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    for name in PUBLISHED_FILES:
        if (published / name).is_file():
            shutil.copy(published / name, snapshot / name)
    tokenizer(repo_id).save_pretrained(snapshot)

    model_config = AutoConfig.from_pretrained(snapshot)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(model_config, dtype=_published_dtype(config))
    with tempfile.TemporaryDirectory() as saved:
        model.save_pretrained(saved)
        for weights in Path(saved).glob("*.safetensors*"):
            shutil.copy(weights, snapshot / weights.name)
    return snapshot


def tokenizer(repo_id: str) -> PreTrainedTokenizerFast:
    """A small byte-level BPE holding the checkpoint's special tokens at their published ids, with its chat template.

    The model's embedding keeps the published vocabulary size: ids the BPE does not use are simply never produced
    by the tokenizer (a random model may still generate them; they decode to nothing).
    """
    special = json.loads((FIXTURES / repo_id / "special_tokens.json").read_text())
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(DEFAULT_CORPUS), trainer=trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    serialized = json.loads(bpe.to_str())
    # An added token keeps its id only if the model's vocabulary already holds it there.
    serialized["model"]["vocab"].update({token: int(i) for i, token in special["added_tokens"].items()})
    serialized["added_tokens"] = [
        {"id": int(i), "content": token, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for i, token in special["added_tokens"].items()
    ]
    result = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(serialized)), bos_token=None,
        eos_token=special["eos_token"], pad_token=special["pad_token"], extra_special_tokens=special["named_tokens"],
    )
    result.chat_template = json.loads((FIXTURES / repo_id / "chat_template.json").read_text())["chat_template"]
    return result


def _set(config: dict, dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for parent in parents:
        config = config[parent]
    if key not in config:
        raise KeyError(f"{dotted} is not in the published config: shrink only what it sets")
    config[key] = value


def _published_dtype(config: dict) -> torch.dtype:
    name = config.get("torch_dtype") or config.get("dtype") or config.get("text_config", {}).get("dtype")
    return getattr(torch, name) if name else torch.bfloat16
