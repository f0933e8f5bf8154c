"""What the app's callbacks do, without the UI: check inputs against the limits, predict the cost of a setting, and
run a question (frames, vision tower, then the streamed answer) so that it can be cancelled.

Every failure a user can cause raises an `AIMError` subclass whose message says what to do; the UI shows it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from aim_core import (
    AIMConfig,
    AIMError,
    AnswerStream,
    CostEstimate,
    QuestionError,
    SampledFrames,
    SettingsError,
    VideoError,
    VideoInfo,
    probe_video,
)
from aim_core.qa import MAX_QUESTION_CHARS

from .models import ModelRegistry

Progress = Callable[[float, str], None]
DEFAULT_FRAME_SIZE = (384, 384)  # (height, width) assumed for the prediction before a video is chosen
PREVIEW_QUESTION = "What happens in this video?"  # stands in for the question's length while none is typed
STREAM_INTERVAL = 0.05  # seconds between looks at a growing answer
SHOWN_VALUE_CHARS = 40  # of a refused value, quoted in the message


@dataclass(frozen=True)
class Limits:
    """What the app accepts. Uploads over `max_upload_bytes` are refused by the server itself (Gradio's
    `max_file_size`); the checks here catch the rest, and files that reach the API another way. `switch_models`:
    whether a visitor may load another model (not on a shared Space, where the model is everyone's)."""

    max_upload_bytes: int = 2 * 1024**3
    max_duration_seconds: float = 3 * 3600
    min_frames: int = 8
    max_frames: int = 256
    max_new_tokens: int = 64
    switch_models: bool = True


@dataclass
class PreparedVideo:
    """A checked video, its decoded frames, and the seconds decoding (or finding them in the cache) took."""

    info: VideoInfo
    frames: SampledFrames
    decode_seconds: float


# The checks below take inputs as any client may send them (Gradio hands them over unprocessed): each refuses a value
# of the wrong type, NaN or out of range with a message that names the setting.


def check_question(question: object) -> str:
    if question is None or (isinstance(question, str) and not question.strip()):
        raise QuestionError("Type a question about the video first.")
    if not isinstance(question, str):
        raise QuestionError(f"The question must be text, got {_shown(question)}.")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(f"The question is {len(question):,} characters long; the limit is "
                            f"{MAX_QUESTION_CHARS:,}. Shorten it.")
    return question.strip()


def video_path(video: object) -> str | None:
    """The file of a video input: Gradio's file record (already checked to be an upload or a served file), or a
    path."""
    if isinstance(video, dict):
        video = video.get("path")
    if video is not None and not isinstance(video, str):
        raise VideoError(f"The video must be an uploaded file, got {_shown(video)}.")
    return video


def check_video(path: str | None, limits: Limits) -> VideoInfo:
    """Probe the video at `path` (fast: decodes one frame) and check it against the limits."""
    if not path:
        raise VideoError("Upload a video or pick a sample first.")
    try:
        size = os.path.getsize(path)
    except OSError:
        raise VideoError(f"The video {Path(path).name} cannot be found; upload it again.") from None
    if size > limits.max_upload_bytes:
        raise VideoError(f"The video is {size / 2**30:.1f} GiB; the limit is {limits.max_upload_bytes / 2**30:.0f} "
                         "GiB.")
    try:
        info = probe_video(path)
    except VideoError as error:
        raise VideoError(_without_folder(error, path)) from None
    if info.duration > limits.max_duration_seconds:
        raise VideoError(f"The video lasts {info.duration / 3600:.1f} h; the limit is "
                         f"{limits.max_duration_seconds / 3600:g} h. Trim it first.")
    return info


def check_frames(num_frames: object, limits: Limits) -> int:
    if not (_is_number(num_frames) and limits.min_frames <= num_frames <= limits.max_frames
            and num_frames == int(num_frames)):
        raise SettingsError(f"Frames must be a whole number from {limits.min_frames} to {limits.max_frames}, got "
                            f"{_shown(num_frames)}.")
    return int(num_frames)


def check_efficiency(efficiency: object) -> float:
    if not (_is_number(efficiency) and 0 <= efficiency <= 1):
        raise SettingsError(f"Efficiency must be a number from 0 to 1, got {_shown(efficiency)}.")
    return float(efficiency)


def check_switch(value: object, label: str) -> bool:
    """A checkbox's value; `label` names it in the message."""
    if not isinstance(value, bool):
        raise SettingsError(f'"{label}" must be true or false, got {_shown(value)}.')
    return value


def config_for(efficiency: object, to_last_layer: object = False, vision_merge: object = True) -> AIMConfig:
    """The AIM setting of the efficiency slider (SettingsError outside [0, 1]). With `to_last_layer`, pruning keeps
    some visual tokens down to the last layer instead of none from about 3/4 of the depth on: shallow models may
    still read the video there. Without `vision_merge`, the vision tower runs whole."""
    config = AIMConfig.from_efficiency(check_efficiency(efficiency))
    if check_switch(to_last_layer, "Prune until the last layer"):
        config = config.pruning_until_last_layer()
    return config if check_switch(vision_merge, "Merge inside the vision tower") else config.with_stock_tower()


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool, which JSON clients mean as a switch)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: object) -> str:
    """`value` as the JSON a client sent, cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 1] + "…"


class Runner:
    """Runs questions on the registry's model; one at a time (the app's queue makes sure of it).

    The engine keeps recent videos' frames and vision features, so a follow-up question, or the same one at another
    efficiency, runs the LLM only. Keeps each session's running stream so that its Stop button can end it: in the
    vision tower or the prefill before their next layer, in generation at the next token.
    """

    def __init__(self, registry: ModelRegistry, limits: Limits = Limits()) -> None:
        self.registry = registry
        self.limits = limits
        self._running: dict[str, AnswerStream] = {}
        self._asking: set[str] = set()  # sessions from `begin` to the end of their stream
        self._stop_asked: set[str] = set()  # sessions whose Stop came while their run was still decoding frames
        self._running_lock = threading.Lock()

    def vision_merge_pays(self) -> bool:
        """Whether merging inside the vision tower is worth turning on by default for the loaded model: its tower can
        merge, and is at least 40% of an unreduced first answer's FLOPs at 32 frames (the picker's 0.5B-3B models).
        Not for the 7B/8B models, whose LLM dominates, nor the demo model, whose tiny tower is a small share of its
        cost: merging there saves little, though its answers keep their accuracy
        (`benchmarks.vision_merge_accuracy`)."""
        if self.registry.qa.adapter.vision_output_layer is None:
            return False
        estimate = self.registry.qa.estimate(AIMConfig.none(), 32, DEFAULT_FRAME_SIZE)
        return estimate.vision_flops_baseline >= 0.4 * estimate.total_flops_baseline

    def predict(self, efficiency: object, num_frames: object, info: VideoInfo | None, question: object,
                to_last_layer: object = False, vision_merge: object = True) -> CostEstimate:
        """The cost of a setting before anything runs (no model call): what the slider previews."""
        frames = check_frames(num_frames, self.limits)
        frame_size = (info.height, info.width) if info else DEFAULT_FRAME_SIZE
        typed = question.strip() if isinstance(question, str) else ""
        # The video's frame rate and length say when its frames are taken (Qwen3-VL writes the times in the prompt).
        timing = {"fps": info.fps, "duration": info.duration} if info else {}
        return self.registry.qa.estimate(config_for(efficiency, to_last_layer, vision_merge),
                                         min(frames, info.num_frames) if info else frames, frame_size,
                                         typed or PREVIEW_QUESTION, **timing)

    def prepare(self, path: str | None, num_frames: object, progress: Progress) -> PreparedVideo:
        """Check the video and decode its frames (the engine keeps them for the next question on this video)."""
        info = check_video(path, self.limits)
        frames_wanted = check_frames(num_frames, self.limits)
        progress(0.05, f"Decoding {min(frames_wanted, info.num_frames)} frames")
        started = time.perf_counter()
        try:
            with _memory_errors():
                frames = self.registry.qa.sample_frames(info.path, frames_wanted)
        except VideoError as error:
            raise VideoError(_without_folder(error, info.path)) from None
        return PreparedVideo(info, frames, time.perf_counter() - started)

    def stream(self, video: PreparedVideo, question: str, config: AIMConfig) -> AnswerStream:
        """An answer stream for `question` (not started: iterate it with `texts`)."""
        return self.registry.qa.stream(video.frames, check_question(question), config, num_frames=len(video.frames),
                                       max_new_tokens=self.limits.max_new_tokens)

    def texts(self, stream: AnswerStream, video: PreparedVideo, session: str) -> Iterator[str]:
        """The answer so far, each time it has grown; `stream.answer` is set when this ends.

        The stream runs in its own thread, and this only looks at its text every STREAM_INTERVAL seconds: a slow
        consumer (a browser far away) neither slows generation down nor inflates the measured times. The first
        step runs the vision tower (unless the model has these frames cached) and the prefill. The answer's time to
        first token and total time include decoding the frames, as a user waits for that too. Closing this
        iterator early (Gradio closes the callback's when its event is cancelled) stops the run at the next layer or
        token and frees the model for the next run.
        """
        failures: list[BaseException] = []

        def consume() -> None:
            try:
                for _ in stream:
                    pass
            except BaseException as error:  # re-raised in the consumer's thread
                failures.append(error)

        with self._running_lock:
            self._running[session] = stream
            if session in self._stop_asked:
                self._stop_asked.discard(session)
                stream.cancel()
        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        shown = ""
        try:
            while worker.is_alive() or stream.text != shown:
                worker.join(STREAM_INTERVAL)
                if stream.text != shown:
                    shown = stream.text
                    yield shown
        finally:
            if worker.is_alive():
                stream.cancel()
                worker.join()
            with self._running_lock:
                self._running.pop(session, None)
                self._asking.discard(session)
        if failures:
            with _memory_errors():
                raise failures[0]
        if stream.answer.stats is not None:  # None when stopped before the first token
            # The frames were decoded here, before the engine got them: their time belongs to this answer's wait.
            stream.answer.stats.video_decode_seconds += video.decode_seconds
            stream.answer.stats.time_to_first_token += video.decode_seconds
            stream.answer.stats.total_seconds += video.decode_seconds

    def begin(self, session: str) -> None:
        """A new question of `session` starts: a Stop pressed before it is not meant for it."""
        with self._running_lock:
            self._stop_asked.discard(session)
            self._asking.add(session)

    def cancel(self, session: str) -> bool:
        """Stop the run of `session`: the stream running (True), or else, if it has begun a question, the stream
        that question starts (False), so that a Stop pressed while the frames decode is not lost."""
        with self._running_lock:
            stream = self._running.get(session)
            if stream is None and session in self._asking:
                self._stop_asked.add(session)
        if stream is not None:
            stream.cancel()
        return stream is not None


@contextmanager
def _memory_errors() -> Iterator[None]:
    """Turns running out of memory into an AIMError with advice, instead of an opaque server error."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise SettingsError("Out of memory: use fewer frames or a higher efficiency.") from None


def _without_folder(error: AIMError, path: str) -> str:
    """The error's message with the upload's temporary folder left out: only the file name means anything."""
    name = Path(path).name
    message = str(error).replace(path, name)
    return f"The file {message}" if message.startswith(name) else message[:1].upper() + message[1:]
