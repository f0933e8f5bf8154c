"""The app's words and numbers as HTML: the header, the live prediction, the stats of an answer, the comparison."""

from __future__ import annotations

from html import escape

from aim_core import AIMConfig, CostEstimate, Stats

from .history import same_answer
from .models import ModelChoice

TAGLINE = (
    "Ask a question about a long video. AIM merges look-alike visual tokens before the language model and drops "
    "them layer by layer inside it: the same model answers several times faster, with no retraining."
)


def header(model: ModelChoice) -> str:
    note = f'<span class="aim-note">{escape(model.note)}</span>' if model.note else ""
    badge = "aim-model aim-warning" if model.warning else "aim-model"
    return (
        '<div class="aim-header"><div class="aim-title">AIM Video QA</div>'
        f'<div class="aim-tagline">{escape(TAGLINE)}</div>'
        f'<div class="{badge}"><b>Model:</b> {escape(model.label)} {note}</div></div>'
    )


def prediction(estimate: CostEstimate, config: AIMConfig, num_layers: int) -> str:
    """What the slider's setting will cost, before anything runs."""
    # Read from the estimate's own per-layer counts, so the card says what will run.
    visual = [count - estimate.text_tokens for count in estimate.tokens_per_layer]
    pruned = [layer for layer, count in enumerate(visual) if count < estimate.visual_after_merge]
    empty = [layer for layer, count in enumerate(visual) if count == 0]
    if not config.merges and not pruned:
        plan = "No reduction: the stock model."
    else:
        pruning = "no pruning"
        if pruned:
            gone = f"none left from layer {empty[0]}" if empty else "some kept to the last layer"
            pruning = f"pruned from layer {pruned[0]}, {gone}"
        plan = f"Merging keeps {config.merge_keep:.0%} of each frame's tokens; {pruning} of {num_layers}."
    if estimate.vision_flops < estimate.vision_flops_baseline:
        plan += f" The vision tower merges each frame's patches to {config.vision_keep:.0%}."
    whole = ""
    if estimate.vision_flops_baseline:
        vision_share = estimate.vision_flops_baseline / estimate.total_flops_baseline
        whole = (f"<div>Whole first answer (vision tower + prefill): <b>{flops_text(estimate.total_flops)}</b>, "
                 f"<b>{estimate.total_reduction:.1f}×</b> fewer than no reduction, where the vision tower is "
                 f"{vision_share:.0%} of the cost</div>")
    return (
        '<div class="aim-prediction"><div class="aim-prediction-title">Predicted for this setting</div>'
        f"<div><b>{estimate.visual_before_merge:,} → {estimate.visual_after_merge:,}</b> visual tokens after "
        f"merging · <b>{flops_text(estimate.flops)}</b> prefill, "
        f"<b>{estimate.flops_reduction:.1f}×</b> fewer than no reduction ({flops_text(estimate.flops_baseline)})</div>"
        f"{whole}"
        f'<div class="aim-muted">{escape(plan)} {estimate.num_frames} frames.</div></div>'
    )


def stats_cards(stats: Stats) -> str:
    """The cards beside the answer."""
    if stats.peak_memory_bytes is not None:
        memory = _card("Peak GPU memory", bytes_text(stats.peak_memory_bytes),
                       f"KV cache {bytes_text(stats.kv_cache_bytes)}")
    else:
        memory = _card("KV cache", bytes_text(stats.kv_cache_bytes), "peak memory is measured on GPU only")
    vision_share = f"{stats.vision_seconds / max(stats.first_answer_seconds, 1e-9):.0%} of a first answer"
    vision_cut = stats.vision_flops_baseline / max(stats.vision_flops, 1)
    if vision_cut > 1:
        vision_share += f" · {vision_cut:.1f}× fewer FLOPs"
    vision = ("cached", f"reused: only the LLM ran ({seconds_text(stats.vision_seconds)} when encoded)") \
        if stats.vision_cached else (seconds_text(stats.vision_seconds), vision_share)
    speed = f"{stats.new_tokens} tokens"
    if stats.decode_tokens_per_second:
        speed += f" · {stats.decode_tokens_per_second:.0f} tokens/s"
    cards = [
        _card("Visual tokens", f"{stats.visual_tokens_before_merge:,} → {stats.visual_tokens_after_merge:,}",
              "before → after merging"),
        _card("Compute", flops_text(stats.total_flops),
              f"vision + prefill, {stats.total_reduction:.1f}× fewer · prefill alone {stats.flops_reduction:.1f}×"),
        _card("First token", seconds_text(stats.time_to_first_token), f"prefill {seconds_text(stats.prefill_seconds)}"),
        _card("Total", seconds_text(stats.total_seconds), speed),
        _card("Vision tower", *vision),
        memory,
    ]
    return f'<div class="aim-cards">{"".join(cards)}</div>'


