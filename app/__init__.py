"""The AIM Video QA web app (Gradio): ask questions about a video and see what AIM merged, kept and saved.

    python launch.py                      # http://127.0.0.1:7860 with the offline default model
    python launch.py --model DIR_OR_HUB_ID --port 7861

Importing this package turns Gradio's analytics off before Gradio is imported, so the server calls no one.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
