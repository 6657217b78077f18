"""Small UI helpers shared by the pages: error boxes, messages for missing parts, formatting, the page style."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import streamlit as st

from sinf_core.errors import SinfError
from sinf_core.plots import cluster_color, fmt_count, text_color  # noqa: F401  (re-exported for pages)
from sinf_core.scores import SCORE_LABELS

from . import state


# Streamlit cuts a long st.metric label with "..." (one line, overflow hidden): let labels wrap instead.
# The label is [data-testid=stMetricLabel] > div > [data-testid=stMarkdownContainer].stMarkdownEllipsis > p.
STYLE = """<style>
[data-testid="stMetricLabel"] { height: auto; min-height: 0; }
[data-testid="stMetricLabel"] div, [data-testid="stMetricLabel"] p, [data-testid="stMetricLabel"] span,
[data-testid="stMetricLabel"] .stMarkdownEllipsis, [data-testid="stMetricLabel"] [data-testid="stMarkdownContainer"] {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
  overflow-wrap: break-word; word-break: normal; min-width: 0; }
</style>"""


def style() -> None:
    """Inject the app's CSS (wrapping metric labels). Call it once per run, e.g. at the top of a page or in
    the app shell; st.html of styles only takes no space on the page."""
    st.html(STYLE)


def full_width_columns(table: Any, char_px: int = 8, pad_px: int = 28, max_px: int = 420) -> dict:
    """``column_config`` for ``st.dataframe`` giving each column of ``table`` (a DataFrame) a pixel width
    that fits its full header and its longest cell, so no column name is cut."""
    config = {}
    for col in table.columns:
        longest = max([len(str(col))] + [len(str(v)) for v in table[col].tolist()])
        config[col] = st.column_config.Column(str(col), width=min(max_px, pad_px + char_px * longest))
    return config


@contextlib.contextmanager
def guard(what: str = "") -> Iterator[None]:
    """Show a ``SinfError`` as an error box (no traceback) and let the rest of the page run."""
    try:
        yield
    except SinfError as exc:
        st.error(f"{what + ': ' if what else ''}{exc}")


def load_experiment(src: state.Source):
    """The experiment, or a clear message and ``st.stop()`` when the model or the data cannot be loaded."""
    try:
        return state.experiment(src)
    except SinfError as exc:
        st.error(f"Cannot load {src.model}: {exc}")
        st.info("Choose another model or data folder on the Home page, or set SINF_DATA_DIR / SINF_WEIGHTS_DIR.")
        st.stop()


def bundle_notice(src: state.Source, what: str) -> None:
    """Explain that ``what`` needs the bundle, with the command that builds it."""
    problem = state.bundle_problem(src)
    if problem:
        st.warning(f"The bundle cannot be used: {problem}")
    else:
        st.info(f"{what} comes from the analysis bundle, which is not built yet for {src.model}. "
                f"Build it on the Home page or in a terminal:")
    st.code(state.build_command(src), language="bash")


def percent(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f} %"


def cluster_chip(name: str, index: int) -> str:
    """Markdown/HTML of a cluster name in its colour."""
    bg = cluster_color(index)
    return (f"<span style='background:{bg};color:{text_color(bg)};padding:1px 7px;border-radius:8px;"
            f"font-size:0.9em'>{name}</span>")


def source_caption(src: state.Source) -> None:
    st.caption(f"Model **{src.model}**" + (f" (weights {src.checkpoint})" if src.checkpoint else "")
               + (f", data {src.dataset}" if src.dataset else "") + f"  \nBundle `{src.bundle}`")


def ensure_scores(src: state.Source, method: str, what: str = "This") -> bool:
    """True when the ``method`` filter scores are at hand; otherwise explain and offer to compute them
    (a pass over the fit split that can take minutes on a large model), returning True once done."""
    if state.scores_ready(src, method):
        return True
    label = SCORE_LABELS.get(method, method)
    st.info(f"{what} needs the {label} filter scores of every cluster, which the bundle does not hold yet. "
            f"`{state.build_command(src)}` computes them with everything else; or compute them here now "
            "(one pass over part of the fit split: seconds for a small model, minutes for ResNet-56 on a CPU).")
    if st.button(f"Compute the {label} scores now", key=f"compute_scores_{method}"):
        with guard("Cannot compute the scores"):
            state.scores(src, method)
            return True
    return False


# ------------------------------------------------------------------------------------ operating point + thresholds
def operating_point_bar(src: state.Source, cfg: dict, page: str) -> None:
    """The mode (one choice across pages: changing it moves to the benchmark's point of that mode) and a
    one-click way back to the benchmark's point after edits."""
    from . import studio

    points = studio.operating_points(src)
    hd = studio.heads(src)
    modes = [m for m in ("sinf", "cascade", "exit") if m in points or (m == "sinf" and hd["route"])
             or (m != "sinf" and hd["exit"] and hd["route"])]
    if not modes:
        return
    mode = cfg.get("mode") if cfg.get("mode") in modes else modes[0]
    a, b = st.columns([3, 1])
    chosen = a.radio("Mode", modes, index=modes.index(mode), horizontal=True, key=studio.widget_key(src, f"mode_{page}"),
                     format_func=studio.MODE_LABELS.get)
    if chosen != cfg.get("mode"):
        studio.set_config(src, studio.point_config(src, chosen, cfg), external=True)
        st.rerun()
    p = points.get(mode)
    if p is not None:
        at = studio.at_point(src, cfg)
        if b.button("Back to the benchmark's point", key=f"reset_point_{page}", disabled=at,
                    help="the operating point `sinf bench` chose on calibration for this mode"):
            studio.set_config(src, studio.point_config(src, mode, cfg), external=True)
            st.rerun()
        from sinf_core.report import point_text

        st.caption(("Showing" if at else "Edited from") + f" the benchmark's {mode} point, chosen on calibration: "
                   + point_text(p) + f" (calibration top-1 {p['top1']:.2f} %; see the Speed-up report).")
    else:
        st.caption(f"The bundle has no benchmark point for {mode}: `{state.build_command(src)}` makes one.")


def tap_summary(src: state.Source, cfg: dict, ev: dict) -> None:
    """Why pruning after this tap saves what it saves: the share of FLOPs and of measured time after
    it, and the prunable layers there with what each cluster keeps."""
    from . import studio

    tap = cfg["tap"]
    model = state.experiment(src).model
    prof = studio.tap_profile(src, tap)
    after = [l for l in model.prunable_layers() if l.unit > model.unit_index(tap)]
    kept = [r["kept"] for r in ev["clusters"]]
    per_layer = ", ".join(
        f"{l.name} ({min(k.get(l.name, l.channels) for k in kept)}-{max(k.get(l.name, l.channels) for k in kept)}"
        f" of {l.channels})" for l in after) or "none"
    st.info(f"After **{tap}** lie **{100 * prof['flops_after']:.1f} %** of the base model's FLOPs and "
            f"**{100 * prof['time_after']:.1f} %** of its measured time (BatchNorm folded, channels_last, batch 256: "
            f"{prof['full_ms']:.0f} ms in all, {prof['stem_ms']:.0f} ms to the tap). That share is all any subgraph "
            f"can save. Prunable layers after the tap, channels kept per cluster: {per_layer}."
            + (" Only these layers are cut: the other convolutions feed residual additions whose channels every "
               "block shares, so they are kept." if len(after) < 4 else ""))


def threshold_section(src: state.Source, page: str, curves: bool = True) -> None:
    """gamma / tau sliders (one state across pages) with the calibration figures at the current setting
    and the curves against each threshold (from the cached calibration outputs: instant). As
    ``threshold_fragment``, moving a slider reruns only this section."""
    from sinf_core import tuning_plots
    from sinf_core.tuning import point_at

    from . import studio

    cfg = studio.config(src)
    mode = cfg.get("mode") or "sinf"
    hd = studio.heads(src)
    has_exit = cfg["tap"] in hd["exit"]
    c1, c2 = st.columns(2)
    gamma = c1.slider("gamma: router confidence needed to route", 0.0, 1.0, float(cfg["gamma"]), 0.01,
                      key=studio.widget_key(src, f"gamma_{page}"), disabled=mode == "exit",
                      help="1 = never route (everything falls back)")
    tau = c2.slider("tau: exit confidence needed to answer early", 0.0, 1.0, float(cfg["tau"]) if has_exit else 1.0, 0.01,
                    key=studio.widget_key(src, f"tau_{page}"), disabled=not has_exit or mode == "sinf",
                    help="1 = never exit")
    if (round(gamma, 4), round(tau, 4)) != (round(float(cfg["gamma"]), 4), round(float(cfg["tau"]), 4)):
        cfg = {**cfg, "gamma": round(gamma, 4), "tau": round(tau, 4)}
        studio.set_config(src, cfg)
    pts = studio.curves(src, cfg)
    out = studio.calibration_outputs(src, cfg["tap"])
    base_flops = state.model_facts(src)["flops"]
    here = point_at(pts, mode, cfg["gamma"] if mode != "exit" else None, cfg["tau"] if mode != "sinf" else None)
    chosen = studio.operating_points(src).get(mode)
    if here is not None:
        st.caption(f"On calibration at gamma {float(cfg['gamma']):.2f} and tau {float(cfg['tau']):.2f} ({mode}):")
        m1, m2, m3, m4 = st.columns(4)
        m1.metric(f"{mode} top-1 (calibration)", percent(here["top1"]),
                  delta=f"{here['top1'] - out.base_top1:+.2f} points vs base", border=True)
        m2.metric("Exit / routed / fall back", f"{100 * here['exit_rate']:.0f} / {100 * here['route_rate']:.0f} / "
                  f"{100 * here['fallback_rate']:.0f} %", border=True)
        m3.metric("Expected FLOPs per input (router and heads included)", fmt_count(here["flops"]),
                  delta=f"{100 * (here['flops'] / base_flops - 1):+.1f} % vs base", delta_color="inverse", border=True,
                  help="stem + heads + each path's cost weighted by how often calibration inputs take it")
        m4.metric("Standard error of the difference", f"{here['top1_se']:.2f} points", border=True,
                  help="paired over the calibration images; the benchmark keeps a point only if top-1 minus "
                       "1.645 of these stays within its budget")
    if not curves:
        st.caption("The curves against gamma and tau are on the Pruning page (same thresholds: one state).")
        return
    show = [v for v in ("gamma", "tau") if (v == "gamma" and mode != "exit") or (v == "tau" and mode != "sinf" and has_exit)]
    cols = st.columns(len(show)) if show else []
    for col, vary in zip(cols, show):
        col.plotly_chart(tuning_plots.threshold_figure(
            pts, mode, vary, {"gamma": cfg["gamma"], "tau": cfg["tau"]}, out.base_top1, base_flops, chosen,
            title=f"{mode} against {vary}" + (f" (tau = {cfg['tau']:.2f})" if vary == "gamma" and mode == "cascade"
                                              else f" (gamma = {cfg['gamma']:.2f})" if vary == "tau" and mode == "cascade"
                                              else "")), key=f"curve_{vary}_{page}")


threshold_fragment = st.fragment(threshold_section)  # Pruning: a slider move redraws only the thresholds
