"""Start the AIM Video QA app: `python launch.py [--model ID_OR_DIR] [--host H] [--port P] [--share]`.

It listens on 127.0.0.1:7860 unless told otherwise: by the flags, or by GRADIO_SERVER_NAME / GRADIO_SERVER_PORT in
the environment (Hugging Face Spaces sets these). AIM_MODEL in the environment does what --model does.

On a Hugging Face Space (SPACE_ID in the environment) it opens on the Space's model (`app.space.SPACE_MODEL`, which
README.md's front matter preloads, unless AIM_MODEL names another), with Space-sized limits; if that model cannot be
loaded it opens on the offline demo model instead, and the page says why.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import app  # noqa: F401  (turns Gradio's analytics off before anything imports gradio)
from app import zerogpu  # imports `spaces` where installed, before anything imports torch, as ZeroGPU asks
from aim_core import ModelError


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ask questions about videos with a multimodal LLM, sped up by AIM.")
    parser.add_argument("--model", default=environ.get("AIM_MODEL") or None,
                        help="hub id or local folder to load at start (default: $AIM_MODEL, else the offline demo "
                             "model, or on a Hugging Face Space the Space's model)")
    parser.add_argument("--host", default=environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = parse_args(argv, environ)
    from app.models import ModelRegistry
    from app.session import Limits, Runner
    from app.space import SPACE_LIMITS, SPACE_MODEL
    from app.ui import build_app, launch_options

    on_space = zerogpu.on_space(environ)
    model = args.model or (SPACE_MODEL if on_space else None)
    print(f"Loading {model or 'the offline default model'}...", flush=True)
    try:
        registry = ModelRegistry.start(model, fall_back=on_space)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runner = Runner(registry, SPACE_LIMITS if on_space else Limits())
    print(f"Model: {registry.choice.label}", flush=True)
    if registry.choice.key != model and model:
        print(f"note: {registry.choice.note}", flush=True)
    build_app(runner).launch(**launch_options(args.host, args.port, args.share, runner.limits.max_upload_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
