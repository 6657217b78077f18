"""Live inference: one image (test set or upload) through SINF and the base model, then a batch run."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st
import torch

from app import state, ui
from sinf_core import plots
from sinf_core.data import normalise
from sinf_core.engine import MODE_NAMES
from sinf_core.errors import SinfError

st.title("Live inference")
st.markdown(
    "Per input: the **exit head** answers when its confidence is at least **tau**; otherwise the **router** sends "
    "it to its cluster's subgraph when its confidence is at least **gamma**; otherwise it **falls back** to the "
    "unpruned tail. The base model runs on the same input for comparison; timings are wall clock on this machine.")

src = state.source()
exp = ui.load_experiment(src)
h = state.hierarchy(src)
cfg = state.config(src)
rtr, ext = state.router(src), state.exit_heads(src)
size = int(exp.train.images.shape[-1])
report = exp.report_data()

if rtr is None:
    ui.bundle_notice(src, "SINF's router (and exit head)")
    st.caption("Below, the base model's predictions still work.")

# ------------------------------------------------------------------------------------ settings
has_exit = ext is not None and rtr is not None and rtr.tap_ in ext.heads_
modes = ["sinf"] + (["cascade", "exit"] if has_exit else [])
c1, c2, c3 = st.columns([1.2, 1, 1])
mode = c1.radio("Mode", modes, horizontal=True, key="mode", disabled=rtr is None,
                format_func={"sinf": "SINF (route / fall back)", "cascade": "cascade (exit, route, fall back)",
                             "exit": "early exit only"}.get)
gamma = c2.slider("gamma: router confidence needed to route", 0.0, 1.0, float(cfg["gamma"]), 0.01, key="gamma",
                  disabled=rtr is None or mode == "exit")
tau = c3.slider("tau: exit confidence needed to answer early", 0.0, 1.0, float(cfg["tau"]) if has_exit else 1.0, 0.01,
                key="tau", disabled=not has_exit or mode == "sinf")
if rtr is not None:
    st.caption(f"Subgraphs from the pruning configuration: {state.SCORE_LABELS.get(cfg['method'], cfg['method'])}, "
               f"r_M = {cfg['r_M']}, r_L = {cfg['r_L']}, {len(cfg['overrides'])} per-cluster overrides "
               "(change them on the Pruning page).")

eng = None
if rtr is not None and (mode == "exit" or ui.ensure_scores(src, cfg["method"], "SINF's subgraphs")):
    with ui.guard("SINF is not available"):
        eng = state.engine(src, cfg, mode, gamma, tau)

# ------------------------------------------------------------------------------------ one image
st.subheader("One image")
pick, upload_tab = st.tabs(["From the test set", "Upload your own"])
image, true_label, caption = None, None, ""
with pick:
    a, b = st.columns([2, 1])
    choices = ["any class"] + list(h.class_names)
    cls = a.selectbox("Class", choices, key="pick_class")
    pool = np.arange(len(report)) if cls == "any class" else np.flatnonzero(report.labels.numpy() == h.class_names.index(cls))
    if "pick_seed" not in st.session_state:
        st.session_state["pick_seed"] = 0
    if b.button("Another image", key="another"):
        st.session_state["pick_seed"] += 1
    if len(pool) == 0:
        st.warning("No report-split image of that class.")
    else:
        i = int(np.random.default_rng(st.session_state["pick_seed"]).choice(pool))
        image, true_label = report.images[i], int(report.labels[i])
        caption = f"report-split image #{i}: {h.class_names[true_label]}"
with upload_tab:
    up = st.file_uploader("An image (PNG, JPEG, GIF, BMP, WebP; any size or colour mode)",
                          type=["png", "jpg", "jpeg", "gif", "bmp", "webp"], key="upload")
    if up is not None:
        try:
            dec = state.decode_upload(up.getvalue(), size)
        except SinfError as exc:
            st.error(f"Cannot use {up.name}: {exc}")
        else:
            image, true_label, caption = dec.image, None, f"{up.name} ({dec.width}x{dec.height}, {dec.mode})"
            for note in dec.notes:
                st.caption(note)

if image is not None:
    x = image.unsqueeze(0)
    left, right = st.columns([1, 3])
    with left:
        big = torch.nn.functional.interpolate(x.float(), scale_factor=max(1, 160 // size), mode="nearest")
        st.image(big[0].permute(1, 2, 0).clamp(0, 255).byte().numpy(), caption=caption)
    with right:
        xb = normalise(x, exp.train.mean, exp.train.std)
        with torch.inference_mode():
            base_logits = exp.model(xb)
        base_pred = int(base_logits.argmax(1))
        fast_base = state.inference_base(src)
        base_ms = state.time_call(lambda: fast_base(xb.contiguous(memory_format=torch.channels_last)))
        cols = st.columns(2)
        verdict = "" if true_label is None else (" (correct)" if base_pred == true_label else " (wrong)")
        cols[1].metric("Base model", h.class_names[base_pred] + verdict, delta=f"{base_ms:.2f} ms (batch of 1)", delta_color="off",
                       delta_arrow="off",
                       border=True)
        if eng is not None:
            res = eng.run(x)
            sinf_ms = state.time_call(lambda: eng.run(x))
            pred = int(res.pred[0])
            decided = MODE_NAMES[int(res.mode_per_sample[0])]
            verdict = "" if true_label is None else (" (correct)" if pred == true_label else " (wrong)")
            cols[0].metric(f"SINF ({decided})", h.class_names[pred] + verdict, delta=f"{sinf_ms:.2f} ms (batch of 1)",
                           delta_color="off", delta_arrow="off", border=True)
            route = int(res.route[0])
            if decided == "route":
                kept = state.specs(src, cfg, rtr.tap_)[route].kept_counts()
                tot = {l.name: l.channels for l in exp.model.prunable_layers()}
                frac = sum(kept.values()) / max(1, sum(tot[k] for k in kept))
                st.markdown(f"Routed to {ui.cluster_chip(h.cluster_names[route], route)} with confidence "
                            f"{float(res.route_conf[0]):.2f} >= gamma {gamma:.2f}; its subgraph keeps "
                            f"{100 * frac:.0f} % of the channels after {rtr.tap_}.", unsafe_allow_html=True)
            elif decided == "exit":
                st.markdown(f"Exited at {rtr.tap_}: exit confidence {float(res.exit_conf[0]):.2f} >= tau {tau:.2f}.")
            else:
                why = (f"router confidence {float(res.route_conf[0]):.2f} < gamma {gamma:.2f}"
                       if route >= 0 else "no subgraph for the route")
                st.markdown(f"Fell back to the unpruned tail ({why}); the router's best guess was "
                            + (ui.cluster_chip(h.cluster_names[route], route) if route >= 0 else "none") + ".",
                            unsafe_allow_html=True)
            with torch.inference_mode():
                hs = exp.model.forward_stem(xb, rtr.tap_)
                rp = rtr.predict_proba(hs)[0].numpy()
                ep = ext.predict_proba(hs, rtr.tap_)[0].numpy() if has_exit else None
            p1, p2 = st.columns(2)
            p1.plotly_chart(plots.probability_bars_figure(
                rp, h.cluster_names, "Route probabilities (calibrated)", threshold=gamma if mode != "exit" else None,
                colors=plots.cluster_colors(h.num_clusters), x_title="router probability"), key="route_fig")
            if ep is not None:
                cl_colors = [plots.cluster_color(c) for c in h.cluster_of_class]
                p2.plotly_chart(plots.probability_bars_figure(
                    ep, h.class_names, "Exit head: top classes (calibrated)", threshold=tau if mode != "sinf" else None,
                    colors=cl_colors, x_title="exit probability"), key="exit_fig")
        base_p = torch.softmax(base_logits, 1)[0].numpy()
        st.plotly_chart(plots.probability_bars_figure(
            base_p, h.class_names, "Base model: top classes", colors=[plots.cluster_color(c) for c in h.cluster_of_class],
            x_title="softmax probability", top=5), key="base_fig")

# ------------------------------------------------------------------------------------ batch run
st.subheader("Batch run on the report split")
with st.form("batch_form"):
    n = st.slider("Test images", 50, min(5000, len(report)), min(500, len(report)), 50, key="batch_n")
    bs = st.select_slider("Batch size", [1, 8, 32, 64, 128, 256], value=64, key="batch_bs")
    go = st.form_submit_button("Run", type="primary", key="batch_run")
if go:
    idx = np.random.default_rng(0).permutation(len(report))[:n]
    imgs, labels = report.images[idx], report.labels[idx]
    bar = st.progress(0.0, text="running ...")
    live = st.empty()
    t_sinf = t_base = 0.0
    ok_sinf = ok_base = 0
    counts = {m: 0 for m in MODE_NAMES}
    curve = {"n": [], "sinf": [], "base": [], "sinf_ips": [], "base_ips": []}
    done = 0
    with torch.inference_mode():
        for s in range(0, n, bs):
            xb_u8, yb = imgs[s:s + bs], labels[s:s + bs]
            t0 = time.perf_counter()
            xb = normalise(xb_u8, exp.train.mean, exp.train.std)
            pb = exp.model(xb).argmax(1)
            t_base += time.perf_counter() - t0
            ok_base += int((pb == yb).sum())
            if eng is not None:
                t0 = time.perf_counter()
                r = eng.run(xb_u8)
                t_sinf += time.perf_counter() - t0
                ok_sinf += int((r.pred == yb).sum())
                for k, v in r.counts().items():
                    counts[k] += v
            done += len(yb)
            curve["n"].append(done)
            curve["base"].append(100 * ok_base / done)
            curve["sinf"].append(100 * ok_sinf / done if eng is not None else float("nan"))
            curve["base_ips"].append(done / t_base)
            curve["sinf_ips"].append(done / t_sinf if t_sinf else float("nan"))
            bar.progress(done / n, text=f"{done}/{n} images")
            live.markdown(
                f"**Base**: {100 * ok_base / done:.1f} % correct, {done / t_base:,.0f} images/s"
                + (f"  \n**SINF ({mode})**: {100 * ok_sinf / done:.1f} % correct, {done / t_sinf:,.0f} images/s "
                   f"({(done / t_sinf) / (done / t_base):.2f}x base); exit {counts['exit']}, routed {counts['route']}, "
                   f"fell back {counts['fallback']}" if eng is not None else ""))
    bar.empty()
    st.session_state["batch_result"] = {"curve": curve, "counts": counts, "n": n, "bs": bs, "mode": mode}
res = st.session_state.get("batch_result")
if res is not None:
    c = res["curve"]
    m1, m2, m3 = st.columns(3)
    m1.metric("Base accuracy", f"{c['base'][-1]:.2f} %", border=True)
    m2.metric(f"SINF accuracy ({res['mode']})", "n/a" if eng is None else f"{c['sinf'][-1]:.2f} %",
              delta=None if eng is None else f"{c['sinf'][-1] - c['base'][-1]:+.2f} points", border=True)
    m3.metric("Images per second (SINF / base)",
              f"{c['sinf_ips'][-1]:,.0f} / {c['base_ips'][-1]:,.0f}" if eng is not None else f"- / {c['base_ips'][-1]:,.0f}",
              border=True, help=f"batch size {res['bs']}, wall clock, router and heads included")
    f1, f2 = st.columns(2)
    f1.plotly_chart(plots.running_figure(c["n"], c["sinf"], c["base"], "Running accuracy", "top-1 accuracy (%)"),
                    key="run_acc")
    f2.plotly_chart(plots.running_figure(c["n"], c["sinf_ips"], c["base_ips"], "Running throughput",
                                         "images per second"), key="run_ips")
