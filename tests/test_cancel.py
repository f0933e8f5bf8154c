"""Stop during the vision tower and the prefill: the run ends before the next layer, says it was cancelled, and the
model answers the next question at once, as if nothing had happened."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aim_core import AIMConfig, VideoQA
from aim_core.cancel import Cancelled, cancellable
from aim_core.random_models import QwenVLShape, build_qwen_vl

QUESTION = "Which colour appears first?"


class LayerLog:
    """Which of `layers` ran a forward, in order; and, at `layer`'s first forward, `on_reach()` (before it runs)."""

    def __init__(self, layers: nn.ModuleList, layer: int, on_reach) -> None:
        self.ran: list[int] = []
        self.handles = [layers[layer].register_forward_pre_hook(lambda module, args: on_reach())]
        self.handles += [module.register_forward_hook(lambda module, args, output, i=i: self.ran.append(i))
                         for i, module in enumerate(layers)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_hooks_raise_before_the_next_layer_once_asked_and_leave_nothing_behind():
    layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
    stop = {"now": False}
    log = LayerLog(layers, 2, lambda: stop.update(now=True))

    def forward(x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = layer(x)
        return x

    with cancellable(layers, lambda: stop["now"]), pytest.raises(Cancelled):
        forward(torch.ones(1, 4))
    assert log.ran == [0, 1]  # asked at layer 2: it and every later layer never ran
    log.remove()
    assert all(not layer._forward_pre_hooks for layer in layers)
    with cancellable(layers, lambda: False):
        assert torch.equal(forward(torch.ones(1, 4)), forward(torch.ones(1, 4)))


@pytest.fixture(scope="module")
def qa(tiny_llava):
    return VideoQA.from_model(*tiny_llava)


@pytest.mark.parametrize("efficiency", [0.0, 0.75])
def test_stop_in_the_middle_of_the_prefill_skips_the_later_layers_and_the_next_answer_is_whole(qa, random_frames,
                                                                                             efficiency):
    config = AIMConfig.from_efficiency(efficiency)
    expected = qa.answer(random_frames, QUESTION, config, max_new_tokens=6)
    stream = qa.stream(random_frames, QUESTION, config, max_new_tokens=6)
    log = LayerLog(qa.adapter.decoder_layers, 3, stream.cancel)
    try:
        assert "".join(stream) == ""
    finally:
        log.remove()
    assert log.ran == [0, 1, 2]  # the prefill stopped at layer 3, and nothing was decoded
    assert stream.answer.cancelled and stream.answer.text == ""
    assert stream.answer.stats is None and stream.answer.trace is None

    after = qa.answer(random_frames, QUESTION, config, max_new_tokens=6)
    assert after.text == expected.text and not after.cancelled
    assert after.stats.tokens_per_layer == expected.stats.tokens_per_layer


def test_stop_in_the_vision_tower_skips_its_later_layers_and_caches_nothing(tiny_llava, random_frames):
    qa = VideoQA.from_model(*tiny_llava)
    stream = qa.stream(random_frames, QUESTION, max_new_tokens=4)
    vision = qa.adapter.vision_layers
    log = LayerLog(vision, len(vision) - 1, stream.cancel)
    decoder = LayerLog(qa.adapter.decoder_layers, 0, lambda: None)
    try:
        assert "".join(stream) == ""
    finally:
        log.remove()
        decoder.remove()
    assert log.ran == list(range(len(vision) - 1)) and decoder.ran == []
    assert stream.answer.cancelled and stream.answer.stats is None
    after = qa.answer(random_frames, QUESTION, max_new_tokens=4)
    assert not after.cancelled and not after.stats.vision_cached  # the cut-off encoding was not kept


def test_stop_in_a_qwen_vision_tower_and_prefill(random_frames):
    model, processor = build_qwen_vl(QwenVLShape(family="qwen2_5_vl", vision_layers=2))
    qa = VideoQA.from_model(model, processor)
    for layers, at in ((qa.adapter.vision_layers, 1), (qa.adapter.decoder_layers, 2)):
        stream = qa.stream(random_frames, QUESTION, max_new_tokens=4)
        log = LayerLog(layers, at, stream.cancel)
        try:
            assert "".join(stream) == ""
        finally:
            log.remove()
        assert log.ran == list(range(at)) and stream.answer.cancelled and stream.answer.stats is None
    assert qa.answer(random_frames, QUESTION, max_new_tokens=4).stats.new_tokens == 4
