"""Plotly figures: tokens per LLM layer, where an answer's time went, and the cost/agreement trade-off of a session's
runs."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

import plotly.graph_objects as go

from aim_core import Stats

from .history import History, RunKey, RunPoint

INDIGO, AMBER, GREEN, RED, GREY = "#4f46e5", "#f59e0b", "#16a34a", "#dc2626", "#9ca3af"
TEAL, PINK = "#0d9488", "#db2777"
# (name, colour, seconds of a stage of the first answer about a video) in the order a question runs through them.
STAGES = (
    ("decode frames", GREY, lambda stats: stats.video_decode_seconds),
    ("vision tower", TEAL, lambda stats: stats.vision_seconds),
    ("merge", AMBER, lambda stats: stats.merge_seconds),
    ("LLM prefill", INDIGO, lambda stats: stats.prefill_seconds),
    ("generation", PINK, lambda stats: stats.decode_seconds),
)
# (legend name, marker symbol, colour) of a run's agreement with the no-reduction answer.
AGREEMENT_MARKERS = {
    True: ("same answer as no reduction", "circle", GREEN),
    False: ("different answer", "x", RED),
    None: ("not compared yet", "circle-open", INDIGO),
}


def tokens_per_layer_figure(no_reduction: list[int], predicted: list[int] | None = None,
                            measured: list[int] | None = None, measured_label: str = "last run") -> go.Figure:
    """Tokens each decoder layer processes at prefill: measured (bars), predicted (line), no reduction (dashed)."""
    layers = list(range(len(no_reduction)))
    figure = go.Figure()
    if measured is not None:
        figure.add_bar(x=layers, y=measured, name=f"measured ({measured_label})", marker_color=INDIGO, opacity=0.8)
    if predicted is not None:
        figure.add_scatter(x=layers, y=predicted, name="predicted for the slider's setting", mode="lines+markers",
                           line={"color": AMBER, "width": 3, "shape": "hv"})
    figure.add_scatter(x=layers, y=no_reduction, name="no reduction", mode="lines",
                       line={"color": GREY, "dash": "dash", "shape": "hv"})
    figure.update_layout(xaxis_title="LLM layer", yaxis_title="tokens processed", yaxis_rangemode="tozero",
                         bargap=0.15, **_layout("Tokens per LLM layer at prefill"))
    return figure


def time_figure(stats: Stats, label: str, baseline: Stats | None = None) -> go.Figure:
    """Where the time of a first question about a video goes, stage by stage, next to no reduction.

    The vision tower's time is what encoding these frames took, also when this answer found them in the cache (a
    follow-up question skips it). Without a measured no-reduction run, its bar is this run's stages scaled by the
    FLOPs each would take unreduced (vision and prefill; the rest as measured), and says so.
    """
    if baseline is None:
        baseline_label = "no reduction (predicted from FLOPs)"
        scale = {"vision tower": stats.vision_flops_baseline / max(stats.vision_flops, 1),
                 "LLM prefill": stats.flops_baseline / max(stats.flops, 1), "merge": 0.0}
        baseline_seconds = [scale.get(name, 1.0) * seconds(stats) for name, _, seconds in STAGES]
    else:
        baseline_label = "no reduction (measured)"
        baseline_seconds = [seconds(baseline) for _, _, seconds in STAGES]
    rows = [baseline_label, label]
    figure = go.Figure()
    for (name, colour, seconds), unreduced in zip(STAGES, baseline_seconds):
        values = [unreduced, seconds(stats)]
        figure.add_bar(y=rows, x=values, name=name, orientation="h", marker_color=colour,
                       hovertemplate=f"{name}: %{{x:.2f}} s<extra>%{{y}}</extra>")
    total, unreduced_total = (sum(values) for values in
                              ([seconds(stats) for _, _, seconds in STAGES], baseline_seconds))
    speedup = unreduced_total / max(total, 1e-9)
    if 0.95 <= speedup < 1.05:
        verdict = "about as fast end to end"
    else:
        verdict = f"{speedup:.1f}× faster end to end" if speedup > 1 else f"{1 / speedup:.1f}× slower end to end"
    figure.add_annotation(text=verdict, x=total, y=label,
                          xanchor="left", showarrow=False, font={"size": 14, "color": INDIGO}, xshift=6)
    figure.update_layout(barmode="stack", xaxis_title="seconds (first question about the video)",
                         **_layout("Where the time went"))
    return figure


def tradeoff_figure(history: History, current: RunKey | None) -> go.Figure:
    """Cost against efficiency for every run of the session; the current question's runs in colour.

    FLOPs are analytic and always known, of the prefill alone (as the paper counts) and of the vision tower and the
    prefill together (what a first question pays for). Times and agreement need the no-reduction run of the same
    question (efficiency 0, or "Compare with no reduction"), so they appear once that has run: the prefill's, and the
    whole wait of a first question (frames, vision tower, merge, prefill).
    """
    figure = go.Figure()
    others = [point for point in history.points if point.key != current]
    if others:
        figure.add_scatter(x=[p.efficiency for p in others], y=[100 * p.flops_fraction for p in others],
                           mode="markers", name="FLOPs, other questions", marker={"color": GREY, "size": 7},
                           hovertemplate="efficiency %{x:.2f}<br>FLOPs %{y:.0f}%<extra>other question</extra>")
    runs = sorted((point for point in history.points if point.key == current), key=lambda p: p.efficiency)
    if runs:
        figure.add_scatter(x=[p.efficiency for p in runs], y=[100 * p.flops_fraction for p in runs], mode="lines",
                           name="prefill FLOPs", line={"color": INDIGO, "width": 2}, hoverinfo="skip")
        figure.add_scatter(x=[p.efficiency for p in runs], y=[100 * p.total_flops_fraction for p in runs],
                           mode="lines", name="vision + prefill FLOPs", line={"color": TEAL, "width": 2},
                           hovertemplate="efficiency %{x:.2f}<br>vision + prefill FLOPs %{y:.0f}%<extra></extra>")
        _add_measured_time(figure, runs, history.prefill_fraction, lambda p: p.prefill_seconds, "prefill time",
                           "prefill", AMBER, ".3f")
        _add_measured_time(figure, runs, history.first_answer_fraction, lambda p: p.first_answer_seconds,
                           "first answer, end to end", "first answer", PINK, ".2f")
        for agreement, (name, symbol, colour) in AGREEMENT_MARKERS.items():
            group = [p for p in runs if history.agrees(p) is agreement]
            if group:
                marker = {"symbol": symbol, "color": colour, "size": 12, "line": {"width": 2, "color": colour}}
                figure.add_scatter(x=[p.efficiency for p in group], y=[100 * p.flops_fraction for p in group],
                                   mode="markers", name=name, marker=marker,
                                   customdata=[_hover_answer(p) for p in group],
                                   hovertemplate="efficiency %{x:.2f}<br>FLOPs %{y:.1f}%<br>%{customdata}"
                                                 "<extra></extra>")
    else:
        figure.add_annotation(text="Ask a question: every run adds a point here.<br>Move the efficiency slider and "
                                   "ask again to draw the curve.", showarrow=False, x=0.5, y=50,
                              font={"color": "#6b7280", "size": 14})
    # A fixed 0-100% scale (stretched if a run was slower than no reduction), so runs stay comparable at a glance.
    top = max([105.0] + [y + 5 for trace in figure.data for y in (trace.y or ())])
    layout = _layout("Trade-off: cost against efficiency")
    layout["margin"] = {**layout["margin"], "t": 110}  # room for a legend of up to three rows
    figure.update_layout(xaxis={"title": "efficiency (0 = no reduction)", "range": [-0.04, 1.04]},
                         yaxis={"title": "% of the cost of no reduction", "range": [0, top]}, **layout)
    return figure


def _add_measured_time(figure: go.Figure, runs: list[RunPoint], fraction_of: Callable[[RunPoint], float | None],
                       seconds_of: Callable[[RunPoint], float], name: str, hover_name: str, colour: str,
                       seconds_format: str) -> None:
    """A dotted line of a time measured in `runs`, as a % of the no-reduction run's (runs without one are left out)."""
    measured = [(p, fraction) for p in runs if (fraction := fraction_of(p)) is not None]
    if measured:
        figure.add_scatter(x=[p.efficiency for p, _ in measured], y=[100 * f for _, f in measured],
                           mode="lines+markers", name=name, line={"color": colour, "width": 2, "dash": "dot"},
                           customdata=[seconds_of(p) for p, _ in measured],
                           hovertemplate=f"efficiency %{{x:.2f}}<br>{hover_name} %{{y:.0f}}% "
                                         f"(%{{customdata:{seconds_format}}} s)<extra></extra>")


def _hover_answer(point: RunPoint) -> str:
    text = point.answer if len(point.answer) <= 60 else point.answer[:57] + "..."
    return f"answer: {escape(text)}"  # plotly renders hover text as HTML


def _layout(title: str) -> dict:
    return {
        "title": {"text": f"<b>{title}</b>", "x": 0.01, "xanchor": "left", "y": 0.97, "font": {"size": 15}},
        "template": "plotly_white",
        "height": 380,
        "margin": {"l": 60, "r": 20, "t": 80, "b": 50},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        "font": {"size": 13},
    }
