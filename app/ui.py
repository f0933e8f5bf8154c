"""The page: layout, styles and event wiring. What the events do is in callbacks.py.

Element ids, for tests and users' own automation: video, question, frames, efficiency, to-last-layer, prediction,
compare, ask, stop, answer, baseline-answer, status, stats-cards, stats (raw JSON), clusters, layer, kept, layers,
tradeoff, model, load-model, model-note. Only the `answer` event is a public API endpoint; the UI's own events are
private.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from aim_core.config import DEFAULT_EFFICIENCY

from . import report, space
from .callbacks import AskOutputs, Callbacks, CheckedBlocks, published_sample
from .history import History
from .models import ASSETS_DIR, switching_locked_note
from .plots import tradeoff_figure
from .samples import example_rows, find_samples
from .session import Runner

DEFAULT_FRAMES = 32
MODEL_RUNS = "model"  # the concurrency group of everything that uses the model: one at a time, the rest queue
GALLERY_HELP = {
    "clusters": "Every sampled frame after merging: the patches that became one token share a tint (their mean "
                "colour) and an outline. Click a frame to browse them all.",
    "kept": "The tokens the chosen LLM layer still processed; the dropped ones are grey. Pruning starts halfway "
            "down the model and removes visual tokens layer by layer.",
    "vision": "Inside the vision tower, before all of the above: the patches merged into one token there share a "
              "tint. Each patch leaves the tower with its token's value, so the tower's output grid is whole. Empty "
              "when the tower ran whole (efficiency 0, \"Merge inside the vision tower\" off, or a Qwen model).",
}
CSS = """
.aim-header { padding: 4px 2px 0; }
.aim-title { font-size: 1.75rem; font-weight: 700; letter-spacing: -0.01em; }
.aim-tagline { color: var(--body-text-color-subdued); margin: 2px 0 10px; max-width: 70em; }
.aim-model { display: inline-block; padding: 4px 12px; border-radius: 999px; background: var(--color-accent-soft);
             font-size: 0.9rem; }
