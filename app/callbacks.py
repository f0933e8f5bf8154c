"""The app's event handlers: inputs from components in, values for components out. No layout here (see ui.py).

Errors a user can cause (`AIMError`) are shown with the engine's message, never a traceback: in the UI as a toast
plus a line under the answer, through the API as an error with the message; the log gets one line. The server keeps
serving. The model events take their inputs unprocessed by Gradio (`preprocess=False`), so that a client's bad value
(efficiency "abc", null, NaN, frames 3.5) reaches the checks in session.py, which name the setting, instead of
failing inside Gradio with a generic error and a traceback; `CheckedBlocks` refuses the requests Gradio cannot read at
all the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError

from aim_core import AIMConfig, AIMError, Answer, ModelError, Stats, VideoInfo
from aim_core.cli import answer_as_dict

from . import report
from .history import History, RunKey, RunPoint
from .models import ASSETS_DIR, REPO_ROOT, ModelRegistry, switching_locked_note
from .pictures import Gallery, Pictures
from .plots import time_figure, tokens_per_layer_figure, tradeoff_figure
from .samples import find_samples
from .session import PreparedVideo, Runner, check_question, check_switch, check_video, config_for, video_path

log = logging.getLogger(__name__)
STOPPED_EARLY = report.note("⏹ Stopped before the first token. Ask again when ready.")


@dataclass
class Measured:
    """The tokens per layer of the last answer, drawn under the live prediction until the next one."""

    tokens_per_layer: list[int]
    label: str


@dataclass
class AskOutputs:
    """What one step of an Ask updates, in the order of the event's outputs; a field left alone is not changed."""

    answer: Any = field(default_factory=gr.skip)
    baseline_answer: Any = field(default_factory=gr.skip)
    status: Any = field(default_factory=gr.skip)
    stats_cards: Any = field(default_factory=gr.skip)
    stats_json: Any = field(default_factory=gr.skip)
    clusters: Any = field(default_factory=gr.skip)
    layer: Any = field(default_factory=gr.skip)
    kept: Any = field(default_factory=gr.skip)
    layers_plot: Any = field(default_factory=gr.skip)
    tradeoff_plot: Any = field(default_factory=gr.skip)
    time_plot: Any = field(default_factory=gr.skip)
    vision_clusters: Any = field(default_factory=gr.skip)
    history: Any = field(default_factory=gr.skip)
    pictures: Any = field(default_factory=gr.skip)
    measured: Any = field(default_factory=gr.skip)

    @staticmethod
    def names() -> list[str]:
        return [item.name for item in fields(AskOutputs)]

    def values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.names())


