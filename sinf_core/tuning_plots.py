"""Figures of threshold tuning (SINF Studio's Pruning and Live pages): how calibration accuracy, the
exit / route / fallback rates and the expected FLOPs move with gamma (or tau), the chosen point marked.
Inputs are the point dicts of ``tuning.threshold_curves`` (no Streamlit, no tensors)."""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import MODE_COLORS

RATE_COLORS = {"exit_rate": MODE_COLORS["exit"], "route_rate": MODE_COLORS["route"],
               "fallback_rate": MODE_COLORS["fallback"]}
RATE_NAMES = {"exit_rate": "exit", "route_rate": "routed", "fallback_rate": "fall back"}


def curve(points: Sequence[Mapping], mode: str, vary: str, fixed: Mapping[str, float | None]) -> list[Mapping]:
    """The points of ``mode`` along ``vary`` ("gamma" or "tau") with the other threshold at ``fixed``'s
    value (nearest grid value), sorted along ``vary``."""
    own = [p for p in points if p["mode"] == mode and p.get(vary) is not None]
    other = "tau" if vary == "gamma" else "gamma"
    want = fixed.get(other)
    if want is not None and any(p.get(other) is not None for p in own):
        grid = sorted({p[other] for p in own if p.get(other) is not None})
        near = min(grid, key=lambda v: abs(v - want))
        own = [p for p in own if p.get(other) == near]
    return sorted(own, key=lambda p: p[vary])


def threshold_figure(points: Sequence[Mapping], mode: str, vary: str, current: Mapping[str, float | None],
                     base_top1: float, base_flops: float, chosen: Mapping | None = None,
                     title: str | None = None) -> go.Figure:
    """Three stacked panels against ``vary``: calibration top-1 (with the base model's line), the shares
    that exit / are routed / fall back, and expected FLOPs per input as % of the base model. The current
    setting is a black marker; ``chosen`` (the benchmark's point) a star."""
    line = curve(points, mode, vary, current)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[0.4, 0.3, 0.3],
                        subplot_titles=("top-1 on calibration (%)", "share of inputs", "expected FLOPs (% of base)"))
    xs = [p[vary] for p in line]
    fig.add_trace(go.Scatter(x=xs, y=[p["top1"] for p in line], mode="lines", name="routed model",
                             line=dict(color=MODE_COLORS.get(mode, "#2E91E5"), width=2),
                             hovertemplate=f"{vary} %{{x:.2f}}<br>top-1 %{{y:.2f}} %<extra></extra>"), 1, 1)
    fig.add_hline(y=base_top1, line=dict(color=MODE_COLORS["base"], dash="dot"), row=1, col=1,
                  annotation_text=f"base {base_top1:.2f} %", annotation_position="bottom right")
    for key in ("exit_rate", "route_rate", "fallback_rate"):
        if any(p[key] for p in line):
            fig.add_trace(go.Scatter(x=xs, y=[100 * p[key] for p in line], mode="lines", name=RATE_NAMES[key],
                                     line=dict(color=RATE_COLORS[key]), stackgroup="rates",
                                     hovertemplate=f"{RATE_NAMES[key]} %{{y:.1f}} %<extra></extra>"), 2, 1)
    fig.add_trace(go.Scatter(x=xs, y=[100 * p["flops"] / base_flops for p in line], mode="lines", name="expected FLOPs",
                             line=dict(color="#444"), showlegend=False,
                             hovertemplate=f"{vary} %{{x:.2f}}<br>%{{y:.1f}} % of the base model's FLOPs<extra></extra>"),
                  3, 1)
    fig.add_hline(y=100, line=dict(color=MODE_COLORS["base"], dash="dot"), row=3, col=1)
    here = min(line, key=lambda p: abs(p[vary] - (current.get(vary) or 0.0)), default=None)
    if here is not None:
        for row, y in ((1, here["top1"]), (3, 100 * here["flops"] / base_flops)):
            fig.add_trace(go.Scatter(x=[here[vary]], y=[y], mode="markers", marker=dict(color="black", size=10),
                                     name="current setting", showlegend=row == 1,
                                     hovertemplate=f"current: {vary} %{{x:.2f}}<extra></extra>"), row, 1)
    if chosen is not None and chosen.get(vary) is not None and chosen.get("mode") == mode:
        fig.add_trace(go.Scatter(x=[chosen[vary]], y=[chosen["top1"]], mode="markers",
                                 marker=dict(symbol="star", size=15, color="#FEAF16", line=dict(color="black", width=1)),
                                 name="benchmark's point", hovertemplate="chosen on calibration: %{x:.2f}<extra></extra>"),
                      1, 1)
    fig.update_xaxes(title_text=vary, range=[0, 1], row=3, col=1)
    fig.update_layout(title=title or f"{mode}: calibration accuracy, routes and cost against {vary}", height=620,
                      margin=dict(l=50, r=20, t=70, b=110), legend=dict(orientation="h", y=-0.12, x=0, yanchor="top"),
                      hovermode="x unified", template="plotly_white")
    return fig




def paired_ratio_figure(ratios: Sequence[float], median: float, title: str, reference: float | None = None) -> go.Figure:
    """Every batch's paired speed ratio (base time / SINF time in the same round) with their median
    and, when given, the benchmark's figure for the same point."""
    fig = go.Figure(go.Scatter(x=list(range(1, len(ratios) + 1)), y=list(ratios), mode="markers+lines",
                               marker=dict(color=MODE_COLORS["sinf"]), line=dict(color="#BBB", width=1),
                               name="per batch", hovertemplate="batch %{x}: %{y:.3f}x<extra></extra>"))
    fig.add_hline(y=median, line=dict(color=MODE_COLORS["sinf"], width=2), annotation_text=f"median {median:.2f}x",
                  annotation_position="top left")
    fig.add_hline(y=1.0, line=dict(color=MODE_COLORS["base"], dash="dot"), annotation_text="base",
                  annotation_position="bottom right")
    if reference is not None:
        fig.add_hline(y=reference, line=dict(color="#FEAF16", dash="dash"), annotation_text=f"sinf bench {reference:.2f}x",
                      annotation_position="top right")
    fig.update_layout(title=title, xaxis_title="timed batch (rounds over the stream, in order)",
                      yaxis_title="speed vs base (x, > 1 is faster)", height=340, template="plotly_white",
                      margin=dict(l=50, r=20, t=60, b=40), showlegend=False)
    return fig


__all__ = ["curve", "threshold_figure", "paired_ratio_figure"]
