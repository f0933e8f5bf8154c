"""How much of each frame the plugin keeps: `AIM_VLLM_MERGE_KEEP` for every request, `aim_merge_keep` per request."""

from __future__ import annotations

import os

from aim_core.errors import SettingsError

ENV_VAR = "AIM_VLLM_MERGE_KEEP"
REQUEST_KWARG = "aim_merge_keep"


def parse_keep(value: object, source: str) -> float:
    """`value` as a fraction of tokens kept per frame, in (0, 1], or `SettingsError` naming `source`."""
    try:
        keep = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SettingsError(f"{source} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < keep <= 1.0:
        raise SettingsError(f"{source} must be in (0, 1], got {value!r}")
    return keep


def default_keep() -> float | None:
    """The fraction set by `AIM_VLLM_MERGE_KEEP`, or None when it is unset or 1 (the plugin then does nothing)."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    keep = parse_keep(raw, ENV_VAR)
    return None if keep == 1.0 else keep
