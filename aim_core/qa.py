"""`VideoQA`: ask a video-LLM about a video with AIM's merging and pruning, and report what it cost and kept."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LogitsProcessor,
    PreTrainedModel,
    ProcessorMixin,
    StoppingCriteria,
    TextIteratorStreamer,
)

from .adapters import adapter_for
from .adapters.base import VideoEncoding, VideoLLMAdapter
from .config import AIMConfig, TokenReduction
from .cost import CostEstimate, estimate_cost
from .errors import ModelError, QuestionError, SettingsError
from .flops import DecoderShape, prefill_flops
from .merge import MergeResult
from .patch import PrefillRecord, VisualTokenPruner
from .video import SampledFrames, sample_frames

MAX_FRAMES = 512
MAX_QUESTION_CHARS = 2000
VideoInput = str | Path | SampledFrames | np.ndarray


@dataclass
class Stats:
    """What one answer cost, measured, next to the same question with no reduction (analytic)."""

    num_frames: int
    visual_tokens_before_merge: int
    visual_tokens_after_merge: int
    text_tokens: int
    tokens_per_layer: list[int]
    flops: int
    flops_baseline: int
    vision_seconds: float
    vision_cached: bool
    merge_seconds: float
    scoring_seconds: float
    prefill_seconds: float
    decode_seconds: float
    time_to_first_token: float
    total_seconds: float
    new_tokens: int
    kv_cache_bytes: int
    peak_memory_bytes: int | None

    @property
    def flops_reduction(self) -> float:
        return self.flops_baseline / self.flops

    @property
    def decode_tokens_per_second(self) -> float:
        return (self.new_tokens - 1) / self.decode_seconds if self.new_tokens > 1 and self.decode_seconds else 0.0


@dataclass
class Trace:
    """What the UI draws: which patch went into which merged token, and which merged tokens each layer kept.

    Attributes:
        frames: the frames the model saw.
        grid: `(rows, cols)` of a frame's visual tokens before merging.
        merge_source: `[frames, rows * cols]`, for each original token the index of its merged token in its frame
            (-1 for a token dropped before the LLM, as `aim_core.baselines.RandomDrop` does).
        merged_per_frame: merged tokens per frame.
        kept_per_layer: per decoder layer, indices of the merged frame tokens it processed at prefill, numbered
            frame by frame (`frame * merged_per_frame + j`).
    """

    frames: SampledFrames
    grid: tuple[int, int]
    merge_source: torch.Tensor
    merged_per_frame: int
    kept_per_layer: list[torch.Tensor]

    def clusters(self) -> np.ndarray:
        """`[frames, rows, cols]` merged-token id of every original token (its cluster within the frame)."""
        return self.merge_source.reshape(-1, *self.grid).numpy()

    def kept_patches(self, layer: int) -> np.ndarray:
        """`[frames, rows, cols]` bool: original tokens whose merged token layer `layer` still processed."""
        num_frames = self.merge_source.shape[0]
        kept = torch.zeros(num_frames * self.merged_per_frame, dtype=torch.bool)
        frame_tokens = self.kept_per_layer[layer]
        kept[frame_tokens[frame_tokens < len(kept)]] = True
        kept = kept.view(num_frames, self.merged_per_frame).gather(1, self.merge_source.clamp(min=0))
        return (kept & (self.merge_source >= 0)).reshape(-1, *self.grid).numpy()


@dataclass
class Answer:
    text: str
    stats: Stats
    trace: Trace
    config: TokenReduction
    cancelled: bool = False


@dataclass
class _CachedVideo:
    encoding: VideoEncoding
    vision_seconds: float
    merges: dict[Hashable, tuple[MergeResult, float]] = field(default_factory=dict)


class VideoQA:
    """A video-LLM with AIM. Holds the model and a small cache of encoded videos; not thread-safe for two
    generations at once (calls are serialised by a lock)."""

    def __init__(self, adapter: VideoLLMAdapter, cached_videos: int = 4) -> None:
        self.adapter = adapter
        self.shape = DecoderShape.from_config(adapter.text_config)
        self._cache: OrderedDict[str, _CachedVideo] = OrderedDict()
        self._frames: OrderedDict[tuple, SampledFrames] = OrderedDict()
        self._cached_videos = cached_videos
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | None = None,
        device_map: str | dict | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
    ) -> VideoQA:
        """Load a hub model or a local folder with its own processor.

        `device` defaults to CUDA when available; `device_map="auto"` spreads a large model over several GPUs
        (accelerate). `dtype` defaults to the checkpoint's on GPU and float32 on CPU.
        """
        on_gpu = device_map is not None or (device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
        dtype = dtype if dtype is not None else ("auto" if on_gpu else torch.float32)
        try:
            processor = AutoProcessor.from_pretrained(name_or_path)
            model = AutoModelForImageTextToText.from_pretrained(
                name_or_path, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation
            )
        except (OSError, ValueError, ImportError) as error:
            raise ModelError(f"cannot load model {str(name_or_path)!r}: {error}") from error
        if device_map is None:
            model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls.from_model(model.eval(), processor)

    @classmethod
    def from_model(cls, model: PreTrainedModel, processor: ProcessorMixin) -> VideoQA:
        """Wrap an already loaded model and its processor."""
        return cls(adapter_for(model, processor))

    @property
    def model(self) -> PreTrainedModel:
        return self.adapter.model

    def encode(self, video: VideoInput, num_frames: int = 32) -> tuple[SampledFrames, VideoEncoding, bool]:
        """Sample the video and run the vision model, or take both from the cache.

        Returns the frames, their encoding, and whether the encoding came from the cache.
        """
        frames, key, cached = self._encode(video, num_frames)
        return frames, self._cache[key].encoding, cached

    def _encode(self, video: VideoInput, num_frames: int) -> tuple[SampledFrames, str, bool]:
        frames = self._sample(video, num_frames)
        key = _digest(frames.frames)
        cached = key in self._cache
        if cached:
            self._cache.move_to_end(key)
        else:
            started = _now(self.model.device)
            encoding = self.adapter.encode_video(frames.frames)
            self._cache[key] = _CachedVideo(encoding, _now(self.model.device) - started)
            _trim(self._cache, self._cached_videos)
        return frames, key, cached

    def _sample(self, video: VideoInput, num_frames: int) -> SampledFrames:
        """Frames of `video`; a file's frames are kept while it is unchanged, so a follow-up skips decoding."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
            raise SettingsError(f"num_frames must be an integer from 1 to {MAX_FRAMES}, got {num_frames!r}")
        if isinstance(video, SampledFrames):
            return video
        if isinstance(video, np.ndarray):
            return SampledFrames.from_array(video)
        if not isinstance(video, (str, Path)):
            raise TypeError(f"video must be a path, SampledFrames or uint8 [T, H, W, 3] array, not {type(video)}")
        path = Path(video).resolve()
        try:
            status = path.stat()
            key = (str(path), status.st_mtime_ns, status.st_size, num_frames)
        except OSError:
            key = None  # sample_frames says what is wrong with the path
        if key not in self._frames:
            frames = sample_frames(path, num_frames)
            self._frames[key] = frames
            _trim(self._frames, self._cached_videos)
        self._frames.move_to_end(key)
        return self._frames[key]

    def estimate(self, config: TokenReduction, num_frames: int = 32, frame_size: tuple[int, int] = (384, 384),
                 question: str = "What happens in this video?") -> CostEstimate:
        """Predict tokens per layer and FLOPs before running anything (the UI's live preview).

        `frame_size` is the video's `(height, width)`, for models whose token count depends on it.
        """
        tokens_per_frame, unmerged = self.adapter.visual_tokens_per_frame(*frame_size)
        text_tokens = self.adapter.prompt(question, None, 0).length
        return estimate_cost(self.shape, num_frames, tokens_per_frame, text_tokens, config, unmerged)

    def answer(self, video: VideoInput, question: str, config: TokenReduction | None = None, num_frames: int = 32,
               max_new_tokens: int = 64, **generate_kwargs: Any) -> Answer:
        """Answer `question` about `video` (a path, `SampledFrames`, or uint8 `[T, H, W, 3]` frames)."""
        stream = self.stream(video, question, config, num_frames, max_new_tokens, **generate_kwargs)
        for _ in stream:
            pass
        return stream.answer

    def stream(self, video: VideoInput, question: str, config: TokenReduction | None = None, num_frames: int = 32,
               max_new_tokens: int = 64, **generate_kwargs: Any) -> AnswerStream:
        """Like `answer`, but iterate over the returned stream for text as it is generated."""
        question = _checked_question(question)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise SettingsError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        return AnswerStream(self, video, question, config or AIMConfig(), num_frames, max_new_tokens,
                            generate_kwargs)

    def _reduced(self, key: str, reduction: TokenReduction) -> tuple[MergeResult, float]:
        """The video's tokens after `reduction`'s before-the-LLM step (merging), cached, and the seconds it took."""
        cached = self._cache[key]
        if reduction.frame_reduction_key not in cached.merges:
            started = _now(self.model.device)
            merged = reduction.reduce_frames(cached.encoding.tokens)
            cached.merges[reduction.frame_reduction_key] = (merged, _now(self.model.device) - started)
        return cached.merges[reduction.frame_reduction_key]


