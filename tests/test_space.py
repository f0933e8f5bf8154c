"""The app as a Hugging Face Space: the front matter, ZeroGPU durations worked out from the request, visitors kept
apart in one queue, and launch.py started as a Space starts it (offline hub cache with the Space's model, or none)."""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import gradio
import httpx
import numpy as np
import pytest
import torch
import yaml
from gradio_client import Client, handle_file
from gradio_client.utils import Status
from playwright.sync_api import expect, sync_playwright
from published_models import FIXTURES, PUBLISHED_FILES, tokenizer, write_hub_cache
from test_app_browser import CHROMIUM_FLAGS, RUN_TIMEOUT_MS, chromium, set_slider
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from aim_core import AIMConfig, VideoQA
from app import space, zerogpu
from app.callbacks import Callbacks, published_key
from app.history import History
from app.models import DEMO_MODEL, HUB_MODELS, ModelChoice, ModelRegistry, offline_default
from app.session import Runner
from app.space import MAX_GPU_SECONDS, MIN_GPU_SECONDS, SPACE_LIMITS, SPACE_MODEL, gpu_seconds
from app.testing import free_port, running_app, write_test_video
from app.ui import build_app

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What happens in this video?"
START_TIMEOUT = 120


def write_clip(path: Path, num_frames: int, height: int, width: int) -> str:
    """An H.264 clip of a square sliding over grey, written frame by frame (long 720p clips without the memory)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            frame = np.full((height, width, 3), 90, np.uint8)
            frame[height // 3: height // 2, index * 7 % width: index * 7 % width + width // 8] = (220, 40, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


class FakeSpaces:
    """Stands in for the `spaces` package: `GPU(duration=...)` marks the function with the duration it asks for."""

    @staticmethod
    def GPU(duration):  # noqa: N802  (the package's own name)
        def decorate(function):
            @functools.wraps(function)
            def held(*args, **kwargs):
                return function(*args, **kwargs)

            held.gpu_duration = duration
            return held

        return decorate


def test_front_matter_preloads_the_space_model_and_suggests_zerogpu():
    meta = yaml.safe_load(REPO.joinpath("README.md").read_text().split("---\n")[1])
    assert meta["preload_from_hub"] == [SPACE_MODEL] and meta["suggested_hardware"] == "zero-a10g"
    assert meta["app_file"] == "launch.py" and meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert SPACE_MODEL in [choice.key for choice in HUB_MODELS]


def test_importing_the_app_touches_no_gpu_and_needs_no_spaces_package():
    script = ("import sys, torch, launch, app.ui, app.space; "
              "assert not torch.cuda.is_initialized(); assert app.zerogpu.spaces is None; print('clean')")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "clean", result.stderr


@pytest.fixture(scope="module")
def full_size_runner(tmp_path_factory) -> Runner:
    """The Space's model at its published size, on the meta device: its estimates are the real model's, and no
    weights exist."""
    folder = tmp_path_factory.mktemp("qwen2_5_vl_3b")
    for name in (*PUBLISHED_FILES, "config.json"):
        if (FIXTURES / SPACE_MODEL / name).is_file():
            shutil.copy(FIXTURES / SPACE_MODEL / name, folder / name)
    tokenizer(SPACE_MODEL).save_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    qa = VideoQA.from_model(model.eval(), AutoProcessor.from_pretrained(folder))
    choice = ModelChoice(SPACE_MODEL, "Qwen2.5-VL 3B")
    return Runner(ModelRegistry(choice, choice, qa), SPACE_LIMITS)


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory) -> str:
    return write_clip(tmp_path_factory.mktemp("clips") / "hd.mp4", 130, 720, 1280)


def test_gpu_time_follows_the_requests_predicted_cost(full_size_runner, hd_clip):
    seconds = {(frames, efficiency, compare): gpu_seconds(full_size_runner, hd_clip, frames, efficiency, compare)
               for frames in (8, 32, 128) for efficiency in (0.0, 0.75) for compare in (False, True)}
    assert all(MIN_GPU_SECONDS <= value <= MAX_GPU_SECONDS for value in seconds.values())
    assert seconds[(8, 0.0, False)] < seconds[(32, 0.0, False)] < seconds[(128, 0.0, False)]  # more frames, longer
    assert seconds[(128, 0.75, False)] < seconds[(128, 0.0, False)]  # AIM's savings shorten the GPU hold
    assert seconds[(128, 0.75, True)] > seconds[(128, 0.75, False)]  # comparing runs the stock model as well
    # From the model's own prediction for this video: its 720p frames, the vision tower and the prefill.
    estimate = full_size_runner.registry.qa.estimate(AIMConfig.from_efficiency(0.0), 32, (720, 1280))
    answering = SPACE_LIMITS.max_new_tokens * space.SECONDS_PER_NEW_TOKEN
    expected = space.SETUP_SECONDS + space.SAFETY * (estimate.total_flops / space.EFFECTIVE_FLOPS + answering)
    assert seconds[(32, 0.0, False)] == int(np.ceil(expected))


@pytest.mark.parametrize(("video", "frames", "efficiency"), [
    (None, 32, 0.75), ("/no/such/clip.mp4", 32, 0.75), ("hd", 4, 0.75), ("hd", 32, 7.0), ("hd", "32", 0.75),
])
def test_a_request_that_will_be_refused_asks_for_the_least_gpu_time(full_size_runner, hd_clip, video, frames,
                                                                     efficiency):
    assert gpu_seconds(full_size_runner, hd_clip if video == "hd" else video, frames, efficiency) == MIN_GPU_SECONDS


def test_without_the_spaces_package_the_model_events_are_the_callbacks(tiny_llava_dir):
    callbacks = Callbacks(Runner(ModelRegistry.start(str(tiny_llava_dir))))
    assert space.gpu_callbacks(callbacks) == (callbacks.ask, callbacks.answer_api)


def test_on_zerogpu_both_model_events_hold_a_gpu_for_their_requests_time(monkeypatch, full_size_runner, hd_clip):
    monkeypatch.setattr(zerogpu, "spaces", FakeSpaces())
    demo = build_app(full_size_runner)
    held = {fn.name: fn for fn in demo.fns.values() if hasattr(fn.fn, "gpu_duration")}
    assert sorted(held) == ["answer_api", "ask"]
    assert all(fn.concurrency_id == "model" and fn.queue for fn in held.values())
    # Gradio calls them, and their durations, with the event's inputs (then the request and progress it injects).
    ask_seconds = held["ask"].fn.gpu_duration(hd_clip, QUESTION, 0.75, 128, True, History(), False, None)
    assert ask_seconds == gpu_seconds(full_size_runner, hd_clip, 128, 0.75, True)
    answer_seconds = held["answer_api"].fn.gpu_duration({"path": hd_clip}, QUESTION, 0.0, 32, None)
    assert answer_seconds == gpu_seconds(full_size_runner, hd_clip, 32, 0.0)
    # Gradio still sees the callbacks' own parameters (it injects the request and progress by them).
    assert list(inspect.signature(held["answer_api"].fn).parameters) == [
        "video", "question", "efficiency", "frames", "request"]


def test_two_visitors_queue_for_one_model_run_and_get_their_own_answers(tiny_llava_dir, tmp_path):
    videos = {name: str(tmp_path / f"{name}.mp4") for name in ("first", "second")}
    write_test_video(videos["first"], num_frames=40, height=60, width=80)
    write_test_video(videos["second"], num_frames=24, height=80, width=64)
    with running_app(str(tiny_llava_dir)) as running:
        runner, gate, started = running.runner, threading.Event(), []
        prepare = runner.prepare

        def held_prepare(path, num_frames, progress):
            started.append(num_frames)
            assert gate.wait(60)
            return prepare(path, num_frames, progress)

        runner.prepare = held_prepare
        first, second = Client(running.url, verbose=False), Client(running.url, verbose=False)
        first_job = first.submit(handle_file(videos["first"]), QUESTION, 0.75, 16, api_name="/answer")
        deadline = time.monotonic() + 60
        while not started and time.monotonic() < deadline:
            time.sleep(0.05)
        second_job = second.submit(handle_file(videos["second"]), QUESTION, 0.5, 8, api_name="/answer")
        while second_job.status().code != Status.IN_QUEUE and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = second_job.status()
        assert (waiting.code, waiting.rank, started) == (Status.IN_QUEUE, 0, [16])  # told its place, not started
        gate.set()
        (_, first_stats), (_, second_stats) = first_job.result(timeout=90), second_job.result(timeout=90)

    qa = VideoQA.from_pretrained(tiny_llava_dir)
    for stats, name, frames, efficiency in ((first_stats, "first", 16, 0.75), (second_stats, "second", 8, 0.5)):
        expected = qa.answer(videos[name], QUESTION, AIMConfig.from_efficiency(efficiency), num_frames=frames,
                             max_new_tokens=64)
        assert stats["answer"] == expected.text
        assert stats["stats"]["tokens_per_layer"] == expected.stats.tokens_per_layer
        assert stats["stats"]["num_frames"] == frames


def test_a_visitor_sees_nothing_of_another_visitors_video_answers_or_history(tiny_llava_dir, tmp_path):
    """Two browsers at once: the second sees none of the first's video, answer or trade-off points, and each one's
    trade-off plot holds its own run only."""
    videos = [str(tmp_path / f"clip{index}.mp4") for index in range(2)]
    write_test_video(videos[0], num_frames=40, height=60, width=80)
    write_test_video(videos[1], num_frames=24, height=80, width=64)
    with running_app(str(tiny_llava_dir)) as running, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        first, second = (browser.new_context().new_page() for _ in range(2))
        for page in (first, second):
            page.goto(running.url)
        ask_in(first, videos[0], efficiency=0.6)
        second.reload()
        expect(second.locator("#video video")).to_have_count(0)
        expect(second.locator("#answer textarea")).to_have_value("")
        assert tradeoff_points(second) == []
        ask_in(second, videos[1], efficiency=0.3)
        assert tradeoff_points(first) == [0.6] and tradeoff_points(second) == [0.3]
        expect(first.locator("#stats-cards")).not_to_have_text(second.locator("#stats-cards").inner_text())
        browser.close()


def ask_in(page, video: str, efficiency: float) -> None:
    page.locator("#video input[type=file]").set_input_files(video)
    expect(page.locator("#video video")).to_be_visible()
    page.locator("#question textarea").fill(QUESTION)
    set_slider(page, "efficiency", efficiency)
    page.locator("#ask").click()
    expect(page.locator("#status")).to_contain_text("Encoded", timeout=RUN_TIMEOUT_MS)


def tradeoff_points(page) -> list[float]:
    """The efficiencies of the runs in the page's trade-off plot."""
    return page.evaluate("[...(document.querySelector('#tradeoff .js-plotly-plot')?.data ?? [])]"
                         ".filter(t => t.mode === 'markers').flatMap(t => t.x)")


