"""The app in headless Chromium (Playwright): a person's whole visit, from upload to pictures, staying on loopback.

Fails (does not skip) when Chromium is missing: CI installs it (`apt-get install chromium`). Set AIM_CHROMIUM to
use another binary. The screenshot lands in tests/artifacts/app.png (git-ignored), for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from aim_core import VideoQA, probe_video
from app.session import config_for
from app.testing import running_app, write_test_video

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
QUESTION = "Which colour moves fastest?"
CHROMIUM_FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RUN_TIMEOUT_MS = 90_000


def chromium() -> str:
    path = os.environ.get("AIM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium`, or set AIM_CHROMIUM to its path")
    return path


def set_slider(page: Page, elem_id: str, value: float) -> None:
    number = page.locator(f"#{elem_id} input[type=number]")
    number.fill(str(value))
    number.press("Enter")


def host_of(url: str) -> str | None:
    """The host a request went to; blob: URLs belong to the page's own origin; data: URLs go nowhere."""
    address = urlparse(url[len("blob:"):] if url.startswith("blob:") else url)
    return None if address.scheme == "data" else address.hostname


def test_a_visit_from_upload_to_pictures(tiny_llava_dir, tmp_path):
    video = tmp_path / "shapes.mp4"
    write_test_video(video, num_frames=40, height=90, width=160)
    requests: list[str] = []
    with running_app(str(tiny_llava_dir)) as running, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("request", lambda request: requests.append(request.url))
        page.goto(running.url)

        page.locator("#video input[type=file]").set_input_files(video)
        expect(page.locator("#video video")).to_be_visible()
        page.locator("#ask").click()  # no question yet: a clear message, nothing breaks
        expect(page.locator("#status")).to_contain_text("Type a question about the video first.")
        expect(page.locator(".toast-body")).to_contain_text("Type a question about the video first.")
        page.locator(".toast-close").first.click()

        page.locator("#question textarea").fill(QUESTION)
        set_slider(page, "efficiency", 0.6)
        predicted = running.runner.predict(0.6, 32, probe_video(video), None)
        expect(page.locator("#prediction")).to_contain_text(
            f"{predicted.visual_before_merge:,} → {predicted.visual_after_merge:,} visual tokens")
        page.locator("#to-last-layer input").check()
        layers = len(predicted.tokens_per_layer)
        expect(page.locator("#prediction")).to_contain_text(f"none left from layer {layers - 1} of {layers}")
        page.locator("#compare input").check()
        page.locator("#ask").click()

        expect(page.locator("#status")).to_contain_text("faster prefill", timeout=RUN_TIMEOUT_MS)
        expected = VideoQA.from_pretrained(tiny_llava_dir).answer(str(video), QUESTION, config_for(0.6, True),
                                                                  num_frames=32, max_new_tokens=64)
        expect(page.locator("#answer textarea")).to_have_value(expected.text)
        expect(page.locator("#stats-cards")).to_contain_text(
            f"{expected.stats.visual_tokens_before_merge:,} → {expected.stats.visual_tokens_after_merge:,}")
        expect(page.locator("#clusters img")).to_have_count(32)
        for plot in ("layers", "tradeoff"):
            expect(page.locator(f"#{plot} .js-plotly-plot")).to_be_visible()
        # The trade-off holds this run and the no-reduction run it was compared with.
        points = page.evaluate("[...document.querySelector('#tradeoff .js-plotly-plot').data]"
                               ".filter(t => t.mode === 'markers').flatMap(t => t.x)")
        assert sorted(points) == [0.0, 0.6]

        page.get_by_role("tab", name="Kept tokens by layer").click()
        expect(page.locator("#kept img")).to_have_count(32)
        page.get_by_role("tab", name="Merged clusters").click()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / ".gitignore").write_text("*\n")
        page.screenshot(path=ARTIFACTS / "app.png", full_page=True)
        browser.close()

    assert requests
    outside = sorted({url for url in requests if host_of(url) not in (None, *LOOPBACK)})
    assert not outside, f"requests left loopback: {outside}"