class AnswerStream:
    """Text of an answer as it is generated; `answer` holds the result once the iteration ends.

    Iterating runs the whole pipeline: frames, vision model (or cache), merge, then generation in a background
    thread with pruning hooks on the decoder. `cancel()` stops generation at the next token.
    """

    def __init__(self, qa: VideoQA, video: VideoInput, question: str, config: TokenReduction, num_frames: int,
                 max_new_tokens: int, generate_kwargs: dict[str, Any]) -> None:
        self.qa = qa
        self.video = video
        self.question = question
        self.config = config
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = generate_kwargs
        self.text = ""
        self.answer: Answer | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        with self.qa._lock:
            yield from self._run()

    def _run(self) -> Iterator[str]:
        qa, adapter, device = self.qa, self.qa.adapter, self.qa.model.device
        started = time.perf_counter()
        frames, key, vision_cached = qa._encode(self.video, self.num_frames)
        encoding = qa._cache[key].encoding
        merged, merge_seconds = qa._reduced(key, self.config)
        num_frames, per_frame = merged.tokens.shape[:2]
        num_visual = num_frames * per_frame + len(encoding.suffix)
        prompt = adapter.prompt(self.question, encoding, num_visual)
        keep_counts = self.config.visual_keep_counts(qa.shape.layers, num_visual)
        pruner = VisualTokenPruner(adapter.decoder_layers, adapter.project_qk, prompt.visual_start, num_visual,
                                   prompt.length, keep_counts, self.config.importance)
        # With nothing to prune no hook is installed, so efficiency 0 runs exactly the stock model.
        pruning = pruner if min(keep_counts) < num_visual else contextlib.nullcontext()

        streamer = TextIteratorStreamer(adapter.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        clock = _FirstTokenClock(device)
        inputs = adapter.generate_inputs(prompt, encoding, merged)
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, **self.generate_kwargs}
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                outcome["start"] = _now(device)
                with pruning:
                    outcome["output"] = qa.model.generate(
                        **inputs, **settings, streamer=streamer, logits_processor=[clock],
                        stopping_criteria=[_StopWhenSet(self._cancelled)], return_dict_in_generate=True,
                    )
                outcome["end"] = _now(device)
            except BaseException as error:  # re-raised in the consumer's thread
                outcome["error"] = error
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        first_token_at = None
        try:
            for piece in streamer:
                first_token_at = first_token_at or time.perf_counter()
                self.text += piece
                yield piece
        finally:
            if worker.is_alive():  # the consumer stopped early: stop generating too
                self._cancelled.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]

        output = outcome["output"]
        record = pruner.record if pruner.record.tokens_per_layer else PrefillRecord(
            tokens_per_layer=[prompt.length] * qa.shape.layers,
            kept_visual=[torch.arange(num_visual)] * qa.shape.layers,
        )
        baseline = estimate_cost(qa.shape, num_frames, encoding.tokens.shape[1], prompt.length - num_visual,
                                 AIMConfig.none(), len(encoding.suffix))
        stats = Stats(
            num_frames=num_frames,
            visual_tokens_before_merge=baseline.visual_before_merge,
            visual_tokens_after_merge=num_visual,
            text_tokens=prompt.length - num_visual,
            tokens_per_layer=record.tokens_per_layer,
            flops=prefill_flops(record.tokens_per_layer, qa.shape),
            flops_baseline=baseline.flops_baseline,
            vision_seconds=qa._cache[key].vision_seconds,
            vision_cached=vision_cached,
            merge_seconds=merge_seconds,
            scoring_seconds=pruner.scoring_seconds,
            prefill_seconds=clock.first - outcome["start"],
            decode_seconds=outcome["end"] - clock.first,
            time_to_first_token=(first_token_at or time.perf_counter()) - started,
            total_seconds=time.perf_counter() - started,
            new_tokens=output.sequences.shape[1] - prompt.length,
            kv_cache_bytes=_cache_bytes(output.cache),
            peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        )
        trace = Trace(
            frames=frames,
            grid=encoding.grid,
            merge_source=merged.source.cpu(),
            merged_per_frame=per_frame,
            kept_per_layer=[kept.cpu() for kept in record.kept_visual],
        )
        self.answer = Answer(text=self.text.strip(), stats=stats, trace=trace, config=self.config,
                             cancelled=self._cancelled.is_set() and stats.new_tokens < self.max_new_tokens)


class _FirstTokenClock(LogitsProcessor):
    """Notes when the first token's logits exist, i.e. when the prefill has finished."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = _now(self.device)
        return scores


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _trim(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


def _digest(frames: np.ndarray) -> str:
    """Identity of a video for the cache: its decoded frames, so the same clip cached twice is one entry."""
    digest = hashlib.blake2b(np.ascontiguousarray(frames).data, digest_size=16)
    digest.update(str(frames.shape).encode())
    return digest.hexdigest()


def _checked_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty: type what you want to know about the video")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}")
    return question.strip()


def _cache_bytes(cache: Any) -> int:
    """Bytes held by a `transformers` cache's keys and values, over all layers."""
    if cache is None:
        return 0
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.is_initialized)
