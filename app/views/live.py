"""Live inference: one image (test set or upload) through SINF and the base model, then a timed batch run.
Both run alike (BatchNorm folded, channels_last, pre-processing inside the timed region), interleaved, and
every speed is a median with its spread; the batch run's speed-up is the median of paired per-batch ratios."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from app import runtimes, state, studio, ui
from sinf_core import plots, tuning_plots
from sinf_core.engine import MODE_NAMES
from sinf_core.errors import SinfError
from sinf_core.timing import NOISY_SPREAD, paired_stream

st.title("Live inference")
st.markdown(
    "Per input: the **exit head** answers when its confidence is at least **tau**; otherwise the **router** sends "
    "it to its cluster's subgraph when its confidence is at least **gamma**; otherwise it **falls back** to the "
    "unpruned tail. The base model runs on the same input. Both are readied alike (BatchNorm folded into the "
    "convolutions, channels_last), both timings include the same pre-processing, and they are measured "
    "interleaved on this machine.")

src = state.source()
exp = ui.load_experiment(src)
h = state.hierarchy(src)
cfg = studio.config(src)
hd = studio.heads(src)
size = exp.image_size  # uploads are resized to the model's input
report = exp.report_data()
taps = studio.head_taps(src)

if not taps:
    ui.bundle_notice(src, "SINF's router (and exit head)")
    st.caption("Below, the base model's predictions still work.")
else:
    ui.operating_point_bar(src, cfg, "live")
    cfg = studio.config(src)
    tap = st.selectbox("The shared stem ends after", taps, index=taps.index(cfg["tap"]) if cfg["tap"] in taps else len(taps) - 1,
                       key=studio.widget_key(src, "tap_live"), help="taps with a trained route head in the bundle")
    if tap != cfg["tap"]:
        studio.set_config(src, {**cfg, "tap": tap})
        cfg = studio.config(src)
    with st.expander("Thresholds: gamma and tau, and what they give on calibration", expanded=False):
        if ui.ensure_scores(src, cfg["method"], "The calibration figures"):
            with ui.guard("Cannot compute the calibration figures"):
                ui.threshold_section(src, "live", curves=False)
                cfg = studio.config(src)
    prof = studio.tap_profile(src, cfg["tap"])
    st.caption(f"After {cfg['tap']} lie {100 * prof['flops_after']:.1f} % of the base model's FLOPs and "
               f"{100 * prof['time_after']:.1f} % of its measured time: all that exiting or routing there can save.")
    st.caption(f"Mode **{cfg['mode']}**, gamma {cfg['gamma']:.2f}, tau {cfg['tau']:.2f}; subgraphs: "
               f"{state.SCORE_LABELS.get(cfg['method'], cfg['method'])}, r_M {cfg['r_M']:g} -> r_L {cfg['r_L']:g}, "
               f"{len(cfg['overrides'])} per-cluster overrides (the Pruning page changes them).")

eng = None
if taps and (cfg["mode"] == "exit" or ui.ensure_scores(src, cfg["method"], "SINF's subgraphs")):
    with ui.guard("SINF is not available"):
        eng = studio.engine(src, cfg)

offered = runtimes.choices(str(exp.device))
backend = st.selectbox(
    "Runtime and precision (SINF and the base model both run on it)", offered, format_func=lambda b: b.label,
    key="live_backend", help="ONNX Runtime / OpenVINO run the configuration exported as ONNX pieces (int8: static "
    "quantization calibrated on the calibration split); the export is written once per configuration. Speeds are "
    "against the base model on the same runtime and precision; the batch run also shows PyTorch float32's base.")
run = runtimes.runners(src, cfg, runtimes.PYTORCH_FP32, eng)
if eng is not None and not backend.is_default:
    with ui.guard(f"SINF cannot run on {backend.label}"):
        run = runtimes.runners(src, cfg, backend, eng)
if run.backend != backend:
    st.caption(f"Running on {run.backend.label} instead.")


def ms(d: dict) -> str:
    return f"{d['median_ms']:.2f} ms (IQR {d['q25_ms']:.2f}-{d['q75_ms']:.2f})"


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
            image, true_label, caption = None, None, ""  # no prediction of an earlier image stays on screen
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
        with torch.inference_mode():
            base_logits = studio.base_predict(src)(x).float()
        base_pred = int(base_logits.argmax(1))
        # timed once per image, configuration and runtime (a rerun that changes none shows the same figures)
        tkey = ("one_image_timing", src.key, hash(x.numpy().tobytes()), studio.config_key(cfg), eng is None,
                run.backend)
        again = st.button("Time again", key="time_again", help="30 interleaved calls of each, batch of 1")
        if again or st.session_state.get("one_image_timing", (None,))[0] != tkey:
            st.session_state["one_image_timing"] = (tkey, studio.time_one_image(
                src, run.base, run.sinf if eng is not None else None, x))
        lat = st.session_state["one_image_timing"][1]
        if not run.backend.is_default:
            base_pred = int(runtimes.predictions(run.base(x))[0])
        cols = st.columns(2)
        verdict = "" if true_label is None else (" (correct)" if base_pred == true_label else " (wrong)")
        on = "" if run.backend.is_default else f" on {run.backend.label}"
        cols[1].metric(f"Base model{on}", h.class_names[base_pred] + verdict,
                       delta=f"{ms(lat['base'])}, batch of 1", delta_color="off", delta_arrow="off", border=True)
        if eng is not None:
            res = run.sinf(x)
            pred = int(res.pred[0])
            decided = MODE_NAMES[int(res.mode_per_sample[0])]
            verdict = "" if true_label is None else (" (correct)" if pred == true_label else " (wrong)")
            cols[0].metric(f"SINF ({decided}){on}", h.class_names[pred] + verdict, delta=f"{ms(lat['sinf'])}, batch of 1",
                           delta_color="off", delta_arrow="off", border=True)
            r = lat["ratio"]
            st.caption(f"Speed vs base on this image: **{r['median']:.2f}x** (paired over {r['n']} interleaved calls, "
                       f"IQR {r['q25']:.2f}-{r['q75']:.2f}x)"
                       + (" - within the noise: no difference can be claimed." if r["q25"] <= 1.0 <= r["q75"] else ".")
                       + (" The spread is too wide to trust this figure." if r["noisy"] else ""))
            route = int(res.route[0])
            if decided == "route":
                kept = studio.specs(src, cfg)[route].kept_counts()
                tot = {l.name: l.channels for l in exp.model.prunable_layers()}
                frac = sum(kept.values()) / max(1, sum(tot[k] for k in kept))
                st.markdown(f"Routed to {ui.cluster_chip(h.cluster_names[route], route)} with confidence "
                            f"{float(res.route_conf[0]):.2f} >= gamma {cfg['gamma']:.2f}; its subgraph keeps "
                            f"{100 * frac:.0f} % of the channels after {cfg['tap']}.", unsafe_allow_html=True)
            elif decided == "exit":
                st.markdown(f"Exited at {cfg['tap']}: exit confidence {float(res.exit_conf[0]):.2f} >= tau {cfg['tau']:.2f}.")
            else:
                why = (f"router confidence {float(res.route_conf[0]):.2f} < gamma {cfg['gamma']:.2f}"
                       if route >= 0 else "the router did not run" if cfg["mode"] == "exit" else "no subgraph for the route")
                st.markdown(f"Fell back to the unpruned tail ({why})"
                            + ("; the router's best guess was " + ui.cluster_chip(h.cluster_names[route], route)
                               if route >= 0 else "") + ". A fallback does strictly more work than the base model "
                            "(stem + heads + the same tail).", unsafe_allow_html=True)
            with torch.inference_mode():
                hs = studio.inference_base(src).forward_stem(
                    studio.prepare_images(x, src), exp.model.unit_index(cfg["tap"]))
                rh, eh = hd["route"].get(cfg["tap"]), hd["exit"].get(cfg["tap"])
                rp = rh.eval().proba(hs.contiguous())[0].numpy() if rh is not None else None
                ep = eh.eval().proba(hs.contiguous())[0].numpy() if eh is not None else None
    cl_colors = [plots.cluster_color(c) for c in h.cluster_of_class]
    panels = []  # one figure for the three: one chart for the browser to draw on every visit
    if eng is not None and rp is not None:
        panels.append({"probs": rp, "names": h.cluster_names, "title": "Router: clusters (calibrated)",
                       "threshold": cfg["gamma"] if cfg["mode"] != "exit" else None, "x_title": "router probability",
                       "colors": plots.cluster_colors(h.num_clusters), "top": 10})
    if eng is not None and ep is not None:
        panels.append({"probs": ep, "names": h.class_names, "title": "Exit head: classes (calibrated)",
                       "threshold": cfg["tau"] if cfg["mode"] != "sinf" else None, "x_title": "exit probability",
                       "colors": cl_colors, "top": 10})
    panels.append({"probs": torch.softmax(base_logits, 1)[0].numpy(), "names": h.class_names, "top": 5,
                   "title": "Base model: classes", "x_title": "softmax probability",
                   "colors": cl_colors})
    st.plotly_chart(plots.probability_panels_figure(
        panels, "What each part is sure of on this image (the base model in PyTorch float32)"), key="probability_fig")

# ------------------------------------------------------------------------------------ batch run
st.subheader("Batch run on the report split")
st.caption("Each batch goes through the base model and SINF back to back, in alternating order, twice over the "
           "stream (after one warm-up batch); the speed-up is the median of the per-batch paired ratios "
           f"(base time / SINF time), shown with its interquartile range and marked when that range exceeds "
           f"{100 * NOISY_SPREAD:.0f} % of the median.")
with st.form("batch_form"):
    n = st.slider("Test images", 50, min(5000, len(report)), min(2000, len(report)), 50, key="batch_n")
    bs = st.select_slider("Batch size", [1, 8, 32, 64, 128, 256], value=256, key="batch_bs")
    select = runtimes.selection_record(src) if run.backend.is_default else None
    with_select = select is not None and st.checkbox(
        f"Also time network selection (the benchmark's chain {' -> '.join(select['networks'])}, gate "
        f"{', '.join(f'{t:.2f}' for t in select['operating_point']['thresholds'])})", value=True, key="batch_select",
        help="each network answers what its calibrated confidence accepts; the rest goes on to the next (PyTorch "
             "float32, the chosen point of `sinf bench --chain`)")
    go = st.form_submit_button("Run", type="primary", key="batch_run", disabled=eng is None)
if go and eng is not None:
    idx = np.random.default_rng(0).permutation(len(report))[:n]
    imgs, labels = report.images[idx], report.labels[idx]
    batches = list(imgs.split(bs))
    fns = {"base": run.base, "sinf": run.sinf}
    if not run.backend.is_default:  # the PyTorch float32 base as well: what the runtime itself gives
        fns["pytorch"] = studio.base_predict(src)
    if with_select:
        with ui.guard("Network selection is not available"):
            fns["select"] = runtimes.selection_runner(src)
    bar = st.progress(0.0, text="timing ...")
    live = st.empty()

    def on_batch(done: int, total: int, part: dict) -> None:
        bar.progress(done / total, text=f"timed batch {done}/{total}")
        if "ratio" in part.get("sinf", {}):
            live.caption(f"so far: {part['sinf']['ratio']['median']:.2f}x base (median of {done} paired batches)")

    tp = paired_stream(fns, batches, "base", rounds=2, warmup=1, on_batch=on_batch, device=exp.device)
    bar.progress(1.0, text="accuracy ...")
    with torch.inference_mode():
        base_pred = torch.cat([runtimes.predictions(run.base(xb)) for xb in batches])
        results = [run.sinf(xb) for xb in batches]
        chained = [fns["select"](xb) for xb in batches] if "select" in fns else None
    sinf_pred = torch.cat([r.pred for r in results])
    counts = {k: sum(r.counts()[k] for r in results) for k in MODE_NAMES}
    bar.empty()
    live.empty()
    st.session_state["batch_result"] = {
        "n": n, "bs": bs, "mode": cfg["mode"], "gamma": cfg["gamma"], "tau": cfg["tau"], "tap": cfg["tap"],
        "base_top1": 100 * float((base_pred == labels).double().mean()),
        "sinf_top1": 100 * float((sinf_pred == labels).double().mean()), "counts": counts,
        "base_ips": tp["base"]["ips"], "sinf_ips": tp["sinf"]["ips"], "ratio": tp["sinf"]["ratio"],
        "ratios": [a / b for a, b in zip(tp["base"]["seconds"], tp["sinf"]["seconds"])],
        "at_point": studio.at_point(src, cfg) and run.backend.is_default, "backend": run.backend.label,
        **runtimes.batch_extras(tp, labels, chained, select)}
res = st.session_state.get("batch_result")
if res is not None:
    r = res["ratio"]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Base accuracy", f"{res['base_top1']:.2f} %", border=True)
    m2.metric(f"SINF accuracy ({res['mode']})", f"{res['sinf_top1']:.2f} %",
              delta=f"{res['sinf_top1'] - res['base_top1']:+.2f} points", border=True)
    on = "" if res.get("pytorch") is None else f" on {res['backend']}"
    m3.metric(f"SINF speed vs base (paired, median){on}", f"{r['median']:.2f}x",
              delta=f"IQR {r['q25']:.2f}-{r['q75']:.2f}x" + (" - too noisy to trust" if r["noisy"] else ""),
              delta_color="off", delta_arrow="off", border=True,
              help=f"batch size {res['bs']}, {res['n']} images, wall clock, router and heads included")
    m4.metric("Images per second (SINF / base)", f"{res['sinf_ips']:,.0f} / {res['base_ips']:,.0f}", border=True)
    c = res["counts"]
    st.caption(f"Mode {res['mode']} at {res['tap']}, gamma {res['gamma']:.2f}, tau {res['tau']:.2f}: exit {c['exit']}, "
               f"routed {c['route']}, fell back {c['fallback']} of {res['n']}.")
    pt = res.get("pytorch")
    if pt is not None:
        st.caption(f"Against the PyTorch float32 base ({pt['ips']:,.0f} images/s), same batches, paired: "
                   f"{res['backend']} base **{pt['base']['median']:.2f}x** (IQR {pt['base']['q25']:.2f}-"
                   f"{pt['base']['q75']:.2f}x), SINF on it **{pt['sinf']['median']:.2f}x** (IQR {pt['sinf']['q25']:.2f}-"
                   f"{pt['sinf']['q75']:.2f}x).")
    bench_point = (state.bench(src) or {}).get(res["mode"]) if res["at_point"] else None
    ref = bench_point.get("throughput_ratio") if isinstance(bench_point, dict) else None
    if ref is not None:
        st.caption(f"`sinf bench` measured **{ref:.2f}x** for this operating point (IQR "
                   f"{bench_point.get('throughput_ratio_q25_q75', ['?', '?'])[0]}-"
                   f"{bench_point.get('throughput_ratio_q25_q75', ['?', '?'])[1]}x; a pool of 2,048 calibration "
                   f"images grouped by route before batching, on the machine that built the bundle).")
    st.plotly_chart(tuning_plots.paired_ratio_figure(res["ratios"], r["median"], "Paired speed ratio per batch", ref),
                    key="ratio_fig")
    sel = res.get("select")
    if sel is not None:
        q = sel["ratio"]
        s1, s2, s3 = st.columns(3)
        s1.metric("Network selection accuracy", f"{sel['top1']:.2f} %", delta=f"{sel['top1'] - res['base_top1']:+.2f} points",
                  border=True)
        s2.metric("Network selection speed vs base (paired, median)", f"{q['median']:.2f}x",
                  delta=f"IQR {q['q25']:.2f}-{q['q75']:.2f}x" + (" - too noisy to trust" if q["noisy"] else ""),
                  delta_color="off", delta_arrow="off", border=True, help="every network that ran is timed")
        s3.metric("Answered by each network", " / ".join(f"{100 * a:.0f} %" for a in sel["answered"]),
                  delta=" -> ".join(sel["networks"]), delta_color="off", delta_arrow="off", border=True)
        if sel.get("bench_ratio"):
            st.caption(f"`sinf bench` measured {sel['bench_ratio']:.2f}x for this chain on the machine that built the bundle.")
