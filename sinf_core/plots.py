"""Plotly figure builders for SINF Studio and the standalone report (no Streamlit here).

Every figure has a title, axis titles with units and hover text. Clusters are coloured through ONE
palette function, ``cluster_colors``, so cluster m has the same colour on every page and in every
export. Inputs are plain Python / numpy values (lists, arrays, dicts), never tensors on a device.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

# 20 clearly distinct cluster colours (CIFAR-100 has 20 superclasses): the 20 of the well-known
# qualitative palettes (Kelly's 22, Trubetskoy's 20, Plotly's Alphabet and Dark24, Tableau 10) that are
# furthest apart, every pair at least 16 CIEDE2000 units (Dark24's first 20 came down to 8.7), none
# greyish (grey means "removed" / "n/a") and none too pale to see on white; in farthest-first order,
# so the first K colours of a smaller K are as distinct as possible. Then 20 more for K > 20.
_PALETTE = (
    "#2E91E5", "#BCBD22", "#800000", "#FE00FA", "#F58231", "#750D86", "#469990", "#6C7C32",
    "#2ED9FF", "#B3446C", "#F8A19F", "#325A9B", "#9A6324", "#FB0D0D", "#DEA0FD", "#1CA71C",
    "#9467BD", "#FEAF16", "#511CFB", "#8C564B",
    "#2B3D26", "#7F7F7F", "#565656", "#008856", "#B2828D", "#C2B280", "#BE0032", "#654522",
    "#A1CAF1", "#B68100", "#E15F99", "#1616A7", "#778AAE", "#604E97", "#AA0DFE", "#B10DA1",
    "#E68FAC", "#1F77B4", "#EB663B", "#C4451C",
)
DISTINCT_CLUSTER_COLORS = 20  # clusters 0..19 get pairwise clearly distinct colours

# Fixed colours of the inference modes (benchmark tables, Pareto plots, live inference).
MODE_COLORS = {
    "base": "#222A2A", "sinf": "#2E91E5", "exit": "#1CA71C", "cascade": "#DA16FF", "static": "#EB663B",
    "route": "#2E91E5", "fallback": "#B68100",
}

FLOPS_NOTE = "FLOPs per image = 2 x multiply-accumulates"


def cluster_color(index: int) -> str:
    """The colour of cluster ``index`` (clearly distinct for the first 20; cycles after 40 clusters)."""
    return _PALETTE[int(index) % len(_PALETTE)]


def cluster_colors(n: int) -> list[str]:
    """Colours of clusters 0..n-1, in cluster-index order. The single source of cluster colours."""
    return [cluster_color(m) for m in range(int(n))]


def text_color(background: str) -> str:
    """Black or white, whichever contrasts more with the ``#RRGGBB`` colour ``background`` (WCAG
    relative luminance), for text on a coloured chip."""
    h = background.lstrip("#")
    c = np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)]) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lum = float(lin @ np.array([0.2126, 0.7152, 0.0722]))
    return "#000000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#FFFFFF"


def _layout(fig: go.Figure, title: str, x: str | None = None, y: str | None = None, height: int | None = None,
            legend_title: str | None = None) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        hoverlabel={"namelength": -1},
        template="plotly_white",
        legend_title_text=legend_title,
    )
    if height:
        fig.update_layout(height=height)
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


def fmt_count(v: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (with ``unit`` appended); None -> 'n/a'."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    v = float(v)
    for div, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}{unit}"
    return f"{v:.3g} {unit}".rstrip() if unit else f"{v:.3g}"


# ------------------------------------------------------------------------------------ clusters
SVG_POINTS = 5000  # maps with at most this many points are drawn as SVG, larger ones with WebGL
def cluster_map_figure(
    xy: np.ndarray,
    cluster: Sequence[int],
    cluster_names: Sequence[str],
    hover: Sequence[str],
    title: str,
    marker_size: int = 11,
    opacity: float = 0.9,
) -> go.Figure:
    """2-D map (e.g. UMAP) of points ``xy`` [N, 2] coloured by ``cluster`` [N] (indices into
    ``cluster_names``); ``hover`` [N] is each point's label. One legend entry per cluster."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    cluster = np.asarray(cluster, dtype=int)
    hover = np.asarray(list(hover), dtype=object)
    fig = go.Figure()
    # SVG up to a few thousand points: it draws without WebGL, which a browser without a GPU (a server,
    # a headless test) emulates slowly (the 2,000-sample map took a second to redraw there); WebGL beyond
    trace = go.Scatter if len(xy) <= SVG_POINTS else go.Scattergl
    for m, name in enumerate(cluster_names):
        sel = np.flatnonzero(cluster == m)
        if not len(sel):
            continue
        fig.add_trace(trace(
            x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=str(name),
            marker={"size": marker_size, "color": cluster_color(m), "opacity": opacity,
                    "line": {"width": 0.5, "color": "white"}},
            text=hover[sel], customdata=np.full(len(sel), str(name), dtype=object),
            hovertemplate="%{text}<br>cluster: %{customdata}<extra></extra>",
        ))
    fig.update_xaxes(showticklabels=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, scaleanchor="x", scaleratio=1)
    return _layout(fig, title, "map axis 1 (unitless)", "map axis 2 (unitless)", height=560, legend_title="cluster")


