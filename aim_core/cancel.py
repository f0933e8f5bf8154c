"""Stopping a model part-way through a forward: a Stop pressed during the vision tower or the prefill ends the run
within one layer's time, instead of after the whole pass (seconds on long videos).

A forward pre-hook on each layer raises `Cancelled` once `should_stop()` is true. The hooks only read a flag, so a
run that is not stopped computes exactly what the stock model computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


class Cancelled(Exception):
    """A run was stopped on request. Not an error: the caller asked for it."""


@contextmanager
def cancellable(layers: Iterable[nn.Module], should_stop: Callable[[], bool]) -> Iterator[None]:
    """Inside `with`, every forward of one of `layers` first checks `should_stop()` (e.g. `event.is_set`) and raises
    `Cancelled` instead of running when it is true. The hooks are removed on exit."""

    def check(module: nn.Module, args: Any) -> None:
        if should_stop():
            raise Cancelled

    handles = [layer.register_forward_pre_hook(check) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
