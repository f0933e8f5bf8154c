"""The app's event handlers: inputs from components in, values for components out. No layout here (see ui.py).

Errors a user can cause (`AIMError`) are shown with the engine's message, never a traceback: in the UI as a toast
plus a line under the answer, through the API as an error with the message. The server keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, fields
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from aim_core import AIMConfig, AIMError, Answer, ModelError, VideoInfo
from aim_core.cli import answer_as_dict

from . import report
from .history import History, RunKey, RunPoint
from .models import ModelRegistry
from .pictures import Gallery, Pictures
from .plots import tokens_per_layer_figure, tradeoff_figure
from .session import PreparedVideo, Runner, check_question, check_video, config_for


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
        return info, report.note(report.video_summary(info.duration, info.width, info.height, info.fps,
                                                      info.num_frames))

    def preview(self, efficiency: float, num_frames: float, info: VideoInfo | None, question: str | None,
                measured: Measured | None, to_last_layer: bool) -> tuple[str, go.Figure | Any]:
        """The live prediction for the sliders (no model run): the card and the tokens-per-layer plot."""
        try:
            estimate = self.runner.predict(efficiency, num_frames, info, question, to_last_layer)
            config = config_for(efficiency, to_last_layer)
        except AIMError as error:
            return report.note(str(error), bad=True), gr.skip()
        layers = len(estimate.tokens_per_layer)
        no_reduction = [estimate.visual_before_merge + estimate.text_tokens] * layers
        shown = measured if measured is not None and len(measured.tokens_per_layer) == layers else None
        figure = tokens_per_layer_figure(no_reduction, estimate.tokens_per_layer,
                                         shown.tokens_per_layer if shown else None, shown.label if shown else "")
        return report.prediction(estimate, config, layers), figure

    def ask(self, video: str | None, question: str | None, efficiency: float, num_frames: float, compare: bool,
            history: History, to_last_layer: bool, request: gr.Request,
            progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Answer in the UI: stream the text, then (optionally) the no-reduction answer, then stats and pictures."""
        try:
            question = check_question(question)
            config = config_for(efficiency, to_last_layer)
            prepared = self.runner.prepare(video, num_frames, lambda done, text: progress(done, desc=text))
            compare = compare and config != AIMConfig.none()
            progress(0.3, desc=f"Vision tower on {len(prepared.frames)} frames (skipped if cached), then the LLM")
            answer = yield from self._streamed(
                prepared, question, config, request, "answer",
                baseline_answer=gr.update(value="", visible=compare), status=report.note("Answering…"))
            key = RunKey(self.registry.choice.key, prepared.info.path, len(prepared.frames), question)
            if not answer.cancelled:
                history.add(RunPoint.of(key, float(efficiency), answer))
            status = report.run_status(answer.stats, answer.cancelled)
            if compare and not answer.cancelled:
                stock = yield from self._streamed(prepared, question, AIMConfig.none(), request, "baseline_answer",
                                                  status=report.note("Now the same question with no reduction…"))
                if not stock.cancelled:
                    history.add(RunPoint.of(key, 0.0, stock))
                    status += report.comparison(answer.stats, answer.text, stock.stats, stock.text)
            yield self._finished(answer, float(efficiency), key, history, status, to_last_layer).values()
        except AIMError as error:
            # A toast, and the message kept in the status line; not gr.Error, which would mark every output failed.
            gr.Warning(str(error), title="Cannot answer")
            yield AskOutputs(status=report.note(str(error), bad=True)).values()

    def answer_api(self, video: str | None, question: str | None, efficiency: float, frames: float,
                   request: gr.Request) -> Iterator[tuple[str, dict | None]]:
        """The `answer` endpoint: (video, question, efficiency[, frames]) -> (answer text, stats); streams the text.

        The stats are `aim_core.cli.answer_as_dict` of the answer: its config, `Stats` and whether it was cancelled.
        """
        try:
            question = check_question(question)
            config = config_for(efficiency)
            prepared = self.runner.prepare(video, frames, lambda done, text: None)
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

    def load_model(self, key: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[str, Any, str]:
        """Switch models; on failure the previous one stays loaded, and the picker and the message say so."""
        progress(0, desc=f"Loading {key}")
        try:
            choice = self.registry.load(key)
        except ModelError as error:
            message = f"{error} Still using {self.registry.choice.label}."
            gr.Warning(message, title="Model not loaded")
            return gr.skip(), self._picker(), report.note(message, bad=True)
        return report.header(choice), self._picker(), report.note(f"Loaded {choice.label}.")

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
                  to_last_layer: bool) -> AskOutputs:
        stats = answer.stats
        pictures = Pictures.of(answer.trace)
        layer = pictures.first_pruned_layer()
        schedule = ", pruning until the last layer" if to_last_layer else ""
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
            history=history,
            pictures=pictures,
            measured=Measured(stats.tokens_per_layer, label),
        )

    def _picker(self) -> Any:
        return gr.update(choices=[(choice.label, choice.key) for choice in self.registry.choices()],
                         value=self.registry.choice.key)


def _user_error(error: AIMError) -> gr.Error:
    """The API's error: the message, and no traceback in the server's log, since nothing is wrong with the server."""
    return gr.Error(str(error), print_exception=False)