def cluster_sizes_figure(sizes: Sequence[int], cluster_names: Sequence[str], title: str) -> go.Figure:
    """Bar of classes per cluster."""
    fig = go.Figure(go.Bar(
        x=list(cluster_names), y=list(sizes), marker_color=cluster_colors(len(cluster_names)),
        hovertemplate="%{x}: %{y} classes<extra></extra>",
    ))
    return _layout(fig, title, "cluster", "classes (count)", height=320)


# ------------------------------------------------------------------------------------- overlap
def jaccard_heatmap(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    group_of: Sequence[int] | None = None,
    group_names: Sequence[str] | None = None,
    item: str | None = None,
    max_tick_labels: int = 40,
) -> go.Figure:
    """Symmetric overlap matrix [n, n] with values in [0, 1]; row and column i are ``labels[i]``. With
    ``group_of`` [n] (cluster of each row, rows already sorted by it) thin lines separate the groups and
    the hover names the group. ``item`` names what a row is (default "cluster", or "class" with groups).

    Both axes have titles; their ticks are the labels when there are at most ``max_tick_labels`` of them,
    else the group names at the middle of each group (or every k-th label without groups)."""
    m = np.asarray(matrix, dtype=float)
    labels = [str(v) for v in labels]
    n = len(labels)
    item = item or ("cluster" if group_of is None else "class")
    if group_of is not None and group_names is not None:
        g = [str(group_names[int(i)]) for i in group_of]
        custom = np.array([[[labels[i], labels[j], f"{g[i]} / {g[j]}"] for j in range(n)] for i in range(n)],
                          dtype=object)
        tmpl = "%{customdata[0]} vs %{customdata[1]}<br>clusters: %{customdata[2]}<br>Jaccard: %{z:.3f}<extra></extra>"
    else:
        custom = np.array([[[labels[i], labels[j]] for j in range(n)] for i in range(n)], dtype=object)
        tmpl = "%{customdata[0]} vs %{customdata[1]}<br>Jaccard: %{z:.3f}<extra></extra>"
    idx = list(range(n))
    fig = go.Figure(go.Heatmap(
        z=m, x=idx, y=idx, zmin=0.0, zmax=1.0, colorscale="Viridis", customdata=custom if n else None,
        colorbar={"title": {"text": "Jaccard (0-1)"}}, hovertemplate=tmpl,
    ))
    bounds: list[float] = []
    if group_of is not None:
        go_ = np.asarray(group_of)
        bounds = list(np.flatnonzero(np.diff(go_)) + 0.5)
        for b in bounds:
            fig.add_shape(type="line", x0=b, x1=b, y0=-0.5, y1=n - 0.5, line={"color": "white", "width": 1})
            fig.add_shape(type="line", y0=b, y1=b, x0=-0.5, x1=n - 0.5, line={"color": "white", "width": 1})
    if n <= max_tick_labels:
        tickvals, ticktext, tick_note = idx, labels, ""
    elif group_of is not None and group_names is not None:
        edges = [-0.5] + bounds + [n - 0.5]
        tickvals = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        ticktext = [str(group_names[int(group_of[int(np.ceil(a))])]) for a in edges[:-1]]
        tick_note = "; ticks name the clusters, hover a cell for the classes"
    else:
        step = int(np.ceil(n / max_tick_labels))
        tickvals, ticktext, tick_note = idx[::step], labels[::step], f"; one in {step} labelled"
    font = 11 if len(tickvals) <= 24 else 9
    axis = {"tickmode": "array", "tickvals": tickvals, "ticktext": ticktext, "tickfont": {"size": font},
            "automargin": True, "showgrid": False, "zeroline": False}
    fig.update_xaxes(**axis, tickangle=-60)
    fig.update_yaxes(**axis, autorange="reversed", scaleanchor="x", scaleratio=1)  # row 0 on top
    grouped = " (grouped by cluster)" if group_of is not None else ""
    return _layout(fig, title, f"{item}{grouped}{tick_note}", f"{item}{grouped}", height=680)


