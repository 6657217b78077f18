"""Pruning: the operating point (tap, r_M, r_L, score, thresholds), what the subgraphs cost and keep, and
how accuracy, routes and cost move with gamma / tau. Everything runs on the calibration outputs at the
tap (stored in the bundle), so a change answers in seconds."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, studio, ui
from sinf_core import plots
from sinf_core.bench import expected_flops
from sinf_core.config import DEFAULT_FILL, RATIO_RANGE
from sinf_core.subgraph import DEFAULT_BN_SAMPLES

st.title("Pruning")
st.markdown(
    "Each cluster's subgraph removes a fraction r of the channels of every prunable layer after the stem, "
    "growing linearly from **r_M** at the first pruned layer to **r_L** at the last one, and keeps the channels "
    "the chosen **filter score** ranks highest for that cluster. Everything below is measured on the "
    "**calibration** split: per-cluster accuracy with every input sent to its own cluster's subgraph (oracle "
    "routing), and, with the router and exit head, what the routed model answers at each gamma / tau.")

src = state.source()
exp = ui.load_experiment(src)
h = state.hierarchy(src)
cfg = studio.config(src)
points = studio.operating_points(src)
hd = studio.heads(src)
taps = studio.head_taps(src) or state.candidate_taps(src)
methods = state.score_methods()
wk = lambda name: studio.widget_key(src, name)  # noqa: E731  (keys that follow outside changes)

# ------------------------------------------------------------------------------------ operating point
ui.operating_point_bar(src, cfg, "pruning")
cfg = studio.config(src)

chosen = st.multiselect("Clusters with their own r_M / r_L (their sliders appear in the overrides below)",
                        list(h.cluster_names), default=list(cfg["overrides"]), key=wk("ov_clusters"),
                        help="the other clusters follow the global r_M / r_L")
with st.form("pruning_form"):
    c0, c1, c2, c3 = st.columns([1, 1.2, 1, 1])
    tap = c0.selectbox("The shared stem ends after", taps, index=taps.index(cfg["tap"]) if cfg["tap"] in taps else len(taps) - 1,
                       key=wk("tap"), help="taps with a trained route head (and exit head) in the bundle")
    method = c1.selectbox("Filter score", methods, index=methods.index(cfg["method"]) if cfg["method"] in methods else 0,
                          format_func=lambda m: state.SCORE_LABELS.get(m, m), key=wk("method"))
    r_M = c2.slider("r_M: removed fraction at the first pruned layer", *RATIO_RANGE, float(cfg["r_M"]), 0.01, key=wk("r_M"))
    r_L = c3.slider("r_L: removed fraction at the last layer", *RATIO_RANGE, float(cfg["r_L"]), 0.01, key=wk("r_L"))
    fill = st.toggle("Mean replacement: a removed channel is replaced by its mean activation on the cluster's fit "
                     "images (folded into the next layer's bias), not by zero", value=cfg.get("fill", DEFAULT_FILL) == "mean",
                     key=wk("fill"))
    bn = st.toggle("Re-estimate BatchNorm statistics: each subgraph's BatchNorms get the base model's statistics "
                   f"corrected by the shift its pruning causes on {DEFAULT_BN_SAMPLES} fit images of its cluster "
                   "(no weight changes)", value=bool(cfg.get("bn", True)), key=wk("bn"))
    with st.expander("Per-cluster overrides: give chosen clusters their own r_M / r_L",
                     expanded=bool(chosen)):
        overrides = {}
        for name in chosen:
            m = h.cluster_names.index(name)
            own = cfg["overrides"].get(name) or [cfg["r_M"], cfg["r_L"]]  # a newly chosen cluster starts at the global pair
            a, b, c = st.columns([1.2, 1, 1])
            a.markdown(ui.cluster_chip(name, m), unsafe_allow_html=True)
            rm = b.slider(f"r_M of {name}", *RATIO_RANGE, float(own[0]), 0.01, key=wk(f"ov_rm_{m}"))
            rl = c.slider(f"r_L of {name}", *RATIO_RANGE, float(own[1]), 0.01, key=wk(f"ov_rl_{m}"))
            overrides[name] = [round(rm, 4), round(rl, 4)]
    submitted = st.form_submit_button("Apply", type="primary", key="apply")

if submitted:
    cfg = {**cfg, "tap": tap, "method": method, "r_M": round(r_M, 4), "r_L": round(r_L, 4), "overrides": overrides,
           "fill": "mean" if fill else "zero", "bn": bool(bn)}
    if cfg != studio.config(src):
        studio.set_config(src, cfg)
        st.rerun()  # the operating-point bar above is drawn again with the new configuration
if not ui.ensure_scores(src, cfg["method"], "Pruning"):
    st.stop()
tap = cfg["tap"]

with ui.guard("Cannot evaluate this configuration"):
    ev = studio.evaluation(src, cfg)
    rows = ev["clusters"]
    facts = state.model_facts(src)
    ui.tap_summary(src, cfg, ev)

    mean_acc, base_acc = ev["mean"]["accuracy"], ev["mean"].get("base_accuracy")
    st.caption(f"Subgraphs evaluated: {state.SCORE_LABELS.get(cfg['method'], cfg['method'])} at {tap}, "
               f"r_M {float(cfg['r_M']):.2f} -> r_L {float(cfg['r_L']):.2f}, {len(cfg['overrides'])} overrides, "
               f"on {ev['n']:,} calibration images.")
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Mean per-cluster accuracy (calibration, oracle routing)", ui.percent(mean_acc),
              delta=None if base_acc is None else f"{mean_acc - base_acc:+.2f} points vs unpruned", border=True)
    k2.metric("Parameters per subgraph (mean, with stem)", plots.fmt_count(ev["mean"]["params_with_stem"]),
              delta=f"{100 * (ev['mean']['params_with_stem'] / facts['params'] - 1):+.1f} % vs base",
              delta_color="inverse", border=True)
    k3.metric("FLOPs per subgraph (mean, with stem)", plots.fmt_count(ev["mean"]["flops_with_stem"]),
              delta=f"{100 * (ev['mean']['flops_with_stem'] / facts['flops'] - 1):+.1f} % vs base",
              delta_color="inverse", border=True, help=plots.FLOPS_NOTE)

    oracle = expected_flops(ev["stem"][tap]["flops"], ev["tail"][tap]["flops"], [r["flops"] for r in rows],
                            [r["n"] / max(1, ev["n"]) for r in rows], 0.0)
    k4.metric("Expected FLOPs per input (oracle routing)", plots.fmt_count(oracle),
              delta=f"{100 * (oracle / facts['flops'] - 1):+.1f} % vs base", delta_color="inverse", border=True,
              help="stem + sum over clusters of (cluster frequency on calibration) x subgraph: every input routed to "
                   "its own cluster, no heads. With the router, the threshold section below gives the real figure.")

    ratios = state.cluster_ratios(cfg, h)
    table = pd.DataFrame([{
        "cluster": r["cluster"], "r_M": ratios[r["index"]][0], "r_L": ratios[r["index"]][1], "images": r["n"],
        "accuracy (%)": r["accuracy"], "unpruned (%)": r.get("base_accuracy"),
        "change (points)": None if r["accuracy"] is None or r.get("base_accuracy") is None
        else r["accuracy"] - r["base_accuracy"],
        "parameters": r["params"], "MFLOPs": r["flops"] / 1e6, "FLOPs vs tail": r["flop_ratio"],
    } for r in rows])
    st.dataframe(table, hide_index=True, key="cluster_table", column_config={
        "accuracy (%)": st.column_config.NumberColumn(format="%.2f"),
        "unpruned (%)": st.column_config.NumberColumn(format="%.2f"),
        "change (points)": st.column_config.NumberColumn(format="%+.2f"),
        "MFLOPs": st.column_config.NumberColumn(format="%.2f"),
        "FLOPs vs tail": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
    })
    f1, f2 = st.columns(2)
    f1.plotly_chart(plots.per_cluster_accuracy_figure(
        [r["cluster"] for r in rows], [r["accuracy"] for r in rows], [r.get("base_accuracy") for r in rows],
        f"Per-cluster accuracy, {state.SCORE_LABELS.get(cfg['method'], cfg['method'])}"), key="acc_fig")
    f2.plotly_chart(plots.cost_bars_figure([r["cluster"] for r in rows], [r["flops"] for r in rows],
                                           next(iter(ev["tail"].values()))["flops"], f"Subgraph cost after {tap}"),
                    key="cost_fig")

    # -------------------------------------------------------------------- thresholds
    st.subheader("Thresholds: gamma and tau")
    if tap not in hd["route"]:
        ui.bundle_notice(src, f"A route head at {tap}")
    else:
        ui.threshold_fragment(src, "pruning")
        cfg = studio.config(src)

    # -------------------------------------------------------------------- comparison with the baselines
    st.subheader("DCS against the other filter scores")
    g = state.grid(src)
    g_calib = [r for r in (g or []) if r.get("split", "calib") == "calib" and r.get("tap", tap) == tap]
    if g_calib:
        st.plotly_chart(plots.tradeoff_figure(
            g_calib, f"Mean per-cluster accuracy vs FLOPs on the calibration split (oracle routing, stem to {tap})",
            base_flops=None, base_acc=base_acc,
            highlight={"flops": ev["mean"]["flops_with_stem"], "mean_acc": mean_acc}), key="grid_fig")
        grid_fill = next((r.get("fill") for r in g_calib if r.get("fill")), DEFAULT_FILL)
        st.caption("Each line is one filter score over the (r_M, r_L) grid of `sinf build` (removed channels "
                   f"{'replaced by their mean' if grid_fill == 'mean' else 'set to zero'}); the star is the "
                   "configuration above.")
    elif g:
        st.caption(f"The build's comparison grid was computed at {', '.join(sorted({r.get('tap', '?') for r in g}))}, "
                   f"not at {tap}.")
    else:
        ui.bundle_notice(src, "The comparison over the (r_M, r_L) grid for every score")

    # -------------------------------------------------------------------- save
    st.subheader("Save")
    st.caption("Stores this configuration (mode, tap, score, r_M, r_L, overrides, gamma, tau) as config.json in the "
               "bundle; every page opens on it.")
    if st.button("Save configuration to the bundle", key="save"):
        with ui.guard("Cannot save"):
            path = studio.save_config(src, studio.config(src))
            st.success(f"Saved to {path}")
