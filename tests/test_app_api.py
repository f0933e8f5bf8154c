"""The app's public API, through gradio_client, against the app serving a tiny random model from a folder."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from aim_core import AIMConfig, VideoQA
from app.testing import free_port, running_app, write_test_video

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    write_test_video(path, num_frames=40, height=60, width=80)
    return str(path)


@pytest.fixture(scope="module")
def server(tiny_llava_dir):
    with running_app(str(tiny_llava_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def ask(client: Client, video: str, question: str = QUESTION, efficiency: float = 0.75, *frames: int):
    return client.predict(handle_file(video), question, efficiency, *frames, api_name="/answer")


def test_answer_is_what_videoqa_answers_with_its_stats(client, tiny_llava_dir, video):
    text, result = ask(client, video, QUESTION, 0.75)
    expected = VideoQA.from_pretrained(tiny_llava_dir).answer(video, QUESTION, AIMConfig.from_efficiency(0.75),
                                                         num_frames=32, max_new_tokens=64)
    assert text == expected.text == result["answer"]
    stats = result["stats"]
    assert stats["num_frames"] == 32
    assert stats["visual_tokens_before_merge"] == 32 * 16 + 1  # 4 x 4 tokens a frame, plus the newline token
    assert stats["visual_tokens_after_merge"] == 32 * 4 + 1  # the paper's 25%
    assert stats["tokens_per_layer"] == expected.stats.tokens_per_layer
    assert stats["flops"] == expected.stats.flops and stats["flops_reduction"] > 1
    assert result["config"]["merge_keep"] == 0.25 and not result["cancelled"]


def test_frames_are_an_optional_fourth_input_and_follow_ups_reuse_the_vision_features(client, video):
    _, first = ask(client, video, QUESTION, 0.75, 16)
    _, again = ask(client, video, "Is there a circle?", 0.5, 16)
    assert first["stats"]["num_frames"] == again["stats"]["num_frames"] == 16
    assert again["stats"]["vision_cached"]
    assert again["stats"]["visual_tokens_after_merge"] == 16 * 8 + 1  # efficiency 0.5 merges to 50%


def test_no_reduction_is_the_stock_model(client, video):
    _, result = ask(client, video, QUESTION, 0.0)
    stats = result["stats"]
    assert stats["flops"] == stats["flops_baseline"]
    assert stats["visual_tokens_after_merge"] == stats["visual_tokens_before_merge"]


@pytest.mark.parametrize(("content", "name", "question", "efficiency", "message"), [
    # Seeded, not os.urandom: random bytes can happen to look like an audio stream, which gets another message.
    (random.Random(0).randbytes(3000), "corrupt.mp4", QUESTION, 0.75, "The file corrupt.mp4 is not a readable video"),
    (b"", "empty.webm", QUESTION, 0.75, "empty"),
    (b"just text\n", "notes.mkv", QUESTION, 0.75, "not a readable video"),
    (None, "", "   ", 0.75, "Type a question"),
    (None, "", QUESTION, 1.5, "Efficiency must be a number from 0 to 1, got 1.5."),
])
def test_bad_input_gets_a_clear_message_and_the_server_keeps_answering(client, video, tmp_path, content, name,
                                                                       question, efficiency, message):
    path = video
    if content is not None:
        path = str(tmp_path / name)
        Path(path).write_bytes(content)
    with pytest.raises(AppError, match=message):
        ask(client, path, question, efficiency)
    assert ask(client, video, QUESTION, 0.75, 8)[1]["stats"]["num_frames"] == 8


@pytest.mark.parametrize(("question", "settings", "message"), [
    (QUESTION, ("abc", 32), 'Efficiency must be a number from 0 to 1, got "abc".'),
    (QUESTION, (None, 32), "Efficiency must be a number from 0 to 1, got null."),
    (QUESTION, (-0.5, 32), "Efficiency must be a number from 0 to 1, got -0.5."),
    (QUESTION, (True, 32), "Efficiency must be a number from 0 to 1, got true."),
    (QUESTION, (0.5, "x"), 'Frames must be a whole number from 8 to 256, got "x".'),
    (QUESTION, (0.5, 3.5), "Frames must be a whole number from 8 to 256, got 3.5."),
    (QUESTION, (0.5, 12.5), "Frames must be a whole number from 8 to 256, got 12.5."),
    (QUESTION, (0.5, None), "Frames must be a whole number from 8 to 256, got null."),
    (QUESTION, (0.5, 1000), "Frames must be a whole number from 8 to 256, got 1000."),
    (None, (0.5, 32), "Type a question about the video first."),
    (5, (0.5, 32), "The question must be text, got 5."),
    ("x" * 100_000, (0.5, 32), "The question is 100,000 characters long; the limit is 2,000. Shorten it."),
])
def test_bad_settings_from_any_client_get_a_message_naming_them_and_leave_no_traceback(
        client, video, capfd, caplog, question, settings, message):
    caplog.set_level(logging.WARNING, logger="app.callbacks")
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(handle_file(video), question, *settings, api_name="/answer")
    assert "Traceback" not in capfd.readouterr().err
    assert [record.getMessage() for record in caplog.records] == [f"Refused an API call: {message}"]


@pytest.mark.parametrize(("efficiency", "shown"), [("NaN", "NaN"), ("Infinity", "Infinity")])
def test_json_numbers_that_python_reads_as_nan_or_infinity_are_refused(server, video, capfd, efficiency, shown):
    """gradio_client cannot send NaN, but a raw HTTP client can, and the server's JSON parser accepts it."""
    upload = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("clip.mp4", Path(video).read_bytes())})
    file = json.dumps({"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}})
    events = call_raw(server, f'[{file}, "{QUESTION}", {efficiency}, 32]')
    assert "event: error" in events
    assert f"Efficiency must be a number from 0 to 1, got {shown}." in events
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(("video", "message"), [
    ("clip.mp4", "The video must be an uploaded file"),
    (5, "The video must be an uploaded file"),
])
def test_a_video_that_is_not_an_upload_is_refused_without_traceback(client, capfd, video, message):
    with pytest.raises(AppError, match=message):
        client.predict(video, QUESTION, 0.75, 32, api_name="/answer")
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(("data", "message"), [
    ('[null, "What?"]', "The request has 2 inputs; this endpoint takes 4."),
    ('[{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "What?", 0.5, 32]',
     "A file in the request was not uploaded to this server: upload it first."),
])
def test_a_request_gradio_cannot_read_is_refused_without_traceback(server, capfd, data, message):
    assert message in call_raw(server, data)
    assert "Traceback" not in capfd.readouterr().err


def call_raw(server, data: str) -> str:
    """The events of an `/answer` call over plain HTTP with the JSON `data`, as any client could send it."""
    call = httpx.post(f"{server.url}gradio_api/call/answer", content=f'{{"data": {data}}}',
                      headers={"content-type": "application/json"})
    return httpx.get(f"{server.url}gradio_api/call/answer/{call.json()['event_id']}", timeout=60).text


def test_the_published_config_holds_no_server_paths(server, tiny_llava_dir):
    """What every browser fetches names the model and the samples, never where the server keeps them."""
    config = httpx.get(f"{server.url}config").text
    assert str(REPO) not in config and str(tiny_llava_dir) not in config
    assert re.findall(r'"(/[^"]*)"', config) == ["/gradio_api"]  # the API's URL prefix, the only string like a path
    picker = next(c["props"] for c in json.loads(config)["components"] if c["props"].get("elem_id") == "model")
    assert picker["value"] == tiny_llava_dir.name and [tiny_llava_dir.name] == [
        value for _, value in picker["choices"] if value == tiny_llava_dir.name]


def test_only_the_answer_endpoint_is_public(client):
    endpoints = client.view_api(print_info=False, return_format="dict")
    assert list(endpoints["named_endpoints"]) == ["/answer"]
    assert endpoints["unnamed_endpoints"] == {}
    parameters = [p["parameter_name"] for p in endpoints["named_endpoints"]["/answer"]["parameters"]]
    assert parameters == ["video", "question", "efficiency", "frames"]


def test_model_runs_share_one_queue_slot(server):
    model_events = [fn for fn in server.demo.fns.values() if fn.concurrency_id == "model"]
    assert sorted(fn.name for fn in model_events) == ["answer_api", "ask", "ask", "load_model"]
    assert all(fn.queue and fn.concurrency_limit == "default" for fn in model_events)
    assert server.demo._queue.default_concurrency_limit == 1


def test_no_file_outside_the_uploads_and_assets_can_be_read(server, client):
    upload = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("note.txt", b"uploaded")})
    uploaded = upload.json()[0]
    assert httpx.get(f"{server.url}gradio_api/file={uploaded}").text == "uploaded"  # uploads are served
    for path in ["/etc/passwd", str(REPO / "launch.py"), str(REPO / "assets" / ".." / "launch.py")]:
        response = httpx.get(f"{server.url}gradio_api/file={path}")
        assert response.status_code == 403, path
    # A path the client did not upload is refused, not read.
    not_uploaded = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(AppError):
        client.predict(not_uploaded, QUESTION, 0.75, api_name="/answer")


def test_launch_py_serves_on_loopback_only(tiny_llava_dir):
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_SERVER")}
    process = subprocess.Popen([sys.executable, "launch.py", "--model", str(tiny_llava_dir), "--port", str(port)],
                               cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("launch.py did not start serving within 90 s")
        listening = [c.laddr for c in psutil.Process(process.pid).net_connections() if c.status == "LISTEN"]
        assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_partly_damaged_video_is_answered_from_what_decodes_with_a_note(client, video, tmp_path):
    """A clip whose frames 20 to 22 have their data zeroed: the answer comes, and says what was lost."""
    import av

    path = tmp_path / "damaged.mp4"
    write_test_video(path, num_frames=40, height=60, width=80, fps=8.0)
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None and 20 <= round(packet.pts * stream.time_base * 8) <= 22:
                data[packet.pos : packet.pos + packet.size] = bytes(packet.size)
    path.write_bytes(bytes(data))
    text, result = ask(client, str(path), QUESTION, 0.75, 40)
    assert result["stats"]["num_frames"] == 40 and text == result["answer"]
    assert "could not be decoded" in result["video_note"]
    assert ask(client, video, QUESTION, 0.75, 8)[1]["video_note"] == ""