def depth_profile_figure(layers: Sequence[str], within: Sequence[float | None], between: Sequence[float | None], q: float,
                         title: str | None = None, chance: Sequence[float] | None = None,
                         marker: str | None = None) -> go.Figure:
    """Mean Jaccard overlap of class pairs in the same cluster vs in different clusters, per layer; with
    ``chance`` the overlap of two random sets of the same size, and a vertical line at layer ``marker``."""
    layers = [str(v) for v in layers]
    within = [np.nan if v is None else v for v in within]
    between = [np.nan if v is None else v for v in between]
    fig = go.Figure()
    if chance is not None:
        fig.add_trace(go.Scatter(x=layers, y=list(chance), mode="lines", name="two random sets",
                                 line={"color": "#AAAAAA", "dash": "dot"},
                                 hovertemplate="%{x}<br>chance overlap: %{y:.3f}<extra></extra>"))
    if marker is not None and marker in layers:
        fig.add_vline(x=layers.index(marker), line={"color": "#555", "dash": "dash"}, annotation_text=marker)
    fig.add_trace(go.Scatter(x=layers, y=list(within), mode="lines+markers", name="within a cluster",
                             line={"color": "#2E91E5"},
                             hovertemplate="%{x}<br>within-cluster pairs: %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=layers, y=list(between), mode="lines+markers", name="between clusters",
                             line={"color": "#EB663B"},
                             hovertemplate="%{x}<br>between-cluster pairs: %{y:.3f}<extra></extra>"))
    fig.update_xaxes(tickangle=-60)
    fig.update_yaxes(range=[0, 1])
    return _layout(fig, title or f"Filter overlap by depth (top {q:g} % of channels per class)",
                   "prunable layer (forward order)", "mean Jaccard of class pairs (0-1)", height=420)


