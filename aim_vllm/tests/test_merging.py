"""The plugin's merging is aim_core's: same tokens, same clusters for the deepstack features, same positions."""

from __future__ import annotations

import pytest
import torch

from aim_core.adapters.qwen_vl import cluster_mean
from aim_core.config import MERGE_ROUND
from aim_core.errors import SettingsError
from aim_core.merge import merge_frames, representatives
from aim_vllm.config import ENV_VAR, default_keep
from aim_vllm.merging import merge_video, qwen2_5_video_positions, tokens_per_step


def test_merge_video_is_aim_cores_merge_per_step() -> None:
    torch.manual_seed(0)
    grid, steps, n, dim = (3, 8, 12), 3, 4 * 6, 16
    embeds = torch.randn(steps * n, dim * 3)  # main features, then two deepstack levels
    merged = merge_video(embeds, grid, merge_size=2, keep=0.25, main_dim=dim)

    reference = merge_frames(embeds.view(steps, n, -1)[..., :dim], 0.25, MERGE_ROUND)
    deepstack = cluster_mean(embeds.view(steps, n, -1)[..., dim:], reference)
    expected = torch.cat([reference.tokens, deepstack], dim=-1).flatten(0, 1)
    torch.testing.assert_close(merged.embeds, expected)
    assert tokens_per_step(grid, 2) == n and merged.kept_per_step == 6 and len(merged.embeds) == steps * 6
    place = representatives(reference.source, (4, 6), 6)
    assert merged.kept_index.tolist() == (place + torch.arange(steps)[:, None] * n).flatten().tolist()


def test_positions_follow_vllms_unpruned_placement() -> None:
    positions = qwen2_5_video_positions((3, 4, 6), merge_size=2, temporal_scale=0.5 * 2)
    assert positions.shape == (3 * 2 * 3, 3)
    assert positions[0].tolist() == [0, 0, 0] and positions[-1].tolist() == [2, 1, 2]
    # 4 fps: half a step of time per step is kept as vLLM keeps it unpruned (EVS's `.long()` would give 0)
    assert qwen2_5_video_positions((3, 2, 2), 2, 0.5)[:, 0].tolist() == [0, 0, 1]


@pytest.mark.parametrize(("value", "expected"), [("", None), ("1", None), ("1.0", None), ("0.25", 0.25)])
def test_env_var_turns_the_plugin_on_below_one(monkeypatch: pytest.MonkeyPatch, value: str, expected: float) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    assert default_keep() == expected


@pytest.mark.parametrize("value", ["0", "1.5", "half"])
def test_bad_env_var_says_what_to_fix(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(SettingsError, match=ENV_VAR):
        default_keep()
