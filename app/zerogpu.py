"""ZeroGPU, the shared GPUs of Hugging Face Spaces, through the `spaces` package where it is installed.

On ZeroGPU a Space holds no GPU between requests: a function decorated with `spaces.GPU` gets one while it runs, for
at most the duration it asks for (a shorter request waits less in ZeroGPU's queue). `gpu` applies that decorator;
where `spaces` is not installed (anywhere but a Space) it returns the function unchanged.

Importing this module imports `spaces` when it is installed, as ZeroGPU asks of a Space before anything initialises
CUDA, and touches no GPU itself.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

if importlib.util.find_spec("spaces") is not None:
    import spaces
else:
    spaces = None

Function = TypeVar("Function", bound=Callable[..., Any])


def on_space(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs on a Hugging Face Space (Spaces set SPACE_ID to "owner/name")."""
    return bool(environ.get("SPACE_ID"))


def gpu(function: Function, duration: Callable[..., int]) -> Function:
    """`function` run holding a ZeroGPU GPU for up to `duration(*args, **kwargs)` seconds of each call, where `spaces`
    is installed; `function` itself elsewhere. (`spaces.GPU` is a no-op on Spaces without ZeroGPU hardware.)"""
    return function if spaces is None else spaces.GPU(duration=duration)(function)
