"""Run the app inside this process on a free loopback port, and make small test videos: for tests and scripts.

    with running_app("path/to/model") as running:
        Client(running.url).predict(handle_file("clip.mp4"), "What happens?", 0.75, api_name="/answer")
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr
import numpy as np

from aim_core.video import write_video

from .models import ModelRegistry
from .session import Limits, Runner
from .ui import build_app, launch_options


@dataclass
class RunningApp:
    url: str
    runner: Runner
    demo: gr.Blocks


@contextmanager
def running_app(model: str | None = None, limits: Limits = Limits()) -> Iterator[RunningApp]:
    """The app on 127.0.0.1 with `model` (a hub id or folder; None for the offline default), closed on exit."""
    runner = Runner(ModelRegistry.start(model), limits)
    demo = build_app(runner)
    port = free_port()
    demo.launch(prevent_thread_lock=True, quiet=True,
                **launch_options("127.0.0.1", port, False, limits.max_upload_bytes))
    try:
        yield RunningApp(f"http://127.0.0.1:{port}/", runner, demo)
    finally:
        demo.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_test_video(path: str | os.PathLike, num_frames: int = 48, height: int = 96, width: int = 160,
                     fps: float = 12.0) -> None:
    """An H.264 mp4 of coloured squares sliding over a slowly shifting gradient (some tokens alike, some not)."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        frame = np.stack([x * 160 // width + 40, y * 120 // height + 60 + t, np.full_like(x, 150 - t)], axis=-1)
        for index, colour in enumerate([(230, 40, 40), (40, 190, 60), (40, 70, 240)]):
            top = (height // 4 + index * height // 5) % (height - height // 5)
            left = (t * (index + 2) * width // (3 * num_frames) + index * width // 3) % (width - width // 6)
            frame[top:top + height // 5, left:left + width // 6] = colour
        frames.append(frame)
    write_video(path, np.clip(frames, 0, 255).astype(np.uint8), fps)
