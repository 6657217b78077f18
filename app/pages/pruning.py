"""Pruning: global and per-cluster (r_M, r_L), the filter score, and what the subgraphs cost and keep."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, ui
from sinf_core import plots
from sinf_core.subgraph import DEFAULT_BN_SAMPLES

st.title("Pruning")
st.markdown(
    "Each cluster's subgraph removes a fraction r of the channels of every prunable layer after the stem, "
    "growing linearly from **r_M** at the first pruned layer to **r_L** at the last one, and keeps the channels "
    "the chosen **filter score** ranks highest for that cluster. Accuracy is measured on the **calibration** "
    "split with every input sent to its own cluster's subgraph (oracle routing), next to the unpruned tail "
    "restricted to the same classes.")

src = state.source()
exp = ui.load_experiment(src)
h = state.hierarchy(src)
cfg = state.config(src)
rtr = state.router(src)
methods = state.score_methods()

with st.form("pruning_form"):
    c1, c2, c3 = st.columns([1.2, 1, 1])
    method = c1.selectbox("Filter score", methods, index=methods.index(cfg["method"]) if cfg["method"] in methods else 0,
                          format_func=lambda m: state.SCORE_LABELS.get(m, m), key="method")
    r_M = c2.slider("r_M: removed fraction at the first pruned layer", 0.0, 0.95, float(cfg["r_M"]), 0.01, key="r_M")
    r_L = c3.slider("r_L: removed fraction at the last layer", 0.0, 0.95, float(cfg["r_L"]), 0.01, key="r_L")
    if rtr is None:
        taps = state.candidate_taps(src)
        cur = cfg.get("tap") or state.default_tap(src)
        tap = st.selectbox("The shared stem ends after", taps, index=taps.index(cur) if cur in taps else len(taps) - 1,
                           help="without a trained router (build the bundle), choose where the stem ends", key="tap")
    else:
        tap = rtr.tap_
        st.caption(f"The shared stem ends after **{tap}**, the router's attachment point (calibration route "
                   f"accuracy {100 * rtr.calib_accuracy_[tap]:.1f} %).")
    fill = st.toggle("Mean replacement: a removed channel is replaced by its mean activation on the cluster's fit "
                     "images (folded into the next layer's bias), not by zero", value=cfg.get("fill", "mean") == "mean",
                     key="fill")
    bn = st.toggle("Re-estimate BatchNorm statistics: each subgraph's BatchNorms get the base model's statistics "
                   f"corrected by the shift its pruning causes on {DEFAULT_BN_SAMPLES} fit images of its cluster "
                   "(no weight changes)", value=bool(cfg.get("bn", True)), key="bn")
    with st.expander("Per-cluster overrides (tick a cluster to give it its own r_M / r_L)"):
        overrides = {}
        for m, name in enumerate(h.cluster_names):
            own = cfg["overrides"].get(name)
            a, b, c = st.columns([1.2, 1, 1])
            on = a.checkbox(name, value=own is not None, key=f"ov_on_{m}")
            rm = b.slider("r_M", 0.0, 0.95, float(own[0]) if own else float(cfg["r_M"]), 0.01, key=f"ov_rm_{m}",
                          label_visibility="collapsed")
            rl = c.slider("r_L", 0.0, 0.95, float(own[1]) if own else float(cfg["r_L"]), 0.01, key=f"ov_rl_{m}",
                          label_visibility="collapsed")
            if on:
                overrides[name] = [round(rm, 4), round(rl, 4)]
    submitted = st.form_submit_button("Apply", type="primary", key="apply")

if submitted:
    cfg = {**cfg, "method": method, "r_M": round(r_M, 4), "r_L": round(r_L, 4), "overrides": overrides,
           "fill": "mean" if fill else "zero", "bn": bool(bn)}
    if rtr is None:
        cfg["tap"] = tap
    state.set_config(src, cfg)
tap = rtr.tap_ if rtr is not None else (cfg.get("tap") or state.default_tap(src))
if not ui.ensure_scores(src, cfg["method"], "Pruning"):
    st.stop()

with ui.guard("Cannot evaluate this configuration"):
    ev = state.evaluate_config(src, cfg, tap)
    rows = ev["clusters"]
    dist = state.route_distribution(src, tap, float(cfg["gamma"]), float(cfg["tau"]))
    cost = state.expected_cost(ev, dist, state.head_flops(src, tap, with_exit=float(cfg["tau"]) < 1.0) if dist else 0)
    facts = state.model_facts(src)

    mean_acc, base_acc = ev["mean"]["accuracy"], ev["mean"].get("base_accuracy")
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Mean per-cluster accuracy (calibration)", ui.percent(mean_acc),
              delta=None if base_acc is None else f"{mean_acc - base_acc:+.2f} points vs unpruned", border=True)
    k2.metric("Parameters per subgraph (mean, with stem)", plots.fmt_count(ev["mean"]["params_with_stem"]),
              delta=f"{100 * (ev['mean']['params_with_stem'] / facts['params'] - 1):+.1f} % vs base",
              delta_color="inverse", border=True)
    k3.metric("FLOPs per subgraph (mean, with stem)", plots.fmt_count(ev["mean"]["flops_with_stem"]),
              delta=f"{100 * (ev['mean']['flops_with_stem'] / facts['flops'] - 1):+.1f} % vs base",
              delta_color="inverse", border=True, help=plots.FLOPS_NOTE)
    k4.metric("Expected FLOPs per input", plots.fmt_count(cost["flops"]),
              delta=f"{100 * (cost['ratio'] - 1):+.1f} % vs base", delta_color="inverse", border=True,
              help=("stem + router" + (" + exit head" if float(cfg["tau"]) < 1 else "")
                    + " + sum over clusters of P(route) x subgraph + P(fallback) x unpruned tail, with the router's "
                    f"routes on the calibration split at gamma={cfg['gamma']}"
                    if not cost["oracle"] else
                    "stem + sum over clusters of (cluster frequency) x subgraph: oracle routing, since the bundle has no "
                    "router yet (router cost not included)"))
    if cost["oracle"]:
        st.caption("Expected cost assumes oracle routing (no router in the bundle yet).")
    else:
        st.caption(f"With the router at gamma = {cfg['gamma']:.2f}"
                   + (f" and the exit head at tau = {cfg['tau']:.2f}" if float(cfg["tau"]) < 1 else "")
                   + f": {100 * cost['p_fallback']:.1f} % of calibration inputs fall back to the unpruned tail"
                   + (f", {100 * cost['p_exit']:.1f} % exit early" if float(cfg["tau"]) < 1 else "") + ".")

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
    f2.plotly_chart(plots.cost_bars_figure([r["cluster"] for r in rows], [r["flops"] for r in rows], cost["tail"],
                                           f"Subgraph cost after {tap}"), key="cost_fig")

    # -------------------------------------------------------------------- comparison with the baselines
    st.subheader("DCS against the other filter scores")
    g = state.grid(src)
    if g:
        calib = [r for r in g if r.get("split", "calib") == "calib"] or g
        st.plotly_chart(plots.tradeoff_figure(
            calib, "Mean per-cluster accuracy vs FLOPs on the calibration split (oracle routing)",
            base_flops=None, base_acc=base_acc,
            highlight={"flops": ev["mean"]["flops_with_stem"], "mean_acc": mean_acc}), key="grid_fig")
        grid_fill = next((r.get("fill") for r in calib if r.get("fill")), "zero")
        st.caption("Each line is one filter score over the (r_M, r_L) grid of `sinf build` (removed channels "
                   f"{'replaced by their mean' if grid_fill == 'mean' else 'set to zero'}); the star is the "
                   "configuration above.")
    else:
        ui.bundle_notice(src, "The comparison over the (r_M, r_L) grid for every score")

    # -------------------------------------------------------------------- save
    st.subheader("Save")
    st.caption("Stores this configuration (score, r_M, r_L, overrides, gamma, tau) as config.json in the bundle; "
               "Live inference uses it.")
    if st.button("Save configuration to the bundle", key="save"):
        with ui.guard("Cannot save"):
            path = state.save_config(src, cfg)
            st.success(f"Saved to {path}")
