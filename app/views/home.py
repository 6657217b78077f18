"""Home: choose the model / bundle, headline numbers, how SINF works, the data set and its clusters."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import loaders, session, ui
from sinf_core import plots, report
from sinf_core.errors import SinfError

HEADLINE_BUDGET = 1.0  # points of top-1 below the PyTorch float32 base the headline allows
st.title("SINF Studio")
st.markdown(
    "**Semantic Inference** makes a trained CNN cheaper per input without retraining it: the classes are grouped "
    "into semantic clusters, a shared stem runs on every input, a small router picks the input's cluster, and "
    "only that cluster's physically pruned subgraph runs after it. Unsure inputs fall back to the full network.")

src = session.source()

# ------------------------------------------------------------------------------------ models + source picker
table = pd.DataFrame(session.model_table())
if len(table):
    names = list(table["model"])
    pick = st.segmented_control("Model", names, default=src.model if src.model in names else None, key="model_switch",
                                help="switch the whole app to another model and its default bundle")
    if pick and pick != src.model:
        session.set_source(session.Source(pick, None, None, str(session.default_bundle_dir(pick))))
        st.rerun()
    st.dataframe(table, hide_index=True, key="models_table", column_config={
        "published top-1 (%)": st.column_config.NumberColumn(format="%.2f"),
        "measured top-1 (%, report split)": st.column_config.NumberColumn(format="%.2f"),
        "parameters": st.column_config.NumberColumn(format="%d")})
    st.caption("Measured top-1: the base model on the report split, from the benchmark in the model's bundle.")
with st.expander("Another model, weights file or bundle folder", expanded=False):
    with st.form("source_form"):
        models = session.selectable_models()
        idx = models.index(src.model) if src.model in models else 0
        model = st.selectbox("Model", models, index=idx, help="registered models with weights")
        folder = st.text_input("Bundle folder", value=src.bundle,
                               help="where `sinf build` wrote (or will write) the analysis of this model; "
                                    "left unchanged when switching models, the new model's default folder is used")
        if st.form_submit_button("Use this model"):
            folder = folder.strip()
            bundle_dir = str(session.default_bundle_dir(model)) if model != src.model and folder == src.bundle else folder
            session.set_source(session.Source(model, src.checkpoint if model == src.model else None,
                                              src.dataset if model == src.model else None, bundle_dir))
            st.rerun()

exp = ui.load_experiment(src)
facts = loaders.model_facts(src)
info = loaders.data_info(src)
bench = loaders.bench(src)

# ------------------------------------------------------------------------------------ headline cards
st.subheader(f"{src.model} on {info['dataset']}")
rows = None
if bench is not None:
    try:
        rows = {r["mode"]: r for r in report.bench_table(bench)}
    except SinfError as exc:
        st.warning(f"The bundle's benchmark cannot be read: {exc}")
c1, c2, c3, c4 = st.columns(4)
if rows:
    base, sinf = rows["base"], rows.get("sinf", {})
    c1.metric("Base top-1 (report split)", ui.percent(base.get("top1")), border=True)
    c2.metric("SINF top-1", ui.percent(sinf.get("top1")),
              delta=None if sinf.get("delta_top1") is None else f"{sinf['delta_top1']:+.2f} points", border=True)
    tr = sinf.get("throughput_ratio")
    c3.metric("SINF throughput vs base", "n/a" if tr is None else f"{tr:.2f}x", border=True,
              help="images per second at a large batch, router included, measured side by side")
    c4.metric("SINF parameters (all subgraphs + heads)", plots.fmt_count(sinf.get("params")),
              delta=f"base {plots.fmt_count(base.get('params'))}", delta_color="off", delta_arrow="off", border=True)
    budget = float((bench.get("options") or {}).get("budget", 2.0))
    best = max((r for r in rows.values() if r["mode"] != "base" and r.get("throughput_ratio")
                and r.get("delta_top1") is not None and r["delta_top1"] >= -budget),
               key=lambda r: r["throughput_ratio"], default=None)
    if best is not None and best["mode"] != "sinf":
        st.caption(f"Fastest mode within the {budget:g}-point accuracy budget: **{best['mode']}** at "
                   f"{best['throughput_ratio']:.2f}x base throughput, {best['delta_top1']:+.2f} points top-1. "
                   "Details on the Speed-up report page.")
    runs = {"PyTorch float32": bench}
    runs.update({f"{r['bench']['backend']} {r['bench']['precision']}": r["bench"]
                 for r in loaders.runtime_results(src) if r["bench"] and not r["stale"]})
    head = report.best_combination(runs, HEADLINE_BUDGET) if len(runs) > 1 else None
    if head is not None:
        adds = (f"; on {head['label']} no SINF mode stays within {HEADLINE_BUDGET:g} point of that runtime's own base"
                if head["sinf_mode"] is None else
            f"; on {head['label']}, SINF's best mode ({head['sinf_mode']}) runs **{head['sinf_vs_base']:.2f}x** "
            f"that runtime's own base ({head['sinf_top1_vs_base']:+.2f} points)")
        what = "the base model" if head["mode"] == "base" else head["mode"]
        st.info(f"Best measured: **{what} on {head['label']}**, **{head['vs_reference']:.2f}x** the PyTorch "
                f"float32 base's throughput at {head['top1_vs_reference']:+.2f} points top-1 (within "
                f"{HEADLINE_BUDGET:g} point){adds}. Every runtime is on the Speed-up report page.")
else:
    pub = facts.get("published_top1")
    c1.metric("Base top-1 (published)", ui.percent(pub), border=True)
    c2.metric("Base parameters", plots.fmt_count(facts["params"]), border=True)
    c3.metric("Base FLOPs per image", plots.fmt_count(facts["flops"]), border=True, help=plots.FLOPS_NOTE)
    c4.metric("Clusters", len(info["cluster_names"]), border=True)

# ------------------------------------------------------------------------------------ bundle status
problem = loaders.bundle_problem(src)
b = None if problem else loaders.bundle(src)
if problem:
    st.warning(f"The bundle at `{src.bundle}` cannot be used: {problem}")
elif b is None or bench is None:
    st.info("SINF's measured numbers (router, subgraphs, benchmark) come from the analysis bundle, which is not "
            "complete yet. The Clusters, Filter overlap and Pruning pages work without it (they compute what they "
            "need once and cache it). Build the bundle with:")
    st.code(loaders.build_command(src), language="bash")
    if st.button("Build the bundle now", help="runs the whole pipeline here, with progress; this can take a while"):
        with ui.guard("Build failed"):
            loaders.build_bundle(src)
            st.success("Bundle built.")
            st.rerun()
if b is not None:
    with st.expander("What the bundle holds"):
        steps = b.manifest.get("steps", {})
        st.dataframe(pd.DataFrame([{"step": k, "files": ", ".join(v.get("files", {})), "seconds": v.get("seconds"),
                                    "written": v.get("written")} for k, v in steps.items()]), hide_index=True)
        st.caption(f"format {b.manifest.get('format_version')}, sinf {b.manifest.get('sinf_version')}, "
                   f"model sha256 {str(b.manifest.get('model_sha256'))[:12]}...")

# ------------------------------------------------------------------------------------ how it works
st.plotly_chart(plots.sinf_diagram_figure(f"shared stem (to {loaders.default_tap(src)})",
                                          len(info["cluster_names"])), key="diagram")
st.markdown(
    "- **Stem**: the first layers of the trained network, unchanged, run on every input.\n"
    "- **Router**: a small head on the stem's output predicts the cluster; it is trusted when its calibrated "
    "confidence is at least **gamma**. An optional **exit head** answers directly when its confidence is at "
    "least **tau**.\n"
    "- **Subgraphs**: one per cluster, a physically sliced copy of the rest of the network keeping the filters "
    "that best separate the cluster's own classes (scored by DCS). Everything else falls back to the unpruned "
    "tail.\n"
    "- **Honest numbers**: thresholds and operating points are chosen on a calibration split and reported on a "
    "disjoint report split.")

# ------------------------------------------------------------------------------------ data set
st.subheader("The data set and its clusters")
sp = info.get("splits", {})
h = loaders.hierarchy(src)
d1, d2, d3, d4 = st.columns(4)
d1.metric("Classes", h.num_classes)
d2.metric("Clusters", h.num_clusters)
d3.metric("Training images", f"{len(exp.train):,}")
d4.metric("Test images", f"{len(exp.test):,}")
st.caption(f"Splits ({sp.get('protocol', '?')} protocol): fit {sp.get('fit', '?'):,} images for statistics, scores "
           f"and router training; calibration {sp.get('calib', '?'):,} ({sp.get('calib_source', '?')}) for every "
           f"decision that looks at outputs; report {sp.get('report', '?'):,} (test) for the published numbers."
           if isinstance(sp.get('fit'), int) else "")
members = pd.DataFrame([{"cluster": name, "classes": ", ".join(h.class_names[c] for c in h.members(m)),
                         "size": len(h.members(m))} for m, name in enumerate(h.cluster_names)])
st.dataframe(members, hide_index=True, column_config={"size": st.column_config.NumberColumn("classes (count)")})