def page_event(url: str, config: dict, elem_id: str, trigger: str, data: list) -> dict:
    """Run the page's `trigger` event of the component `elem_id` as a browser does (the queue's join and data
    routes: the way to a private event that no client library offers); returns the completion message."""
    component = next(item["id"] for item in config["components"] if item.get("props", {}).get("elem_id") == elem_id)
    event = next(item["id"] for item in config["dependencies"] if [component, trigger] in item["targets"])
    session = f"visitor-{elem_id}"
    with httpx.Client(base_url=f"{url}gradio_api", timeout=60) as client:
        joined = client.post("/queue/join", json={"data": data, "fn_index": event, "session_hash": session,
                                                  "event_data": None, "trigger_id": component})
        assert joined.status_code == 200, joined.text
        with client.stream("GET", "/queue/data", params={"session_hash": session}) as messages:
            for line in messages.iter_lines():
                message = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
                if message.get("msg") == "process_completed":
                    return message
    pytest.fail("the event never completed")


def props(config: dict, elem_id: str) -> dict:
    return next(item["props"] for item in config["components"] if item.get("props", {}).get("elem_id") == elem_id)


def test_on_a_space_no_visitor_can_switch_the_model_for_everyone(tiny_llava_dir, tmp_path):
    """Visitors of a Space share its one model, so its picker is locked, with a note saying how to get another model
    (duplicate the Space), and the load event refuses a client that calls it anyway, saying why; run locally, the
    same call switches the model."""
    offline = published_key(offline_default().key)  # a picker entry that loads without a hub
    with running_app(str(tiny_llava_dir), SPACE_LIMITS) as running:
        config = httpx.get(f"{running.url}config").json()
        assert props(config, "model")["interactive"] is False and props(config, "load-model")["interactive"] is False
        assert "cannot be switched" in props(config, "model-note")["value"]
        assert "duplicate the Space" in props(config, "model-note")["value"]
        refused = page_event(running.url, config, "load-model", "click", [offline])
        assert not refused["success"] and "duplicate the Space" in refused["output"]["error"]
        assert running.runner.registry.choice.key == str(tiny_llava_dir)
        _, result = Client(running.url, verbose=False).predict(
            handle_file(write_clip(tmp_path / "clip.mp4", 24, 96, 160)), QUESTION, 0.75, 8, api_name="/answer")
        assert result["stats"]["num_frames"] == 8  # still answering, with the Space's model
    with running_app(str(tiny_llava_dir)) as running:
        config = httpx.get(f"{running.url}config").json()
        assert props(config, "model").get("interactive") is not False and props(config, "model-note")["value"] == ""
        assert page_event(running.url, config, "load-model", "click", [offline])["success"]
        assert running.runner.registry.choice == offline_default()


