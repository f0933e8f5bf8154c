"""`VideoQA`: ask a video-LLM about a video with AIM's merging and pruning, and report what it cost and kept."""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
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
from transformers.video_utils import VideoMetadata

from .adapters import adapter_for
from .adapters.base import VideoEncoding, VideoLLMAdapter
from .cancel import Cancelled, cancellable
from .config import AIMConfig, TokenReduction, no_pruning_before
from .cost import BudgetPlan, CostEstimate, PipelineFlops, VisionWork, estimate_cost, plan_for_budget
from .errors import ModelError, QuestionError, SettingsError, VideoError
from .flops import DecoderShape, prefill_flops, vision_flops
from .kernels import graph_free_attention
from .merge import MergeResult
from .patch import PrefillRecord, VisualTokenPruner
from .video import SampledFrames, frame_indices, sample_frames
from .vision_patch import VisionRecord

MAX_FRAMES = 512
MAX_QUESTION_CHARS = 2000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# A video (a file, `SampledFrames`, uint8 [T, H, W, 3] frames) or an image (a file with one of `IMAGE_SUFFIXES`, a PIL
# image, a uint8 [H, W, 3] array).
VideoInput = str | Path | SampledFrames | np.ndarray | PIL.Image.Image


@dataclass
class Stats(PipelineFlops):
    """What one answer cost, measured, next to the same question with no reduction (analytic).

    The wait for the first token is `video_decode_seconds` (sampling the frames) + `vision_seconds` (vision tower
    and projector; 0 paid when `vision_cached`) + `merge_seconds` + `prefill_seconds`; `decode_seconds` is the
    generation of the tokens after the first. `flops` counts the LLM prefill (as the paper does); `vision_flops`
    the vision tower and projector, paid again only when the video or the vision setting changes.
    """

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
    video_decode_seconds: float = 0.0
    vision_flops: int = 0
    vision_flops_baseline: int = 0
    vision_tokens_per_layer: list[int] = field(default_factory=list)

    @property
    def first_answer_seconds(self) -> float:
        """The wait for the first token of a first question about the video: frames, vision tower (what encoding
        took, also when this answer found it cached), merge and prefill."""
        return self.video_decode_seconds + self.vision_seconds + self.merge_seconds + self.prefill_seconds

    @property
    def decode_tokens_per_second(self) -> float:
        return (self.new_tokens - 1) / self.decode_seconds if self.new_tokens > 1 and self.decode_seconds else 0.0


