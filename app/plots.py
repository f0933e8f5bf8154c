"""Plotly figures: tokens per LLM layer, and the cost/agreement trade-off of a session's runs."""

from __future__ import annotations

from html import escape

import plotly.graph_objects as go

from .history import History, RunKey, RunPoint

INDIGO, AMBER, GREEN, RED, GREY = "#4f46e5", "#f59e0b", "#16a34a", "#dc2626", "#9ca3af"
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


def tradeoff_figure(history: History, current: RunKey | None) -> go.Figure:
    """Cost against efficiency for every run of the session; the current question's runs in colour.

    FLOPs are analytic and always known; prefill time and agreement need the no-reduction run of the same question
    (efficiency 0, or "Compare with no reduction"), so they appear once that has run.
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
                           name="FLOPs", line={"color": INDIGO, "width": 2}, hoverinfo="skip")
        latency = [(p, fraction) for p in runs if (fraction := history.prefill_fraction(p)) is not None]
        if latency:
            figure.add_scatter(x=[p.efficiency for p, _ in latency], y=[100 * f for _, f in latency],
                               mode="lines+markers", name="prefill time",
                               line={"color": AMBER, "width": 2, "dash": "dot"},
                               customdata=[p.prefill_seconds for p, _ in latency],
                               hovertemplate="efficiency %{x:.2f}<br>prefill %{y:.0f}% (%{customdata:.3f} s)"
                                             "<extra></extra>")
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
    figure.update_layout(xaxis={"title": "efficiency (0 = no reduction)", "range": [-0.04, 1.04]},
                         yaxis={"title": "% of the cost of no reduction", "range": [0, top]},
                         **_layout("Trade-off: cost against efficiency"))
    return figure


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