def filter_bars_figure(values: Sequence[float], kept: Sequence[bool] | None, layer: str, cluster_name: str,
                       cluster_index: int, value_name: str = "mean activation", top: Sequence[bool] | None = None
                       ) -> go.Figure:
    """Per-channel bars (sorted by value, highest first) for one cluster at ``layer``; channels the
    subgraph keeps are drawn in the cluster's colour, removed ones in grey."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(-v, kind="stable")
    kept_arr = np.ones(len(v), bool) if kept is None else np.asarray(kept, dtype=bool)
    colors = np.where(kept_arr[order], cluster_color(cluster_index), "#C8C8C8")
    status = np.where(kept_arr[order], "kept by the subgraph", "removed")
    top_arr = None if top is None else np.asarray(top, dtype=bool)[order]
    extra = status if top_arr is None else np.array(
        [f"{s}; {'in' if t else 'not in'} the top-q set" for s, t in zip(status, top_arr)], dtype=object)
    fig = go.Figure(go.Bar(
        x=[f"#{i}" for i in order], y=v[order], marker_color=list(colors), customdata=extra,
        hovertemplate="channel %{x}<br>" + value_name + ": %{y:.4f}<br>%{customdata}<extra></extra>",
    ))
    n_kept = int(kept_arr.sum())
    fig.update_xaxes(showticklabels=len(v) <= 64, type="category")
    return _layout(fig, f"{cluster_name} at {layer}: {value_name} per channel ({n_kept}/{len(v)} kept, coloured)",
                   "channel (sorted by value)", f"{value_name} (activation units)", height=380)


# ------------------------------------------------------------------------------------- pruning
def per_cluster_accuracy_figure(cluster_names: Sequence[str], acc: Sequence[float | None],
                                base_acc: Sequence[float | None] | None, title: str) -> go.Figure:
    """Per-cluster accuracy (%) of the subgraphs, with the unpruned tail's accuracy as markers."""
    names = [str(n) for n in cluster_names]
    fig = go.Figure(go.Bar(
        x=names, y=[np.nan if a is None else a for a in acc], name="subgraph",
        marker_color=cluster_colors(len(names)),
        hovertemplate="%{x}<br>subgraph accuracy: %{y:.2f} %<extra></extra>",
    ))
    if base_acc is not None:
        fig.add_trace(go.Scatter(
            x=names, y=[np.nan if a is None else a for a in base_acc], mode="markers", name="unpruned tail",
            marker={"symbol": "line-ew-open", "size": 18, "color": "black", "line": {"width": 2}},
            hovertemplate="%{x}<br>unpruned tail (same head): %{y:.2f} %<extra></extra>",
        ))
    fig.update_xaxes(tickangle=-45)
    fig.update_yaxes(range=[0, 100])
    return _layout(fig, title, "cluster", "accuracy within the cluster (%)", height=420)


def cost_bars_figure(cluster_names: Sequence[str], flops: Sequence[float], tail_flops: float, title: str) -> go.Figure:
    """Per-cluster subgraph FLOPs with the unpruned tail as a reference line."""
    names = [str(n) for n in cluster_names]
    ratios = [f / tail_flops if tail_flops else np.nan for f in flops]
    fig = go.Figure(go.Bar(
        x=names, y=[f / 1e6 for f in flops], marker_color=cluster_colors(len(names)), customdata=ratios,
        hovertemplate="%{x}<br>subgraph: %{y:.2f} MFLOPs per image<br>%{customdata:.1%} of the unpruned tail<extra></extra>",
        name="subgraph",
    ))
    fig.add_hline(y=tail_flops / 1e6, line={"dash": "dash", "color": "black"},
                  annotation_text="unpruned tail", annotation_position="top right")
    fig.update_xaxes(tickangle=-45)
    return _layout(fig, title, "cluster", "MFLOPs per image (2 x MACs)", height=380)


