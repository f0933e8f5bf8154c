"""Let a torchvision whose C++ ops cannot load (a CUDA wheel beside a CPU-only torch) still import.

torchvision skips registering meta kernels for ops it could not load, except `nms` and `qnms`, whose
`register_fake` fails with "operator torchvision::nms does not exist". This guards those two the same way, in the
installed file, once. Run by setup_env.sh with the env's Python.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GUARD = "if torchvision.extension._has_ops() else (lambda fn: fn))"


def main() -> None:
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.origin is not None, "torchvision is not installed"
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if GUARD in text:
        return
    for op in ("nms", "qnms"):
        line = f'@torch.library.register_fake("torchvision::{op}")'
        assert text.count(line) == 1, f"unexpected torchvision source: {line} not found once in {path}"
        text = text.replace(line, f'@(torch.library.register_fake("torchvision::{op}") {GUARD}')
    path.write_text(text)


if __name__ == "__main__":
    main()