class Callbacks:
    """Event handlers over one `Runner` (the model registry, the caches and the running streams)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @property
    def registry(self) -> ModelRegistry:
        return self.runner.registry

    def page_loaded(self) -> tuple[str, Any]:
        """The header and the picker as they are now: another session may have switched the model."""
        return report.header(self.registry.choice), self._picker()

    def video_changed(self, path: str | None) -> tuple[VideoInfo | None, str]:
        """Probe a new video at once, so a bad file is reported before anyone asks about it."""
        if not path:
            return None, ""
        try:
            info = check_video(path, self.runner.limits)
        except AIMError as error:
            gr.Warning(str(error))
            return None, report.note(str(error), bad=True)
        summary = report.note(report.video_summary(info.duration, info.width, info.height, info.fps, info.num_frames))
        return info, summary + (report.note(info.note, bad=True) if info.note else "")

    def preview(self, efficiency: object, num_frames: object, info: VideoInfo | None, question: object,
                measured: Measured | None, to_last_layer: object,
                vision_merge: object = True) -> tuple[str, go.Figure | Any]:
        """The live prediction for the sliders (no model run): the card and the tokens-per-layer plot."""
        try:
            estimate = self.runner.predict(efficiency, num_frames, info, question, to_last_layer, vision_merge)
            config = config_for(efficiency, to_last_layer, vision_merge)
        except AIMError as error:
            return report.note(str(error), bad=True), gr.skip()
        layers = len(estimate.tokens_per_layer)
        no_reduction = [estimate.visual_before_merge + estimate.text_tokens] * layers
        shown = measured if measured is not None and len(measured.tokens_per_layer) == layers else None
        figure = tokens_per_layer_figure(no_reduction, estimate.tokens_per_layer,
                                         shown.tokens_per_layer if shown else None, shown.label if shown else "")
        return report.prediction(estimate, config, layers), figure

    def ask(self, video: object, question: object, efficiency: object, num_frames: object, compare: object,
            history: History, to_last_layer: object, vision_merge: object, request: gr.Request,
            progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Answer in the UI: stream the text, then (optionally) the no-reduction answer, then stats and pictures."""
        self.runner.begin(request.session_hash)
        try:
            question = check_question(question)
            config = config_for(efficiency, to_last_layer, vision_merge)
            compare = check_switch(compare, "Compare with no reduction") and config != AIMConfig.none()
            prepared = self.runner.prepare(video_path(video), num_frames, lambda done, text: progress(done, desc=text))
            progress(0.3, desc=f"Vision tower on {len(prepared.frames)} frames (skipped if cached), then the LLM")
            answer = yield from self._streamed(
                prepared, question, config, request, "answer",
                baseline_answer=gr.update(value="", visible=compare), status=report.note("Answering…"))
            if answer.stats is None:
                yield AskOutputs(status=STOPPED_EARLY).values()
                return
            key = RunKey(self.registry.choice.key, prepared.info.path, len(prepared.frames), question)
            if not answer.cancelled:
                history.add(RunPoint.of(key, float(efficiency), answer))
            status = report.run_status(answer.stats, answer.cancelled)
            if prepared.frames.note:  # a damaged file, answered from what decodes
                status += report.note(prepared.frames.note, bad=True)
            stock = None
            if compare and not answer.cancelled:
                stock = yield from self._streamed(prepared, question, AIMConfig.none(), request, "baseline_answer",
                                                  status=report.note("Now the same question with no reduction…"))
                if not stock.cancelled:
                    history.add(RunPoint.of(key, 0.0, stock))
                    status += report.comparison(answer.stats, answer.text, stock.stats, stock.text)
            measured_baseline = stock.stats if stock is not None and not stock.cancelled else None
            yield self._finished(answer, float(efficiency), key, history, status, to_last_layer, config,
                                 measured_baseline).values()
        except AIMError as error:
            # A toast, and the message kept in the status line; not gr.Error, which would mark every output failed.
            log.warning("Refused a question: %s", error)
            gr.Warning(str(error), title="Cannot answer")
            yield AskOutputs(status=report.note(str(error), bad=True)).values()

    def answer_api(self, video: object, question: object, efficiency: object, frames: object,
                   request: gr.Request) -> Iterator[tuple[str, dict | None]]:
        """The `answer` endpoint: (video, question, efficiency[, frames]) -> (answer text, stats); streams the text.

        The stats are `aim_core.cli.answer_as_dict` of the answer: its config, `Stats` and whether it was cancelled.
        """
        self.runner.begin(request.session_hash)
        try:
            question = check_question(question)
            config = config_for(efficiency)
            prepared = self.runner.prepare(video_path(video), frames, lambda done, text: None)
            stream = self.runner.stream(prepared, question, config)
            with closing(self.runner.texts(stream, prepared, request.session_hash)) as texts:
                for text in texts:
                    yield text, None
            yield stream.answer.text, answer_as_dict(stream.answer)
        except AIMError as error:
            raise _user_error(error) from None

    def stop(self, request: gr.Request) -> str:
        stopped = self.runner.cancel(request.session_hash)
        return f'<div class="aim-status">⏹ {"Stopped." if stopped else "Cancelled."} Ask again when ready.</div>'

    def layer_changed(self, layer: float, pictures: Pictures | None) -> Gallery | Any:
        if pictures is None or not 0 <= layer < pictures.num_layers:
            return gr.skip()
        return pictures.kept_gallery(int(layer))

    def load_model(self, key: str,
                   progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[str, Any, str, Any]:
        """Switch models; on failure the previous one stays loaded, and the picker and the message say so. Merging
        inside the vision tower is switched to the new model's default (`Runner.vision_merge_pays`). Where models
        may not be switched (a shared Space) the request is refused with the reason, whoever sends it."""
        if not self.runner.limits.switch_models:
            raise _user_error(switching_locked_note(self.registry.choice))
        key = {published_key(choice.key): choice.key for choice in self.registry.choices()}.get(key, key)
        progress(0, desc=f"Loading {published_key(key)}")
        try:
            choice = self.registry.load(key)
        except ModelError as error:
            message = f"{error} Still using {self.registry.choice.label}."
            gr.Warning(message, title="Model not loaded")
            return gr.skip(), self._picker(), report.note(message, bad=True), gr.skip()
        return (report.header(choice), self._picker(), report.note(f"Loaded {choice.label}."),
                self.runner.vision_merge_pays())

    def _streamed(self, prepared: PreparedVideo, question: str, config: AIMConfig, request: gr.Request,
                  target: str, **first: Any) -> Iterator[tuple]:
        """Stream an answer into the output `target`, with the updates `first` on its first step; returns the
        `Answer` (use with `yield from`)."""
        stream = self.runner.stream(prepared, question, config)
        with closing(self.runner.texts(stream, prepared, request.session_hash)) as texts:
            for text in texts:
                yield AskOutputs(**{target: text, **first}).values()
                first = {}
        return stream.answer

    def _finished(self, answer: Answer, efficiency: float, key: RunKey, history: History, status: str,
                  to_last_layer: bool, config: AIMConfig, baseline: Stats | None = None) -> AskOutputs:
        stats = answer.stats
        pictures = Pictures.of(answer.trace)
        layer = pictures.first_pruned_layer()
        schedule = ", pruning until the last layer" if to_last_layer else ""
        schedule += "" if config.vision_keep < 1 or config == AIMConfig.none() else ", stock vision tower"
        label = f"efficiency {efficiency:.2f}{schedule}, {stats.num_frames} frames"
        no_reduction = [stats.visual_tokens_before_merge + stats.text_tokens] * len(stats.tokens_per_layer)
        return AskOutputs(
            answer=answer.text,
            status=status,
            stats_cards=report.stats_cards(stats),
            stats_json=answer_as_dict(answer),
            clusters=pictures.cluster_gallery(),
            layer=gr.update(maximum=pictures.num_layers - 1, value=layer),
            kept=pictures.kept_gallery(layer),
            layers_plot=tokens_per_layer_figure(no_reduction, measured=stats.tokens_per_layer, measured_label=label),
            tradeoff_plot=tradeoff_figure(history, key),
            time_plot=time_figure(stats, f"efficiency {efficiency:.2f}", baseline),
            vision_clusters=pictures.vision_gallery(),
            history=history,
            pictures=pictures,
            measured=Measured(stats.tokens_per_layer, label),
        )

    def sample_video(self, name: str | None, *row: Any) -> str | Any:
        """The video of the sample the page knows as `name` (see `published_sample`); the rest of the clicked `row`
        (question, frames, expected answer) is already in place."""
        videos = {published_sample(sample.video): str(sample.video) for sample in find_samples()}
        return videos.get(name, gr.skip())

    def picker_choices(self) -> list[tuple[str, str]]:
        """The model picker's `(label, value)` entries, with published keys (see `published_key`)."""
        return [(choice.label, published_key(choice.key)) for choice in self.registry.choices()]

    def picker_value(self) -> str:
        return published_key(self.registry.choice.key)

    def _picker(self) -> Any:
        return gr.update(choices=self.picker_choices(), value=self.picker_value())


def published_sample(video: str | Path) -> str:
    """A sample video as the page shows it: its path under assets/."""
    return str(Path(video).relative_to(ASSETS_DIR))


def published_key(key: str) -> str:
    """A model key as the page may show it: a hub id as it is, a folder relative to the repository (or by its name
    alone when outside it), never where the server keeps it."""
    path = Path(key)
    if not path.is_absolute():
        return key
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


class CheckedBlocks(gr.Blocks):
    """`gr.Blocks` that answers a malformed request, one Gradio refuses before any callback runs (too few inputs, a
    video that is not an uploaded file), with an error saying what is wrong and one log line, instead of Gradio's
    generic error and a traceback."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
        except ValueError as error:  # Gradio's checks of the request raise ValueErrors (pydantic's among them)
            if len(inputs) < len(block_fn.inputs):
                message = f"The request has {len(inputs)} inputs; this endpoint takes {len(block_fn.inputs)}."
            elif isinstance(error, InvalidPathError):
                message = "A file in the request was not uploaded to this server: upload it first."
            elif isinstance(error, ValidationError):  # the only inputs with a data model here are videos
                message = "The video must be an uploaded file (gradio_client: handle_file(path))."
            else:
                message = "An input of this request is not of the kind its component takes."
            raise _user_error(message) from None


def _user_error(error: AIMError | str) -> gr.Error:
    """The API's error: the message, and one line in the server's log, not a traceback: nothing is wrong with the
    server."""
    log.warning("Refused an API call: %s", error)
    return gr.Error(str(error), print_exception=False)