def tradeoff_figure(rows: Sequence[Mapping], title: str, x_key: str = "flops", y_key: str = "mean_acc",
                    group_key: str = "method", base_flops: float | None = None, base_acc: float | None = None,
                    highlight: Mapping | None = None, labels: Mapping[str, str] | None = None) -> go.Figure:
    """Accuracy vs expected FLOPs per score method (one line per method, sorted by FLOPs).

    ``rows``: dicts with ``group_key``, ``x_key`` (FLOPs per image), ``y_key`` (accuracy %), and
    optionally r_M / r_L for the hover. ``highlight``: one point (same keys) drawn as a star. The legend
    and hover name each method by ``labels`` (method -> label; default ``sinf_core.scores.SCORE_LABELS``,
    the labels of the app's select boxes), falling back to the method's own name."""
    if labels is None:
        from .scores import SCORE_LABELS as labels
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        if r.get(x_key) is None or r.get(y_key) is None:
            continue
        groups.setdefault(str(r[group_key]), []).append(r)
    fig = go.Figure()
    method_colors = {"dcs": _PALETTE[0]}
    others = [c for c in _PALETTE[:DISTINCT_CLUSTER_COLORS] if c != _PALETTE[0] and c != "#FB0D0D"]  # red: the star
    for i, (g, rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0] != "dcs", kv[0]))):
        rs = sorted(rs, key=lambda r: r[x_key])
        color = method_colors.get(g, others[i % len(others)])
        hover = [f"r_M={r.get('r_M', '?')}, r_L={r.get('r_L', '?')}" for r in rs]
        label = str(labels.get(g, g))
        fig.add_trace(go.Scatter(
            x=[r[x_key] / 1e6 for r in rs], y=[r[y_key] for r in rs], mode="lines+markers", name=label,
            line={"color": color, "width": 3 if g == "dcs" else 1.5}, text=hover, meta=g,
            hovertemplate=label + "<br>%{text}<br>%{x:.2f} MFLOPs<br>accuracy %{y:.2f} %<extra></extra>",
        ))
    if base_flops is not None and base_acc is not None:
        fig.add_trace(go.Scatter(x=[base_flops / 1e6], y=[base_acc], mode="markers", name="unpruned",
                                 marker={"symbol": "diamond", "size": 12, "color": "black"},
                                 hovertemplate="unpruned<br>%{x:.2f} MFLOPs<br>accuracy %{y:.2f} %<extra></extra>"))
    if highlight is not None and highlight.get(x_key) is not None and highlight.get(y_key) is not None:
        fig.add_trace(go.Scatter(x=[highlight[x_key] / 1e6], y=[highlight[y_key]], mode="markers",
                                 name="your configuration",
                                 marker={"symbol": "star", "size": 16, "color": "#FB0D0D"},
                                 hovertemplate="your configuration<br>%{x:.2f} MFLOPs<br>accuracy %{y:.2f} %<extra></extra>"))
    return _layout(fig, title, "expected MFLOPs per image (2 x MACs)", "mean per-cluster accuracy (%)", height=440,
                   legend_title="score")


# ------------------------------------------------------------------------------- live inference
def probability_panels_figure(panels: Sequence[Mapping], title: str) -> go.Figure:
    """Panels of horizontal bars side by side in one figure (one chart to draw instead of several): each
    panel's ``top`` largest probabilities, largest on top, and a dashed line at its ``threshold`` (gamma or
    tau). Each panel: {"probs", "names", "title", "threshold" (or None), "colors" (or None), "top", "x_title"}."""
    from plotly.subplots import make_subplots

    if not panels:
        raise ValueError("a panels figure needs at least one panel")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p["title"] for p in panels],
                        horizontal_spacing=0.2)
    rows = 0
    for k, panel in enumerate(panels, start=1):
        p = np.asarray(panel["probs"], dtype=float)
        order = np.argsort(-p, kind="stable")[: int(panel.get("top", 10))][::-1]
        rows = max(rows, len(order))
        colors = panel.get("colors")
        fig.add_trace(go.Bar(x=p[order], y=[str(panel["names"][i]) for i in order], orientation="h", showlegend=False,
                             marker_color=[colors[i] for i in order] if colors is not None else "#2E91E5",
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=k)
        fig.update_xaxes(range=[0, 1], title_text=f"{panel.get('x_title', 'probability')} (0-1)", row=1, col=k)
        if panel.get("threshold") is not None:
            t = float(panel["threshold"])
            fig.add_vline(x=t, line={"dash": "dash", "color": "black"}, annotation_text=f"threshold {t:.2f}",
                          row=1, col=k)
    return _layout(fig, title, None, None, height=110 + 28 * rows)


def running_figure(n: Sequence[int], sinf: Sequence[float], base: Sequence[float], title: str, y_title: str) -> go.Figure:
    """Two running curves (SINF vs base) over the number of images processed."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(n), y=list(base), mode="lines+markers", name="base model",
                             line={"color": MODE_COLORS["base"]}, hovertemplate="%{x} images: %{y:.2f}<extra>base</extra>"))
    fig.add_trace(go.Scatter(x=list(n), y=list(sinf), mode="lines+markers", name="SINF",
                             line={"color": MODE_COLORS["sinf"]}, hovertemplate="%{x} images: %{y:.2f}<extra>SINF</extra>"))
    return _layout(fig, title, "test images processed (count)", y_title, height=320)


# ------------------------------------------------------------------------------ speed-up report
def pareto_front(x: Sequence[float], y: Sequence[float], x_better: str = "lower") -> np.ndarray:
    """Indices of the points no other point beats (x at least as good AND higher or equal y, one strictly;
    ``x_better`` 'lower' for costs, 'higher' for throughput), sorted by x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x_better == "higher":
        return pareto_front(-x, y)[::-1]
    keep = []
    for i in range(len(x)):
        dominated = np.any((x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i])))
        if not dominated:
            keep.append(i)
    keep = np.asarray(keep, dtype=int)
    return keep[np.argsort(x[keep], kind="stable")] if len(keep) else keep