def launch_as_space(environment: dict[str, str], port: int) -> subprocess.Popen:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("GRADIO_SERVER", "HF_", "AIM_MODEL", "SPACE"))}
    return subprocess.Popen([sys.executable, "launch.py"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**base, "SPACE_ID": "someone/aim-video-qa", "GRADIO_SERVER_NAME": "127.0.0.1",
                                 "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", **environment})


def wait_for_page(process: subprocess.Popen, url: str) -> dict:
    """The page's config once the server answers: the components and their first values."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return httpx.get(f"{url}config", timeout=5).json()
        except (httpx.TransportError, ValueError):
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.5)
    pytest.fail(f"launch.py did not start serving within {START_TIMEOUT} s")


def header_of(config: dict) -> str:
    return next(component["props"]["value"] for component in config["components"]
                if "aim-header" in str(component.get("props", {}).get("value", "")))


@pytest.fixture(scope="module")
def space_hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("space-hub")
    write_hub_cache(SPACE_MODEL, cache)
    return cache


def test_as_a_space_it_opens_on_the_space_model_from_the_hub_cache(space_hub_cache, tmp_path):
    video = str(tmp_path / "clip.mp4")
    write_test_video(video, num_frames=24, height=96, width=160)
    port = free_port()
    process = launch_as_space({"HF_HUB_CACHE": str(space_hub_cache)}, port)
    try:
        url = f"http://127.0.0.1:{port}/"
        header = header_of(wait_for_page(process, url))
        label = next(choice.label for choice in HUB_MODELS if choice.key == SPACE_MODEL)
        assert label in header and "could not be loaded" not in header
        text, result = Client(url, verbose=False).predict(handle_file(video), QUESTION, 0.75, 8, api_name="/answer")
    finally:
        process.terminate()
        process.wait(timeout=30)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(space_hub_cache))
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        expected = VideoQA.from_pretrained(SPACE_MODEL).answer(video, QUESTION, AIMConfig.from_efficiency(0.75),
                                                               num_frames=8, max_new_tokens=SPACE_LIMITS.max_new_tokens)
    assert text == result["answer"] == expected.text
    assert result["stats"]["tokens_per_layer"] == expected.stats.tokens_per_layer
    assert result["stats"]["new_tokens"] == expected.stats.new_tokens


def test_as_a_space_without_the_model_it_falls_back_to_the_offline_model_and_says_why(tmp_path):
    video = str(tmp_path / "clip.mp4")
    write_test_video(video, num_frames=24, height=96, width=160)
    port = free_port()
    process = launch_as_space({"HF_HUB_CACHE": tempfile.mkdtemp(dir=tmp_path)}, port)
    try:
        url = f"http://127.0.0.1:{port}/"
        header = header_of(wait_for_page(process, url))
        label = next(choice.label for choice in HUB_MODELS if choice.key == SPACE_MODEL)
        assert offline_default().label in header and "aim-warning" in header
        assert f"{label} could not be loaded" in header and "is not in this machine" in header
        _, result = Client(url, verbose=False).predict(handle_file(video), QUESTION, 0.75, 8, api_name="/answer")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert result["stats"]["num_frames"] == 8 and result["stats"]["new_tokens"] >= 1
    if offline_default() == DEMO_MODEL:
        expected = VideoQA.from_pretrained(DEMO_MODEL.key).answer(video, QUESTION, AIMConfig.from_efficiency(0.75),
                                                                  num_frames=8, max_new_tokens=64)
        assert result["answer"] == expected.text
