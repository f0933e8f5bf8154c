"""The app's logic without a browser or a server: limits, prediction, runs, cancelling, history, models, samples."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

import app  # noqa: F401  (analytics off before gradio is imported)
import launch
from aim_core import (
    AIMConfig,
    AIMError,
    AnswerStream,
    ModelError,
    QuestionError,
    SettingsError,
    VideoError,
    VideoQA,
    probe_video,
)
from aim_core.config import MERGE_ROUND
from app import models, samples
from app.callbacks import Callbacks, published_key, published_sample
from app.history import History, RunKey, RunPoint, same_answer
from app.models import DEMO_MODEL, RANDOM_MODEL, ModelChoice, ModelRegistry
from app.pictures import Pictures
from app.plots import tokens_per_layer_figure, tradeoff_figure
from app.session import Limits, Runner, check_frames, check_question, check_video, config_for, video_path
from app.testing import write_test_video

QUESTION = "Which colour appears first?"
TINY = ModelChoice("tiny", "Tiny test model")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    write_test_video(path, num_frames=24, height=48, width=64)
    return str(path)


@pytest.fixture
def runner(tiny_llava) -> Runner:
    return Runner(ModelRegistry(TINY, TINY, VideoQA.from_model(*tiny_llava)), Limits(max_new_tokens=12))


def no_progress(done: float, text: str) -> None:
    pass


def test_the_prediction_is_the_engines_estimate_for_the_videos_size_and_frames(runner, video):
    info = probe_video(video)
    estimate = runner.predict(0.6, 32, info, QUESTION)
    # The video has only 24 frames, so asking for 32 gives 24.
    assert estimate == runner.registry.qa.estimate(AIMConfig.from_efficiency(0.6), 24, (48, 64), QUESTION)
    assert estimate.visual_after_merge < estimate.visual_before_merge == 24 * 16 + 1


def test_pruning_until_the_last_layer_is_predicted_and_run_as_predicted(runner, video):
    info = probe_video(video)
    paper = runner.predict(0.75, 32, info, QUESTION)
    to_last = runner.predict(0.75, 32, info, QUESTION, to_last_layer=True)
    to_last_config = AIMConfig.from_efficiency(0.75).pruning_until_last_layer()
    assert config_for(0.75, to_last_layer=True) == to_last_config and to_last_config.prune_end == 1.0
    assert to_last == runner.registry.qa.estimate(to_last_config, 24, (48, 64), QUESTION)
    # Visual tokens stay until the last layer: more of them in the deep layers, so a little more cost.
    assert to_last.tokens_per_layer[-2] > paper.tokens_per_layer[-2]
    assert to_last.tokens_per_layer[-1] == paper.tokens_per_layer[-1]
    assert to_last.flops > paper.flops
    prepared = runner.prepare(video, 32, no_progress)
    stream = runner.stream(prepared, QUESTION, config_for(0.75, to_last_layer=True))
    for _ in stream:
        pass
    assert stream.answer.stats.tokens_per_layer == to_last.tokens_per_layer


def test_limits_are_checked_with_messages_that_say_what_to_do(runner, video, tmp_path):
    with pytest.raises(VideoError, match="Upload a video"):
        check_video(None, Limits())
    with pytest.raises(VideoError, match="lasts 0.0 h; the limit is 0.0002 h"):
        check_video(video, Limits(max_duration_seconds=0.72))
    with pytest.raises(VideoError, match="limit is"):
        check_video(video, Limits(max_upload_bytes=100))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        check_video(str(empty), Limits())
    corrupt = tmp_path / "corrupt.webm"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(VideoError, match="^The file corrupt.webm is not a readable video") as error:
        check_video(str(corrupt), Limits())
    assert str(tmp_path) not in str(error.value)  # the upload's temporary folder means nothing to a user
    with pytest.raises(QuestionError, match="Type a question"):
        check_question("   ")
    with pytest.raises(SettingsError, match="Frames must be a whole number from 8 to 256, got 512"):
        runner.prepare(video, 512, no_progress)


@pytest.mark.parametrize(("check", "value", "message"), [
    ("efficiency", "abc", 'Efficiency must be a number from 0 to 1, got "abc".'),
    ("efficiency", None, "Efficiency must be a number from 0 to 1, got null."),
    ("efficiency", float("nan"), "Efficiency must be a number from 0 to 1, got NaN."),
    ("efficiency", 1.5, "Efficiency must be a number from 0 to 1, got 1.5."),
    ("efficiency", True, "Efficiency must be a number from 0 to 1, got true."),
    ("frames", "x", 'Frames must be a whole number from 8 to 256, got "x".'),
    ("frames", 3.5, "Frames must be a whole number from 8 to 256, got 3.5."),
    ("frames", 16.5, "Frames must be a whole number from 8 to 256, got 16.5."),
    ("frames", None, "Frames must be a whole number from 8 to 256, got null."),
    ("frames", float("inf"), "Frames must be a whole number from 8 to 256, got Infinity."),
    ("to_last_layer", "yes", '"Prune until the last layer" must be true or false, got "yes".'),
    ("to_last_layer", None, '"Prune until the last layer" must be true or false, got null.'),
    ("question", 5, "The question must be text, got 5."),
    ("question", "x" * 100_000, "The question is 100,000 characters long; the limit is 2,000. Shorten it."),
    ("video", 5, "The video must be an uploaded file, got 5."),
    ("video", {"path": ["a"]}, 'The video must be an uploaded file, got ["a"].'),
])
def test_inputs_from_any_client_are_refused_with_a_message_naming_the_setting(check, value, message):
    checks = {"efficiency": lambda: config_for(value), "frames": lambda: check_frames(value, Limits()),
              "to_last_layer": lambda: config_for(0.5, value), "question": lambda: check_question(value),
              "video": lambda: video_path(value)}
    with pytest.raises(AIMError) as error:
        checks[check]()
    assert str(error.value) == message


def test_good_inputs_pass_as_their_values():
    assert check_frames(16, Limits()) == check_frames(16.0, Limits()) == 16
    assert config_for(0, True) == AIMConfig.none().pruning_until_last_layer()
    # "Merge inside the vision tower" off: the tower runs whole, the LLM side is the knob's.
    unmerged_tower = config_for(0.75, vision_merge=False)
    assert unmerged_tower.vision_keep == 1.0 and unmerged_tower.merge_round == MERGE_ROUND
    assert unmerged_tower == AIMConfig.from_efficiency(0.75).with_stock_tower()
    assert check_question(" Why? ") == "Why?" and check_question("x" * 2000) == "x" * 2000
    assert video_path({"path": "/uploads/clip.mp4", "url": None}) == video_path("/uploads/clip.mp4") == \
        "/uploads/clip.mp4"
    assert video_path(None) is None


def test_a_follow_up_reuses_frames_and_vision_features_and_answers_like_videoqa(runner, video, tiny_llava):
    first = runner.prepare(video, 16, no_progress)
    stream = runner.stream(first, QUESTION, AIMConfig.from_efficiency(0.75))
    texts = list(runner.texts(stream, first, "session"))
    answer = stream.answer
    assert texts[-1] == stream.text and answer.text == stream.text.strip()
    expected = VideoQA.from_model(*tiny_llava).answer(video, QUESTION, AIMConfig.from_efficiency(0.75), num_frames=16,
                                                     max_new_tokens=12)
    assert answer.text == expected.text
    assert answer.stats.tokens_per_layer == expected.stats.tokens_per_layer

    again = runner.prepare(video, 16, no_progress)
    assert again.frames is first.frames  # the engine's cache, not a second decode
    # Another setting with the same step of merging inside the vision tower: only the LLM runs again.
    stream = runner.stream(again, "Is there a circle?", AIMConfig.from_efficiency(0.6))
    list(runner.texts(stream, again, "session"))
    assert stream.answer.stats.vision_cached


def test_stop_during_the_prefill_ends_it_before_the_next_layer_and_the_next_run_starts_at_once(runner, video):
    prepared = runner.prepare(video, 8, no_progress)
    stream = runner.stream(prepared, QUESTION, AIMConfig())
    layers = runner.registry.qa.adapter.decoder_layers
    ran: list[int] = []
    handles = [layers[3].register_forward_pre_hook(lambda module, args: runner.cancel("me"))]
    handles += [module.register_forward_hook(lambda module, args, output, i=i: ran.append(i))
                for i, module in enumerate(layers)]
    try:
        texts = list(runner.texts(stream, prepared, "me"))
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1, 2]  # Stop came before layer 3 of the prefill: no later layer ran, nothing was decoded
    assert "".join(texts) == "" and stream.answer.cancelled and stream.answer.stats is None
    again = runner.stream(prepared, QUESTION, AIMConfig())
    runner.begin("me")
    list(runner.texts(again, prepared, "me"))
    expected = runner.registry.qa.answer(prepared.frames, QUESTION, AIMConfig(), num_frames=8, max_new_tokens=12)
    assert not again.answer.cancelled and again.answer.text == expected.text


def test_stop_while_decoding_ends_generation_at_the_next_token(runner, video):
    prepared = runner.prepare(video, 8, no_progress)
    stream = runner.stream(prepared, QUESTION, AIMConfig())
    first_layer = runner.registry.qa.adapter.decoder_layers[0]
    forwards = []

    def press_stop_at_the_third_token(module, args) -> None:
        forwards.append(1)
        if len(forwards) == 3:  # the prefill, then two tokens decoded
            runner.cancel("me")

    handle = first_layer.register_forward_pre_hook(press_stop_at_the_third_token)
    try:
        list(runner.texts(stream, prepared, "me"))
    finally:
        handle.remove()
    assert stream.answer.cancelled and stream.answer.stats.new_tokens == 3 and len(forwards) == 3
    assert not runner.cancel("me")  # nothing of this session runs any more


def test_a_stop_pressed_while_the_frames_decode_stops_the_run_that_follows(runner, video):
    def run() -> AnswerStream:
        stream = runner.stream(prepared, QUESTION, AIMConfig())
        list(runner.texts(stream, prepared, "me"))
        return stream

    runner.begin("me")
    prepared = runner.prepare(video, 8, no_progress)
    assert not runner.cancel("me")  # no stream yet: kept for the one about to start
    stopped = run()
    assert stopped.answer.cancelled and stopped.answer.stats is None
    runner.begin("me")  # the next question is not stopped by it
    assert not run().answer.cancelled
    assert not runner.cancel("me")  # with no question begun, nothing is kept for later
    assert not run().answer.cancelled


def test_closing_a_run_early_frees_the_model_for_the_next(runner, video):
    prepared = runner.prepare(video, 8, no_progress)
    texts = runner.texts(runner.stream(prepared, QUESTION, AIMConfig()), prepared, "me")
    next(texts)
    texts.close()  # what Gradio does to a cancelled event's generator
    done = threading.Event()
    threading.Thread(target=lambda: (runner.registry.qa.answer(prepared.frames, QUESTION, num_frames=8,
                                                               max_new_tokens=2), done.set()), daemon=True).start()
    assert done.wait(timeout=60), "the model's lock was not released"
    assert not runner.cancel("me")


def point(efficiency: float, answer: str, prefill: float, question: str = QUESTION) -> RunPoint:
    flops = int(100 * (1 - efficiency)) + 1
    return RunPoint(RunKey("tiny", "clip.mp4", 32, question), efficiency, flops, 101, prefill, prefill * 2, answer,
                    flops + 300, 401, prefill * 3)


def test_history_knows_agreement_and_latency_once_the_no_reduction_run_exists():
    history = History().add(point(0.75, "Red.", 0.25))
    assert history.agrees(history.points[0]) is None and history.prefill_fraction(history.points[0]) is None
    history.add(point(0.0, "red", 1.0)).add(point(0.9, "blue", 0.2)).add(point(0.5, "green", 0.1, "Other?"))
    agreements = [history.agrees(p) for p in history.points]
    assert agreements == [True, True, False, None]
    assert history.prefill_fraction(history.points[0]) == 0.25
    assert same_answer(" Two  circles!", "two circles") and not same_answer("two", "three")


def test_the_tradeoff_figure_marks_agreement_and_draws_latency(tmp_path):
    history = History().add(point(0.0, "red", 1.0)).add(point(0.75, "red", 0.3)).add(point(1.0, "blue", 0.2))
    figure = tradeoff_figure(history, history.points[0].key)
    names = {trace.name: trace for trace in figure.data}
    assert list(names["same answer as no reduction"].x) == [0.0, 0.75]
    assert list(names["different answer"].x) == [1.0]
    assert list(names["prefill time"].y) == pytest.approx([100, 30, 20])
    assert list(names["first answer, end to end"].y) == pytest.approx([100, 30, 20])
    assert list(names["vision + prefill FLOPs"].y) == pytest.approx([100 * 401 / 401, 100 * 326 / 401,
                                                                     100 * 301 / 401])
    assert len(tradeoff_figure(History(), None).layout.annotations) == 1  # the empty plot says what to do


def test_tokens_per_layer_figure_shows_measured_predicted_and_no_reduction():
    figure = tokens_per_layer_figure([100] * 4, predicted=[50, 50, 20, 0], measured=[50, 50, 21, 0])
    assert [trace.type for trace in figure.data] == ["bar", "scatter", "scatter"]
    assert list(figure.data[0].y) == [50, 50, 21, 0]


def test_pictures_of_a_trace_have_one_captioned_frame_per_sampled_frame(runner, video):
    prepared = runner.prepare(video, 8, no_progress)
    stream = runner.stream(prepared, QUESTION, AIMConfig())
    list(runner.texts(stream, prepared, "session"))
    pictures = Pictures.of(stream.answer.trace)
    clusters = pictures.cluster_gallery()
    assert len(clusters) == 8 and clusters[0][0].shape == (216, 288, 3)
    assert clusters[0][1].endswith("16→4")  # 4 x 4 tokens merged to 25%
    layer = pictures.first_pruned_layer()
    assert layer == 4  # 8 layers, pruning starts at 50% of depth
    kept = pictures.kept_gallery(layer)
    total_kept = sum(int(caption.split(" · ")[1].split("/")[0]) for _, caption in kept)
    assert total_kept == len(stream.answer.trace.kept_per_layer[layer][stream.answer.trace.kept_per_layer[layer] < 32])


def test_the_offline_default_is_the_demo_model_once_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "DEMO_MODEL_DIR", tmp_path)
    assert models.offline_default() == RANDOM_MODEL and RANDOM_MODEL.warning
    (tmp_path / "config.json").write_text("{}")
    assert models.offline_default() == DEMO_MODEL


def test_the_random_fallback_answers_in_words():
    qa = models.load_videoqa(RANDOM_MODEL)
    text = qa.answer(np.zeros((2, 64, 64, 3), np.uint8), QUESTION, num_frames=2, max_new_tokens=8).text
    assert text and all(word.isalpha() and word.islower() for word in text.split())


def test_an_unreachable_hub_model_fails_fast_and_keeps_the_loaded_model(runner, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    before = runner.registry.qa
    with pytest.raises(ModelError, match="not in this machine's Hugging Face cache and the hub cannot be reached"):
        runner.registry.load(models.HUB_MODELS[0].key)
    assert runner.registry.qa is before and runner.registry.choice == TINY


def test_a_model_too_large_for_memory_is_refused_before_loading(tmp_path, monkeypatch, tiny_llava):
    model, processor = tiny_llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    monkeypatch.setattr(models.psutil, "virtual_memory", lambda: SimpleNamespace(available=1000))
    with pytest.raises(ModelError, match="out of memory"):
        models.load_videoqa(models.choice_for(str(tmp_path)))


def test_the_picker_lists_the_default_the_loaded_model_and_the_hub_models(tmp_path):
    registry = ModelRegistry(RANDOM_MODEL, ModelChoice(str(tmp_path), "mine"), qa=None)
    assert [choice.key for choice in registry.choices()] == [
        RANDOM_MODEL.key, str(tmp_path), *[choice.key for choice in models.HUB_MODELS]]


def test_samples_are_read_from_json_and_never_point_outside_assets(tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "ASSETS_DIR", tmp_path)
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"x")
    (tmp_path.parent / "outside.mp4").write_bytes(b"x")
    (folder / "samples.json").write_text(json.dumps([  # as synthetic/make_samples.py writes it
        {"file": "a.mp4", "questions": [{"text": "Which colour?", "answer": "red", "min_frames": 128},
                                        {"text": "How many?", "answer": "two", "min_frames": 16}]},
        {"file": "../../outside.mp4", "questions": [{"text": "Leak?"}]},
        {"file": "missing.mp4"},
    ]))
    (folder / "more.json").write_text(json.dumps({"samples": [{"video": "a.mp4", "questions": ["Why?"]}]}))
    found = samples.find_samples(folder)
    assert [s.video.name for s in found] == ["a.mp4", "a.mp4"]
    video = str(folder / "a.mp4")
    assert samples.example_rows(found, 32) == [[video, "Why?", 32, ""], [video, "How many?", 32, "two"],
                                               [video, "Which colour?", 128, "red"]]


def test_the_examples_ask_every_kind_the_samples_answer_from_the_default_frames():
    listed = json.loads((samples.SAMPLES_DIR / "samples.json").read_text())
    kind_of = {q["text"]: q["kind"] for sample in listed for q in sample["questions"] if q["min_frames"] <= 32}
    rows = samples.example_rows(samples.find_samples(), 32)
    assert {kind_of[row[1]] for row in rows if row[1] in kind_of} == set(kind_of.values())
    assert len(rows) == len(listed) * samples.QUESTIONS_PER_VIDEO


def test_launch_listens_on_loopback_unless_asked(monkeypatch):
    args = launch.parse_args([], environ={})
    assert (args.host, args.port, args.model, args.share) == ("127.0.0.1", 7860, None, False)
    spaces = launch.parse_args([], environ={"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861",
                                            "AIM_MODEL": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"})
    assert (spaces.host, spaces.port, spaces.model) == ("0.0.0.0", 7861, "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    assert launch.parse_args(["--model", "dir", "--host", "::1"], environ={"AIM_MODEL": "x"}).model == "dir"


def test_the_page_gets_names_of_models_and_samples_and_they_lead_back_to_the_files(tiny_llava, tmp_path):
    assert published_key(str(models.DEMO_MODEL_DIR)) == "assets/demo-model"
    assert published_key(str(tmp_path / "my-model")) == "my-model"
    assert published_key("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    registry = ModelRegistry(DEMO_MODEL, TINY, VideoQA.from_model(*tiny_llava))
    callbacks = Callbacks(Runner(registry))
    assert callbacks.picker_choices()[:2] == [(DEMO_MODEL.label, "assets/demo-model"), (TINY.label, "tiny")]
    callbacks.load_model("assets/demo-model", progress=lambda done, desc: None)
    assert registry.choice == DEMO_MODEL and callbacks.picker_value() == "assets/demo-model"

    found = samples.find_samples()
    assert found, "the sample videos are in assets/samples"
    for sample in found:
        assert callbacks.sample_video(published_sample(sample.video), QUESTION, 32, "") == str(sample.video)
    assert callbacks.sample_video("../launch.py", QUESTION, 32, "") == gr.skip()  # only the samples are served
