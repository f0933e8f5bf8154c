"""What `register()` (vLLM's entry point into the plugin) changes, and what it refuses."""

from __future__ import annotations

import pytest
from vllm import ModelRegistry

from aim_core.errors import SettingsError
from aim_vllm.config import ENV_VAR
from aim_vllm.plugin import ARCHITECTURES, register


def registered(architecture: str) -> str:
    return repr(ModelRegistry.models[architecture])


def test_unset_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = {architecture: registered(architecture) for architecture in ARCHITECTURES}
    register()
    assert {architecture: registered(architecture) for architecture in ARCHITECTURES} == before
    assert all("aim_vllm" not in text for text in before.values())


def test_a_bad_value_stops_vllm_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "1.5")
    with pytest.raises(SettingsError, match=r"AIM_VLLM_MERGE_KEEP must be in \(0, 1\]"):
        register()


def test_set_replaces_both_qwen_vl_families(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "0.5")
    register()
    for architecture, model_class in ARCHITECTURES.items():
        assert model_class.split(":")[1] in registered(architecture)