def pareto_figure(points: Sequence[Mapping], x_key: str, x_title: str, title: str, y_key: str = "top1",
                  x_scale: float = 1.0, chosen: Mapping[str, Mapping] | None = None, x_better: str = "lower"
                  ) -> go.Figure:
    """Operating points (``points``: dicts with ``mode``, ``x_key``, ``y_key`` and optional settings)
    per mode, with each mode's Pareto front as a line, and the chosen point of each mode (``chosen``:
    mode -> dict with the same keys) as a large marker."""
    fig = go.Figure()
    by_mode: dict[str, list[Mapping]] = {}
    for p in points:
        if p.get(x_key) is None or p.get(y_key) is None:
            continue
        by_mode.setdefault(str(p.get("mode", "?")), []).append(p)
    for mode, ps in by_mode.items():
        xs = np.array([float(p[x_key]) * x_scale for p in ps])
        ys = np.array([float(p[y_key]) for p in ps])
        hover = [", ".join(f"{k}={p[k]}" for k in ("tap", "r_M", "r_L", "gamma", "tau") if k in p) for p in ps]
        color = MODE_COLORS.get(mode, "#778AAE")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{mode} points", marker={"color": color, "size": 6,
                                 "opacity": 0.45}, text=hover, legendgroup=mode, showlegend=False,
                                 hovertemplate=mode + "<br>%{text}<br>x=%{x:.3f}<br>top-1 %{y:.2f} %<extra></extra>"))
        front = pareto_front(xs, ys, x_better)
        if len(front):
            fig.add_trace(go.Scatter(x=xs[front], y=ys[front], mode="lines+markers", name=mode, legendgroup=mode,
                                     line={"color": color, "shape": "hv" if x_better == "lower" else "vh"}, marker={"color": color, "size": 7},
                                     text=[hover[i] for i in front],
                                     hovertemplate=mode + " (Pareto)<br>%{text}<br>x=%{x:.3f}<br>top-1 %{y:.2f} %<extra></extra>"))
    for mode, p in (chosen or {}).items():
        if p.get(x_key) is None or p.get(y_key) is None:
            continue
        fig.add_trace(go.Scatter(
            x=[float(p[x_key]) * x_scale], y=[float(p[y_key])], mode="markers+text", name=f"{mode} (chosen)",
            text=[mode], textposition="top center", legendgroup=mode, showlegend=False,
            marker={"symbol": "star" if mode != "base" else "diamond", "size": 15,
                    "color": MODE_COLORS.get(mode, "#778AAE"), "line": {"width": 1, "color": "black"}},
            hovertemplate=mode + " (chosen)<br>x=%{x:.3f}<br>top-1 %{y:.2f} %<extra></extra>",
        ))
    return _layout(fig, title, x_title, "top-1 accuracy (%)", height=460, legend_title="mode")


