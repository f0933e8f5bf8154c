"""Start the AIM Video QA app: `python launch.py [--model ID_OR_DIR] [--host H] [--port P] [--share]`.

It listens on 127.0.0.1:7860 unless told otherwise: by the flags, or by GRADIO_SERVER_NAME / GRADIO_SERVER_PORT in
the environment (Hugging Face Spaces sets these). AIM_MODEL in the environment does what --model does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import app  # noqa: F401  (turns Gradio's analytics off before anything imports gradio)
from aim_core import ModelError


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ask questions about videos with a multimodal LLM, sped up by AIM.")
    parser.add_argument("--model", default=environ.get("AIM_MODEL") or None,
                        help="hub id or local folder to load at start (default: $AIM_MODEL, else the offline demo "
                             "model)")
    parser.add_argument("--host", default=environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from app.models import ModelRegistry
    from app.session import Runner
    from app.ui import build_app, launch_options

    print(f"Loading {args.model or 'the offline default model'}...", flush=True)
    try:
        registry = ModelRegistry.start(args.model)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runner = Runner(registry)
    print(f"Model: {registry.choice.label}", flush=True)
    build_app(runner).launch(**launch_options(args.host, args.port, args.share, runner.limits.max_upload_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