.aim-warning { background: #fef3c7; color: #92400e; }
.aim-note { opacity: 0.85; margin-left: 4px; }
.aim-prediction { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
                  background: var(--block-background-fill); line-height: 1.5; }
.aim-prediction-title, .aim-card-title { font-size: 0.72rem; font-weight: 600; text-transform: uppercase;
                                         letter-spacing: 0.05em; color: var(--body-text-color-subdued); }
.aim-muted { color: var(--body-text-color-subdued); font-size: 0.88rem; }
.aim-bad { color: #dc2626; }
.aim-status { padding: 2px 2px 6px; }
.aim-compare { margin-top: 2px; }
.aim-agree { color: #16a34a; font-weight: 600; }
.aim-differ { color: #dc2626; font-weight: 600; }
.aim-cards { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 10px; }
.aim-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
            background: var(--block-background-fill); }
.aim-card-value { font-size: 1.3rem; font-weight: 700; margin: 2px 0; white-space: nowrap; overflow: hidden;
                  text-overflow: ellipsis; }
.aim-card-detail { font-size: 0.8rem; color: var(--body-text-color-subdued); }
#answer textarea { font-size: 1.1rem; }
"""


def build_app(runner: Runner) -> gr.Blocks:
    """The whole app over `runner` (the loaded model, its caches and limits), with its queue set up."""
    callbacks = Callbacks(runner)
    ask_on_gpu, answer_on_gpu = space.gpu_callbacks(callbacks)  # ZeroGPU on a Space
    registry = runner.registry
    samples = example_rows(find_samples(), DEFAULT_FRAMES)
    with CheckedBlocks(title="AIM Video QA", delete_cache=(3600, 6 * 3600)) as demo:
        history = gr.State(History())
        pictures = gr.State(None)
        measured = gr.State(None)
        video_info = gr.State(None)

        header = gr.HTML(report.header(registry.choice))
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=340):
                video = gr.Video(label="Video", sources=["upload"], include_audio=True, height=270, elem_id="video")
                video_note = gr.HTML(report.note("No video at hand? Pick a sample below.") if samples else "")
                question = gr.Textbox(label="Question", lines=2, elem_id="question",  # too long: refused, not cut
                                      placeholder="What do you want to know about the video?")
                expected = gr.Textbox(label="Expected answer (the sample's ground truth)", interactive=False,
                                      visible=bool(samples), elem_id="expected")
                frames = gr.Slider(runner.limits.min_frames, runner.limits.max_frames, value=DEFAULT_FRAMES, step=8,
                                   label="Frames", info="spread evenly over the whole video", elem_id="frames")
                efficiency = gr.Slider(0, 1, value=DEFAULT_EFFICIENCY, step=0.05, label="Efficiency",
                                       info="0 = the stock model · 0.75 = the paper's LLM-side reduction, plus merging "
                                            "inside the vision tower · 1 = most aggressive",
                                       elem_id="efficiency")
                to_last_layer = gr.Checkbox(label="Prune until the last layer", elem_id="to-last-layer",
                                            info="Keep some visual tokens down to the LLM's last layer instead of "
                                                 "none from 3/4 of its depth on: a little more cost, for shallow "
                                                 "models that still read the video in their last layers.")
                vision_merge = gr.Checkbox(value=runner.vision_merge_pays(), label="Merge inside the vision tower",
                                           elem_id="vision-merge",
                                           info="From efficiency 0.25, the vision tower's blocks also run on merged "
                                                "patches: most of the wait for models up to a few billion "
                                                "parameters. Off: the stock tower. On by "
                                                "default where the tower is most of the cost (not for the demo "
                                                "model).")
                prediction = gr.HTML(elem_id="prediction")
                compare = gr.Checkbox(label="Compare with no reduction", elem_id="compare",
                                      info="Also runs the stock model: both answers side by side, with the speedup. "
                                           "Its answer is what the trade-off plot's agreement marks compare with.")
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", scale=3, elem_id="ask")
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
                switchable = runner.limits.switch_models  # not on a shared Space: the model is everyone's
                with gr.Accordion("Model", open=False):
                    model = gr.Dropdown(label="Model", elem_id="model", interactive=switchable,
                                        choices=callbacks.picker_choices(), value=callbacks.picker_value(),
                                        info="Hub models are downloaded on first use, if the hub can be reached."
                                        if switchable else "Fixed on this Space (see below).")
                    load = gr.Button("Load model", elem_id="load-model", interactive=switchable)
                    model_note = gr.HTML("" if switchable else report.note(switching_locked_note(registry.choice)),
                                         elem_id="model-note")
            with gr.Column(scale=7, min_width=420):
                with gr.Row():
                    answer = gr.Textbox(label="Answer", lines=3, interactive=False, buttons=["copy"],
                                        placeholder="The answer appears here as it is generated.", elem_id="answer")
                    baseline_answer = gr.Textbox(label="Answer with no reduction", lines=3, interactive=False,
                                                 visible=False, elem_id="baseline-answer")
                status = gr.HTML(elem_id="status")
                stats_cards = gr.HTML(elem_id="stats-cards")
                with gr.Tabs():
                    with gr.Tab("Merged clusters"):
                        gr.Markdown(GALLERY_HELP["clusters"])
                        clusters = gr.Gallery(show_label=False, columns=4, height=420, object_fit="contain",
                                              format="jpeg", buttons=["download", "fullscreen"], elem_id="clusters")
                    with gr.Tab("Kept tokens by layer"):
                        gr.Markdown(GALLERY_HELP["kept"])
                        layer = gr.Slider(0, 1, value=0, step=1, label="LLM layer", elem_id="layer")
                        kept = gr.Gallery(show_label=False, columns=4, height=360, object_fit="contain",
                                          format="jpeg", buttons=["download", "fullscreen"], elem_id="kept")
                    with gr.Tab("Merged in the vision tower"):
                        gr.Markdown(GALLERY_HELP["vision"])
                        vision_clusters = gr.Gallery(show_label=False, columns=4, height=420, object_fit="contain",
                                                     format="jpeg", buttons=["download", "fullscreen"],
                                                     elem_id="vision-clusters")
        if samples:
            with gr.Accordion("Samples: videos with suggested questions and their answers", open=True):
                # The page gets each sample's name, never its file on the server: a click loads the video by name.
                sample = gr.Textbox(label="Sample", visible=False)
                gr.Examples([[published_sample(row[0]), *row[1:]] for row in samples],
                            inputs=[sample, question, frames, expected], outputs=[video], fn=callbacks.sample_video,
                            run_on_click=True, cache_examples=False, label=None, examples_per_page=4,
                            api_visibility="private")
            # A question or video of one's own has no known answer.
            for edited in (question.input, video.upload):
                edited(None, None, expected, js="() => ''", api_visibility="private")
        time_plot = gr.Plot(show_label=False, elem_id="time")  # where the wait of a first answer went
        with gr.Row(equal_height=True):
            layers_plot = gr.Plot(show_label=False, elem_id="layers")
            tradeoff_plot = gr.Plot(tradeoff_figure(History(), None), show_label=False, elem_id="tradeoff")
        with gr.Accordion("Raw stats (JSON)", open=False):
            stats_json = gr.JSON(label="stats", show_label=False, elem_id="stats")
        api_trigger = gr.Button(visible=False)  # the `answer` endpoint has no button of its own

        ask_outputs: dict[str, Any] = {
            "answer": answer, "baseline_answer": baseline_answer, "status": status, "stats_cards": stats_cards,
            "stats_json": stats_json, "clusters": clusters, "layer": layer, "kept": kept,
            "layers_plot": layers_plot, "tradeoff_plot": tradeoff_plot, "time_plot": time_plot,
            "vision_clusters": vision_clusters, "history": history,
            "pictures": pictures, "measured": measured,
        }
        private = {"api_visibility": "private"}
        preview = {"fn": callbacks.preview,
                   "inputs": [efficiency, frames, video_info, question, measured, to_last_layer, vision_merge],
                   "outputs": [prediction, layers_plot], "queue": False, "show_progress": "hidden",
                   "preprocess": False, **private}

        demo.load(callbacks.page_loaded, None, [header, model], queue=False, **private).then(**preview)
        video.change(callbacks.video_changed, [video], [video_info, video_note], queue=False, **private).then(
            **preview)
        for setting in (efficiency, frames, to_last_layer, vision_merge):
            setting.change(trigger_mode="always_last", **preview)

        asking = {"fn": ask_on_gpu,
                  "inputs": [video, question, efficiency, frames, compare, history, to_last_layer, vision_merge],
                  "outputs": [ask_outputs[name] for name in AskOutputs.names()], "concurrency_id": MODEL_RUNS,
                  "show_progress_on": [answer], "preprocess": False, **private}
        runs = [ask.click(**asking), question.submit(**asking)]
        # Two listeners: Gradio's cancel waits for the run's thread to yield, so the stop that reaches the model
        # (between layers of the vision tower or the prefill) must not wait for it.
        stop.click(callbacks.stop, None, [status], queue=False, **private)
        stop.click(None, cancels=runs, **private)
        layer.input(callbacks.layer_changed, [layer, pictures], [kept], trigger_mode="always_last",
                    show_progress="hidden", **private)
        load.click(callbacks.load_model, [model], [header, model, model_note, vision_merge], concurrency_id=MODEL_RUNS,
                   show_progress_on=[model], **private).then(**preview)
        api_trigger.click(answer_on_gpu, [video, question, efficiency, frames], [answer, stats_json],
                          api_name="answer", concurrency_id=MODEL_RUNS, preprocess=False)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch_options(host: str, port: int, share: bool, max_upload_bytes: int) -> dict[str, Any]:
    """`demo.launch` arguments: where to listen, what may be served (assets/ and uploads only), the looks."""
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "allowed_paths": [str(ASSETS_DIR)],
        "max_file_size": max_upload_bytes,
        "footer_links": ["api"],
        "run_history": False,
        "ssr_mode": False,
        "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="amber"),
        "css": CSS,
    }
