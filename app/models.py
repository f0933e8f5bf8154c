"""Which model the app answers with: the offline default, the known hub models, and the registry holding the one
that is loaded.

The picker's list is `HUB_MODELS`: adding a model family's checkpoints is one line each there.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import psutil
import torch

from aim_core import ModelError, VideoQA
from aim_core.random_models import LlavaOnevisionShape, build_llava_onevision

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
DEMO_MODEL_DIR = ASSETS_DIR / "demo-model"
RANDOM_MODEL_KEY = "random-weights"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker.

    Attributes:
        key: a hub id, a local folder, or RANDOM_MODEL_KEY.
        label: the name shown in the picker and the header.
        note: one line on what the model is, shown under the title; empty for an ordinary model.
        warning: whether the note must stand out (answers of this model are not to be trusted).
    """

    key: str
    label: str
    note: str = ""
    warning: bool = False


HUB_MODELS: tuple[ModelChoice, ...] = (
    ModelChoice("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "LLaVA-OneVision 0.5B (hub)"),
    ModelChoice("llava-hf/llava-onevision-qwen2-7b-ov-hf", "LLaVA-OneVision 7B (hub)"),
    ModelChoice("llava-hf/LLaVA-Video-7B-Qwen2-hf", "LLaVA-Video 7B (hub)"),
    ModelChoice("Qwen/Qwen2-VL-2B-Instruct", "Qwen2-VL 2B (hub)"),
    ModelChoice("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B (hub)"),
    ModelChoice("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL 7B (hub)"),
    ModelChoice("Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL 2B (hub)"),
    ModelChoice("Qwen/Qwen3-VL-8B-Instruct", "Qwen3-VL 8B (hub)"),
)
DEMO_MODEL = ModelChoice(
    str(DEMO_MODEL_DIR), "Demo model (offline)",
    "Synthetic-domain demo: trained from scratch on generated videos of coloured shapes; it knows nothing else.",
)
RANDOM_MODEL = ModelChoice(
    RANDOM_MODEL_KEY, "Tiny random model (offline)",
    "Random weights, because the demo model is not in assets/demo-model yet: answers are meaningless, but the "
    "merging, pruning, timings and pictures are real.", warning=True,
)
# The fallback's frames become 16 x 16 patches, pooled to 8 x 8 = 64 tokens: enough to see clusters form.
RANDOM_MODEL_SHAPE = LlavaOnevisionShape(image_size=128, patch_size=8, text_layers=8)
# Files a LLaVA-style checkpoint needs; skips other formats (.bin, .onnx, .gguf) that some repos also hold.
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
# Room left for activations, the video cache and the rest of the process when deciding if a model fits.
MEMORY_HEADROOM = 1.2


def switching_locked_note(loaded: ModelChoice) -> str:
    """What a visitor of a shared Space reads instead of a working model picker."""
    return (f"This Space answers every visitor with {loaded.label}, so its model cannot be switched here: one "
            "visitor's choice would change everyone's answers. To try another model, duplicate the Space (its ⋮ menu, "
            "Duplicate this Space) and set its AIM_MODEL variable to a hub id, or run the app on your own machine.")


def offline_default() -> ModelChoice:
    """The demo model once it is in assets/demo-model, until then the labelled tiny random model."""
    return DEMO_MODEL if (DEMO_MODEL_DIR / "config.json").is_file() else RANDOM_MODEL


def choice_for(key: str) -> ModelChoice:
    """The picker entry for `key`: a known model, or a custom hub id or folder (from `--model`)."""
    for choice in (DEMO_MODEL, RANDOM_MODEL, *HUB_MODELS):
        if key == choice.key or (Path(key).exists() and Path(key).resolve() == Path(choice.key).resolve()):
            return choice
    return ModelChoice(key, Path(key).name if Path(key).is_dir() else key)


def load_videoqa(choice: ModelChoice) -> VideoQA:
    """Build or load the model of `choice`. Raises ModelError with a message a user can act on."""
    if choice.key == RANDOM_MODEL_KEY:
        return _random_model()
    folder = Path(choice.key) if Path(choice.key).is_dir() else _local_snapshot(choice.key)
    _check_memory(folder, choice.label)
    return VideoQA.from_pretrained(folder)


class ModelRegistry:
    """The one model the app answers with, shared by every browser session.

    A failed load leaves the previous model in place. Loads are serialised by a lock (and, in the app, by the
    queue: they share the concurrency group of the runs, so a model is never swapped under a running answer).
    """

    def __init__(self, default: ModelChoice, loaded: ModelChoice, qa: VideoQA) -> None:
        self.default = default
        self.choice = loaded
        self.qa = qa
        self._lock = threading.Lock()

    @classmethod
    def start(cls, key: str | None = None, fall_back: bool = False) -> ModelRegistry:
        """Load `key` (a hub id or folder), or the offline default when it is None. Raises ModelError, unless
        `fall_back`: then a model that cannot be loaded is replaced by the offline default, whose note says why."""
        default = offline_default()
        choice = choice_for(key) if key else default
        try:
            return cls(default, choice, load_videoqa(choice))
        except ModelError as error:
            if not fall_back or choice == default:
                raise
            default = replace(default, note=f"{choice.label} could not be loaded, so the offline model answers: "
                                            f"{error} {default.note}", warning=True)
            return cls(default, default, load_videoqa(default))

    def choices(self) -> list[ModelChoice]:
        """The picker's entries: the offline default, the loaded model if it is another one, the hub models."""
        entries = [self.default]
        if self.choice not in (self.default, *HUB_MODELS):
            entries.append(self.choice)
        return entries + [choice for choice in HUB_MODELS if choice not in entries]

    def load(self, key: str) -> ModelChoice:
        """Switch to the model `key`; nothing happens if it is already loaded. Raises ModelError."""
        choice = self.default if key == self.default.key else choice_for(key)
        with self._lock:
            if choice != self.choice:
                self.qa = load_videoqa(choice)
                self.choice = choice
        return choice


def _random_model() -> VideoQA:
    """The fallback: a tiny random LLaVA-OneVision whose answers are at least words.

    Left alone, random weights mostly emit raw bytes that print as "\ufffd". Generation is limited to whole words
    of its vocabulary, never repeated, so the (meaningless) answer reads as text and streams visibly.
    """
    model, processor = build_llava_onevision(RANDOM_MODEL_SHAPE, seed=0)
    tokenizer = processor.tokenizer
    words = {i for i in range(len(tokenizer)) if re.fullmatch(r" [a-z]{2,}", tokenizer.decode([i]))}
    model.generation_config.suppress_tokens = [
        i for i in range(len(tokenizer)) if i not in words and i != tokenizer.eos_token_id
    ]
    model.generation_config.no_repeat_ngram_size = 1
    return VideoQA.from_model(model, processor)


def _local_snapshot(repo_id: str) -> Path:
    """The folder of hub model `repo_id`: from the local Hugging Face cache, else downloaded (tqdm progress)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS, local_files_only=True))
    except HFValidationError:
        raise ModelError(f"{repo_id!r} is neither a folder on this machine nor a Hugging Face model id") from None
    except LocalEntryNotFoundError:
        pass
    # Check first that the hub answers at all: offline, huggingface_hub would retry for minutes before failing.
    if not _hub_reachable():
        raise ModelError(
            f"{repo_id} is not in this machine's Hugging Face cache and the hub cannot be reached (offline?). "
            "Download it once with internet access, or pick the offline model."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except OSError as error:  # huggingface_hub's HTTP and disk errors are OSErrors
        raise ModelError(f"could not download {repo_id}: {error}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    address = urlparse(constants.ENDPOINT)
    if constants.HF_HUB_OFFLINE or not address.hostname:
        return False
    try:
        with socket.create_connection((address.hostname, address.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _check_memory(folder: Path, label: str) -> None:
    """ModelError if the weights in `folder` cannot fit in free memory (loading them would kill the process)."""
    weights = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    if os.environ.get("SPACES_ZERO_GPU"):
        # ZeroGPU attaches a GPU only while a request runs, and keeps the 16-bit weights in host memory meanwhile.
        needed, free, where = weights, psutil.virtual_memory().available, "memory"
    elif torch.cuda.is_available():
        needed, free, where = weights, torch.cuda.mem_get_info()[0], "GPU memory"
    else:
        # On the CPU the weights are loaded in float32: twice a 16-bit checkpoint's size.
        needed, free, where = weights * 4 // _bytes_per_weight(folder), psutil.virtual_memory().available, "memory"
    if needed * MEMORY_HEADROOM > free:
        raise ModelError(
            f"{label} needs about {needed / 2**30:.1f} GiB of {where} and {free / 2**30:.1f} GiB is free: "
            "out of memory. Pick a smaller model."
        )


def _bytes_per_weight(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return 2
    dtype = config.get("torch_dtype") or config.get("dtype") or config.get("text_config", {}).get("torch_dtype")
    return 4 if dtype == "float32" else 2
