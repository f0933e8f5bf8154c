"""The Stop button in headless Chromium: pressed during the prefill, it ends the run before the next decoder layer,
and the next question is answered as usual."""

from __future__ import annotations

import threading

from playwright.sync_api import expect, sync_playwright
from test_app_browser import CHROMIUM_FLAGS, RUN_TIMEOUT_MS, chromium

from aim_core import VideoQA
from aim_core.config import DEFAULT_EFFICIENCY
from app.session import config_for
from app.testing import running_app, write_test_video

QUESTION = "Which colour moves fastest?"
HELD_SECONDS = 60  # the longest the prefill is held at the gate, should the test fail to release it


def test_stop_during_the_prefill_ends_it_before_the_next_layer(tiny_llava_dir, tmp_path):
    video = tmp_path / "shapes.mp4"
    write_test_video(video, num_frames=24, height=48, width=64)
    with running_app(str(tiny_llava_dir)) as running, sync_playwright() as playwright:
        layers = running.runner.registry.qa.adapter.decoder_layers
        at_gate, released, ran = threading.Event(), threading.Event(), []

        def gate(module, args) -> None:
            # The first prefill waits before layer 3 until the test has pressed Stop: a prefill still running then.
            if not at_gate.is_set():
                at_gate.set()
                released.wait(HELD_SECONDS)

        handles = [layers[3].register_forward_pre_hook(gate)]
        handles += [layer.register_forward_hook(lambda module, args, output, i=i: ran.append(i))
                    for i, layer in enumerate(layers)]
        try:
            browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(running.url)
            page.locator("#video input[type=file]").set_input_files(video)
            expect(page.locator("#video video")).to_be_visible()
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#ask").click()
            assert at_gate.wait(RUN_TIMEOUT_MS / 1000)
            page.locator("#stop").click()
            # Stop reaches the model while the prefill is still held (not after it, as Gradio's own cancel would).
            expect(page.locator("#status")).to_contain_text("Stopped.")
            released.set()

            page.locator("#ask").click()
            expected = VideoQA.from_pretrained(tiny_llava_dir).answer(
                str(video), QUESTION, config_for(DEFAULT_EFFICIENCY), num_frames=32, max_new_tokens=64)
            expect(page.locator("#answer textarea")).to_have_value(expected.text, timeout=RUN_TIMEOUT_MS)
            browser.close()
            # The stopped prefill ran layers 0-2; the next layer to run was the next question's first.
            assert ran[:4] == [0, 1, 2, 0]
        finally:
            released.set()
            for handle in handles:
                handle.remove()