@dataclass
class Trace:
    """What the UI draws: which patch went into which merged token, and which merged tokens each layer kept.

    Merging works on steps: a frame, or for Qwen models a temporal patch of `frames_per_step` = 2 frames (the
    frames of a step share its tokens; a step's grid covers each of them whole). `clusters` and `kept_patches` give
    one map per frame either way. For a LLaVA-OneVision image, the frames are the tiles the model cut it into.

    Attributes:
        frames: the frames the model saw.
        grid: `(rows, cols)` of a step's visual tokens before merging.
        merge_source: `[steps, rows * cols]`, for each original token the index of its merged token in its step
            (-1 for a token dropped before the LLM, as `aim_core.baselines.RandomDrop` does).
        merged_per_frame: merged tokens per step.
        kept_per_layer: per decoder layer, indices of the merged tokens it processed at prefill, numbered step by
            step (`step * merged_per_frame + j`); visual tokens that are never merged are numbered after them.
        frames_per_step: frames behind each step; the last step may hold a repeat of the last frame.
        vision_source: `[steps, patches]` for every patch of the vision tower, the token it was merged into inside
            the tower (each patch then took its token's value: `aim_core.vision_patch`); None when the tower ran
            whole.
        vision_grid: `(rows, cols)` of a step's patches in `vision_source`; None for a square.
    """

    frames: SampledFrames
    grid: tuple[int, int]
    merge_source: torch.Tensor
    merged_per_frame: int
    kept_per_layer: list[torch.Tensor]
    frames_per_step: int = 1
    vision_source: torch.Tensor | None = None
    vision_grid: tuple[int, int] | None = None

    def clusters(self) -> np.ndarray:
        """`[frames, rows, cols]` merged-token id of every original token (its cluster within its step)."""
        return self._per_frame(self.merge_source).numpy()

    def kept_patches(self, layer: int) -> np.ndarray:
        """`[frames, rows, cols]` bool: original tokens whose merged token layer `layer` still processed."""
        steps = self.merge_source.shape[0]
        kept = torch.zeros(steps * self.merged_per_frame, dtype=torch.bool)
        step_tokens = self.kept_per_layer[layer]
        kept[step_tokens[step_tokens < len(kept)]] = True
        kept = kept.view(steps, self.merged_per_frame).gather(1, self.merge_source.clamp(min=0))
        return self._per_frame(kept & (self.merge_source >= 0)).numpy()

    def vision_clusters(self) -> np.ndarray | None:
        """`[frames, rows, cols]` the token every patch was merged into inside the vision tower; None when the tower
        ran whole."""
        if self.vision_source is None:
            return None
        side = math.isqrt(self.vision_source.shape[1])
        return self._per_frame(self.vision_source, self.vision_grid or (side, side)).numpy()

    def _per_frame(self, per_step: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """`[steps, rows * cols]` -> `[frames, rows, cols]`: each step's map for each of its frames."""
        per_frame = per_step.repeat_interleave(self.frames_per_step, dim=0)[: len(self.frames)]
        return per_frame.reshape(-1, *(grid or self.grid))


@dataclass
class Answer:
    """An answer and what it cost. `stats` and `trace` are None when the run was cancelled before its first token
    (in the vision tower or the prefill): nothing was measured then."""

    text: str
    stats: Stats | None
    trace: Trace | None
    config: TokenReduction
    cancelled: bool = False


@dataclass
class _CachedVideo:
    encoding: VideoEncoding
    vision_seconds: float
    vision: VisionRecord
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
            if device_map is None:
                model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except (OSError, ValueError, ImportError) as error:
            raise ModelError(f"cannot load model {str(name_or_path)!r}: {error}") from error
        except (MemoryError, torch.OutOfMemoryError) as error:
            raise ModelError(f"not enough memory to load model {str(name_or_path)!r}: {error}") from error
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
        frames, key, cached, _ = self._encode(video, num_frames)
        return frames, self._cache[key].encoding, cached

    def _encode(self, video: VideoInput, num_frames: int,
                vision_keep: float = 1.0) -> tuple[SampledFrames, str, bool, float]:
        """The frames, the cache key of their encoding, whether it was cached, and the seconds decoding took (0 for
        frames from the cache). `vision_keep` below 1 merges patches inside the vision tower, where it can be."""
        started = time.perf_counter()
        image = _image_of(video)
        frames = self.sample_frames(video, num_frames) if image is None else SampledFrames.from_array(image[None])
        decode_seconds = time.perf_counter() - started
        if self.adapter.vision_output_layer is None:  # a tower the hooks cannot merge runs whole
            vision_keep = 1.0
        key = f"{_digest(frames, image is not None)}:{vision_keep}"
        cached = key in self._cache
        if cached:
            self._cache.move_to_end(key)
            return frames, key, cached, decode_seconds
        layers = self.adapter.vision_layers
        merger = self.adapter.vision_token_merger(vision_keep)
        started = _now(self.model.device)
        with merger, graph_free_attention():
            encoding = self.adapter.encode_video(frames.frames, _metadata(frames)) if image is None else \
                self.adapter.encode_image(image)
        vision = merger.record if merger.record.tokens_per_layer else VisionRecord(
            tokens_per_layer=[self.adapter.vision_patches_per_step(encoding.tokens.shape[1])] * len(layers))
        self._cache[key] = _CachedVideo(encoding, _now(self.model.device) - started, vision)
        _trim(self._cache, self._cached_videos)
        return frames, key, cached, decode_seconds

    def clear_cache(self) -> None:
        """Forget every decoded and encoded video (the next question about any video pays the whole pipeline)."""
        self._cache.clear()
        self._frames.clear()

    def sample_frames(self, video: VideoInput, num_frames: int) -> SampledFrames:
        """`num_frames` frames of `video` (see `aim_core.sample_frames`); a file's frames are kept while the file is
        unchanged, so a follow-up question skips decoding."""
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
            # Decoded at the size the model needs, never held at the source's.
            frames = sample_frames(path, num_frames,
                                   fit=lambda height, width: self.adapter.frame_size(height, width, num_frames))
            self._frames[key] = frames
            _trim(self._frames, self._cached_videos)
        self._frames.move_to_end(key)
        return self._frames[key]

    def estimate(self, config: TokenReduction, num_frames: int = 32, frame_size: tuple[int, int] = (384, 384),
                 question: str = "What happens in this video?", fps: float = 1.0,
                 duration: float | None = None) -> CostEstimate:
        """Predict tokens per layer and FLOPs before running anything (the UI's live preview).

        `frame_size` is the video's `(height, width)`, for models whose token count depends on it. `fps` and
        `duration` say when the frames are taken, for models that write the times in the prompt (Qwen3-VL): sampled
        from a video of `duration` seconds at `fps` frames a second as `sample_frames` samples them (all its frames
        if it has fewer than `num_frames`), or without `duration`, `1 / fps` seconds apart (as from an array).
        """
        metadata = _planned_metadata(num_frames, fps, duration)
        num_frames = len(metadata.frames_indices)
        layout = self.adapter.layout(question, num_frames, *frame_size, metadata)
        cost = estimate_cost(self.shape, layout.steps, layout.tokens_per_step, layout.text_tokens, config,
                             layout.unmerged, self.adapter.first_prunable_layer,
                             self.vision_work(layout.tokens_per_step))
        return replace(cost, num_frames=num_frames)

    def vision_work(self, tokens_per_step: int) -> VisionWork:
        """The vision tower's work per step of `tokens_per_step` LLM tokens, for cost estimates."""
        return VisionWork(self.adapter.vision_shape, self.adapter.vision_patches_per_step(tokens_per_step),
                          self.adapter.vision_output_layer)

    def plan_for_budget(self, budget_flops: int, frame_size: tuple[int, int] = (384, 384),
                        question: str = "What happens in this video?",
                        frame_choices: tuple[int, ...] = (8, 16, 32, 48, 64, 96, 128, 192, 256),
                        whole_pipeline: bool = True) -> BudgetPlan:
        """The most frames, and the least reduction for them, that fit `budget_flops`: of the vision tower and the
        prefill together (what a first question pays for), or with `whole_pipeline=False` of the prefill alone (as
        the paper counts). E.g. the budget of 32 frames unreduced: `qa.estimate(AIMConfig.none(), 32).total_flops`.

        Frame counts must share one layout per step (true of LLaVA-OneVision; Qwen's steps are pairs of frames).
        """
        layout = self.adapter.layout(question, 2, *frame_size)
        vision = self.vision_work(layout.tokens_per_step) if whole_pipeline else None
        return plan_for_budget(self.shape, budget_flops, layout.tokens_per_step, layout.text_tokens, frame_choices,
                               unmerged_visual_tokens=layout.unmerged, vision=vision)

    def answer(self, video: VideoInput, question: str, config: TokenReduction | None = None, num_frames: int = 32,
               max_new_tokens: int = 64, **generate_kwargs: Any) -> Answer:
        """Answer `question` about `video`: a video (a path, `SampledFrames`, or uint8 `[T, H, W, 3]` frames) or an
        image (a path, a PIL image, or a uint8 `[H, W, 3]` array)."""
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
    thread with pruning hooks on the decoder. `cancel()` stops the vision tower or the prefill before their next
    layer, and generation at the next token; the answer then says `cancelled`.
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

    def _stopped_before_first_token(self) -> None:
        self.answer = Answer(text="", stats=None, trace=None, config=self.config, cancelled=True)

    def __iter__(self) -> Iterator[str]:
        with self.qa._lock:
            yield from self._run()

    def _run(self) -> Iterator[str]:
        qa, adapter, device = self.qa, self.qa.adapter, self.qa.model.device
        started = time.perf_counter()
        try:
            with cancellable(adapter.vision_layers, self._cancelled.is_set):
                frames, key, vision_cached, video_decode_seconds = qa._encode(self.video, self.num_frames,
                                                                              self.config.vision_keep)
        except Cancelled:
            self._stopped_before_first_token()
            return
        encoding = qa._cache[key].encoding
        merged, merge_seconds = qa._reduced(key, self.config)
        order = adapter.visual_order(encoding, merged)
        num_visual = len(order)
        prompt = adapter.prompt(self.question, encoding, num_visual)
        keep_counts = no_pruning_before(self.config.visual_keep_counts(qa.shape.layers, num_visual),
                                        adapter.first_prunable_layer)
        pruner = VisualTokenPruner(adapter.decoder_layers, adapter.project_qk, prompt.visual_positions, num_visual,
                                   prompt.length, keep_counts, self.config.importance)
        # With nothing to prune no hook is installed, so efficiency 0 runs exactly the stock model.
        pruning = pruner if min(keep_counts) < num_visual else contextlib.nullcontext()

        streamer = TextIteratorStreamer(adapter.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        clock = _FirstTokenClock(device)
        inputs = adapter.generate_inputs(prompt, encoding, merged)
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, **self.generate_kwargs}
        outcome: dict[str, Any] = {}

        def stop_in_prefill() -> bool:
            # Between layers only until the first token; then the stopping criterion ends generation cleanly at the
            # next token, keeping the answer so far.
            return self._cancelled.is_set() and clock.first is None

        def generate() -> None:
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                outcome["start"] = _now(device)
                with pruning, cancellable(adapter.decoder_layers, stop_in_prefill), graph_free_attention():
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
        streamed_to_the_end = False
        try:
            for piece in streamer:
                first_token_at = first_token_at or time.perf_counter()
                self.text += piece
                yield piece
            streamed_to_the_end = True
        finally:
            # The consumer stopped early: stop generating too. (At the stream's end the worker may still be returning
            # from generate, which is no reason to call the answer cancelled.)
            if not streamed_to_the_end:
                self._cancelled.set()
            worker.join()
        if isinstance(outcome.get("error"), Cancelled):
            self._stopped_before_first_token()
            return
        if "error" in outcome:
            raise outcome["error"]

        output = outcome["output"]
        record = pruner.record if pruner.record.tokens_per_layer else PrefillRecord(
            tokens_per_layer=[prompt.length] * qa.shape.layers,
            kept_visual=[torch.arange(num_visual)] * qa.shape.layers,
        )
        text_tokens = prompt.length - num_visual
        vision_shape, (steps, tokens_per_step) = adapter.vision_shape, encoding.tokens.shape[:2]
        patches = adapter.vision_patches_per_step(tokens_per_step)
        unreduced = adapter.unmerged_visual_count(encoding)
        stats = Stats(
            num_frames=len(frames),
            visual_tokens_before_merge=unreduced,
            visual_tokens_after_merge=num_visual,
            text_tokens=text_tokens,
            tokens_per_layer=record.tokens_per_layer,
            flops=prefill_flops(record.tokens_per_layer, qa.shape),
            flops_baseline=prefill_flops([unreduced + text_tokens] * qa.shape.layers, qa.shape),
            vision_seconds=qa._cache[key].vision_seconds,
            video_decode_seconds=video_decode_seconds,
            vision_flops=vision_flops(vision_shape, steps, patches, qa._cache[key].vision.tokens_per_layer),
            vision_flops_baseline=vision_flops(vision_shape, steps, patches),
            vision_tokens_per_layer=qa._cache[key].vision.tokens_per_layer,
            vision_cached=vision_cached,
            merge_seconds=merge_seconds,
            scoring_seconds=pruner.scoring_seconds,
            prefill_seconds=clock.first - outcome["start"],
            decode_seconds=outcome["end"] - clock.first,
            time_to_first_token=(first_token_at or time.perf_counter()) - started,
            total_seconds=outcome["end"] - started,  # not the consumer's pace
            new_tokens=output.sequences.shape[1] - prompt.length,
            kv_cache_bytes=_cache_bytes(output.cache),
            peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        )
        trace = Trace(
            frames=frames if encoding.views is None else SampledFrames.from_array(encoding.views),
            grid=encoding.grid,
            merge_source=merged.source.cpu(),
            merged_per_frame=merged.tokens.shape[1],
            kept_per_layer=[order[kept.cpu()] for kept in record.kept_visual],
            frames_per_step=encoding.frames_per_step,
            vision_source=None if qa._cache[key].vision.source is None else qa._cache[key].vision.source.cpu(),
            vision_grid=qa._cache[key].vision.grid,
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


def _digest(frames: SampledFrames, is_image: bool) -> str:
    """Identity of a video for the cache: its decoded frames and their times (Qwen's prompts give the times), so
    the same clip cached twice is one entry."""
    digest = hashlib.blake2b(np.ascontiguousarray(frames.frames).data, digest_size=16)
    digest.update(np.ascontiguousarray(frames.timestamps, dtype=np.float64).data)
    digest.update(f"{frames.frames.shape} {is_image}".encode())
    return digest.hexdigest()


def _metadata(frames: SampledFrames) -> VideoMetadata:
    """When the frames were taken, as `transformers`' video processors read it: indices into the video's frames."""
    indices = [round(time * frames.fps) for time in frames.timestamps]
    return VideoMetadata(total_num_frames=max(round(frames.duration * frames.fps), indices[-1] + 1), fps=frames.fps,
                         duration=frames.duration, frames_indices=indices, height=frames.frames.shape[1],
                         width=frames.frames.shape[2])


def _planned_metadata(num_frames: int, fps: float, duration: float | None) -> VideoMetadata:
    """When the frames `estimate` plans for are taken, as `_metadata` will say of them once sampled."""
    if not (np.isfinite(fps) and fps > 0) or (duration is not None and not (np.isfinite(duration) and duration > 0)):
        raise SettingsError(f"fps and duration must be positive numbers, got {fps!r} and {duration!r}")
    total = num_frames if duration is None else max(1, round(duration * fps))
    return VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps,
                         frames_indices=frame_indices(total, num_frames).tolist())


def _image_of(media: VideoInput) -> np.ndarray | None:
    """The uint8 `[H, W, 3]` RGB pixels of `media` if it is an image (upright, as its EXIF asks), else None."""
    if isinstance(media, (str, Path)) and Path(media).suffix.lower() in IMAGE_SUFFIXES:
        try:
            with PIL.Image.open(media) as image:
                media = PIL.ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError) as error:
            raise VideoError(f"cannot read the image {str(media)!r}: {error}") from error
    if isinstance(media, PIL.Image.Image):
        return np.asarray(media.convert("RGB"))
    if isinstance(media, np.ndarray) and media.ndim == 3:
        if media.dtype != np.uint8 or media.shape[-1] != 3 or 0 in media.shape:
            raise VideoError(f"an image must be a uint8 [H, W, 3] array, got {media.dtype} {list(media.shape)}")
        return media
    return None


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