def run_status(stats: Stats, cancelled: bool) -> str:
    """One line on what this run reused and how it ended."""
    if stats.vision_cached:
        line = (f"♻️ Reused the cached vision features of these {stats.num_frames} frames: only the language model "
                "ran.")
    else:
        line = (f"Encoded {stats.num_frames} frames with the vision tower in {seconds_text(stats.vision_seconds)}; "
                "follow-up questions on this video will reuse them.")
    if cancelled:
        line = f"⏹ Stopped after {stats.new_tokens} tokens. " + line
    return f'<div class="aim-status">{escape(line)}</div>'


def comparison(aim: Stats, aim_answer: str, stock: Stats, stock_answer: str) -> str:
    """AIM against no reduction on the same frames and question: the prefill (what AIM shortens), the whole wait of
    a first question (frames, vision tower, merge, prefill; each setting's vision time is that of its own encoding,
    also when it came from the cache), and the speed of decoding (faster with a pruned KV cache). Total times are
    not compared: two answers of different lengths take different times to decode."""
    agree = same_answer(aim_answer, stock_answer)
    verdict = ('<span class="aim-agree">✓ same answer</span>' if agree
               else '<span class="aim-differ">✗ different answers</span>')
    decoding = ""
    if aim.decode_tokens_per_second and stock.decode_tokens_per_second:
        decoding = (f"decoding at {aim.decode_tokens_per_second:.0f} vs {stock.decode_tokens_per_second:.0f} "
                    "tokens/s, ")
    aim_wait, stock_wait = aim.first_answer_seconds, stock.first_answer_seconds
    return (
        '<div class="aim-status aim-compare">'
        f"<b>{stock_wait / max(aim_wait, 1e-9):.1f}× faster first answer end to end</b> "
        f"({seconds_text(aim_wait)} vs {seconds_text(stock_wait)}), "
        f"{stock.prefill_seconds / max(aim.prefill_seconds, 1e-9):.1f}× faster prefill "
        f"({seconds_text(aim.prefill_seconds)} vs {seconds_text(stock.prefill_seconds)} with no reduction), "
        f"{decoding}{aim.total_reduction:.1f}× fewer FLOPs · {verdict}</div>"
    )


def note(text: str, bad: bool = False) -> str:
    """A small grey line, or a red one for a problem."""
    return f'<div class="aim-muted{" aim-bad" if bad else ""}">{escape(text)}</div>'


def _card(title: str, value: str, detail: str) -> str:
    return (f'<div class="aim-card"><div class="aim-card-title">{escape(title)}</div>'
            f'<div class="aim-card-value">{escape(value)}</div>'
            f'<div class="aim-card-detail">{escape(detail)}</div></div>')


def flops_text(flops: float) -> str:
    for unit, scale in (("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOPs"


def seconds_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def bytes_text(count: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def video_summary(duration: float, width: int, height: int, fps: float, num_frames: int) -> str:
    minutes, seconds = divmod(duration, 60)
    return f"{int(minutes)}:{seconds:04.1f} · {width}×{height} · {fps:.3g} fps · {num_frames:,} frames"