def mode_bars_figure(modes: Mapping[str, Mapping], key: str, title: str, y_title: str, scale: float = 1.0) -> go.Figure:
    """One bar per mode of ``modes[mode][key]`` (e.g. throughput), coloured per mode."""
    names = [m for m in modes if modes[m].get(key) is not None]
    vals = [float(modes[m][key]) * scale for m in names]
    fig = go.Figure(go.Bar(x=names, y=vals, marker_color=[MODE_COLORS.get(m, "#778AAE") for m in names],
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    return _layout(fig, title, "mode", y_title, height=340)


# ------------------------------------------------------------------------------------- diagram
def sinf_diagram_figure(stem: str = "shared stem", n_clusters: int = 20, cluster_names: Sequence[str] | None = None
                        ) -> go.Figure:
    """A picture of routed inference: input -> stem -> exit head / router -> one of K subgraphs or the
    unpruned tail -> class. Boxes are shapes; hovering a box explains it."""
    fig = go.Figure()
    boxes = [
        # (x0, y0, x1, y1, label, colour, explanation)
        (0.0, 0.42, 0.10, 0.58, "image", "#EEEEEE", "any image, resized to the model's input"),
        (0.15, 0.40, 0.33, 0.60, stem, "#D9E8F9", "the first layers of the trained network, run on every input"),
        (0.40, 0.70, 0.55, 0.86, "exit head", "#D5F0D5", "answers directly when its confidence >= tau"),
        (0.40, 0.40, 0.55, 0.60, "router", "#D9E8F9", "predicts the input's cluster; trusted when confidence >= gamma"),
        (0.40, 0.10, 0.55, 0.26, "(unsure)", "#F5EBD5", "router below gamma: fall back"),
        (0.62, 0.52, 0.84, 0.66, "subgraph of the cluster", "#D9E8F9",
         "a physically pruned copy of the rest of the network, keeping the filters that separate the cluster's classes"),
        (0.62, 0.10, 0.84, 0.26, "unpruned tail", "#F5EBD5", "the base network's own remaining layers"),
        (0.90, 0.42, 1.0, 0.58, "class", "#EEEEEE", "the fine class"),
    ]
    # the K subgraphs: a stack of cards in the cluster colours behind the subgraph box
    k = min(int(n_clusters), 6)
    for i in reversed(range(1, k)):
        dx, dy = 0.006 * i, 0.014 * i
        fig.add_shape(type="rect", x0=0.62 + dx, y0=0.52 + dy, x1=0.84 + dx, y1=0.66 + dy, fillcolor="white",
                      line={"color": cluster_color(i), "width": 2}, layer="below")
    for x0, y0, x1, y1, label, color, _ in boxes:
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, fillcolor=color, layer="below",
                      line={"color": cluster_color(0) if label.startswith("subgraph") else "#555",
                            "width": 2 if label.startswith("subgraph") else 1})
        fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=label, showarrow=False, font={"size": 13})
    arrows = [(0.10, 0.5, 0.15, 0.5), (0.33, 0.5, 0.40, 0.5), (0.33, 0.55, 0.40, 0.78), (0.55, 0.5, 0.62, 0.57),
              (0.475, 0.40, 0.475, 0.26), (0.55, 0.18, 0.62, 0.18), (0.84, 0.57, 0.90, 0.52),
              (0.84, 0.18, 0.90, 0.45), (0.95, 0.78, 0.95, 0.58)]
    fig.add_shape(type="line", x0=0.55, y0=0.78, x1=0.95, y1=0.78, line={"color": "#555", "width": 1.5})
    for x0, y0, x1, y1 in arrows:
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowsize=1, arrowwidth=1.5, arrowcolor="#555", text="")
    fig.add_annotation(x=0.73, y=0.47, text=f"one of {n_clusters} subgraphs, one per cluster", showarrow=False,
                       font={"size": 11, "color": "#555"})
    # invisible hover points
    fig.add_trace(go.Scatter(x=[(b[0] + b[2]) / 2 for b in boxes], y=[(b[1] + b[3]) / 2 for b in boxes],
                             mode="markers", marker={"size": 40, "opacity": 0}, text=[b[6] for b in boxes],
                             hovertemplate="%{text}<extra></extra>", showlegend=False))
    fig.update_xaxes(visible=False, range=[-0.01, 1.01])
    fig.update_yaxes(visible=False, range=[0.05, 0.9])
    fig.update_layout(title={"text": "How SINF answers one input", "x": 0.0}, height=300, template="plotly_white",
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, showlegend=False)
    return fig
