"""Speed-up report: the benchmark table, the Pareto fronts, the hardware, and exports."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import loaders, session, ui
from sinf_core import report
from sinf_core.errors import SinfError

st.title("Speed-up report")
st.markdown(
    "Base model, SINF, early exit, the cascade, and a statically pruned network of the same expected FLOPs, measured "
    "side by side in one run by `sinf bench`: top-1 on the report split, latency at batch size 1 (median), "
    "throughput at a large batch, FLOPs and parameters. Each mode's point is chosen on the calibration split.")

ui.style()
src = session.source()
bench, origin = None, "the bundle"
raw = loaders.bench(src)
if raw is not None:
    try:
        bench = report.load_bench(raw)
    except SinfError as exc:
        st.error(f"The bundle's benchmark (bench.json) cannot be read: {exc}")
found = loaders.runtime_results(src)
for rec in found:
    if rec["problem"]:
        st.warning(f"{rec['file']} in the bundle is left out: {rec['problem']}")
runs = {"PyTorch float32 (bench.json)": {"bench": bench, "file": None, "stale": False}} if bench is not None else {}
runs.update({f"{r['bench']['backend']} {r['bench']['precision']} ({r['file']})": r for r in found if r["bench"]})
pick = st.radio("Runtime and precision", list(runs), horizontal=True, key="report_runtime",
                help="`sinf bench MODEL --backend B --precision P` saves its result in the bundle's runtime/ "
                     "folder") if len(runs) > 1 else next(iter(runs), None)
if pick is not None and runs[pick]["file"] is not None:
    bench, origin = runs[pick]["bench"], f"the bundle's {runs[pick]['file']}"
    if runs[pick]["stale"]:
        st.warning("This runtime benchmark ran the operating points of an earlier benchmark of this bundle; "
                   "run it again for the current ones.")
with st.expander("Load another benchmark file (`sinf bench MODEL --json` output)", expanded=bench is None):
    up = st.file_uploader("Benchmark JSON", type=["json"], key="bench_upload")
    if up is not None:
        try:
            loaded = report.load_bench(json.loads(up.getvalue().decode("utf-8")))
        except ValueError as exc:  # not UTF-8 or not JSON
            st.error(f"{up.name} is not a JSON file: {exc}")
        except SinfError as exc:
            st.error(f"{up.name} is not a SINF benchmark: {exc}")
        else:
            bench, origin = loaded, up.name

if bench is None:
    if raw is None:
        ui.bundle_notice(src, "The benchmark")
    st.code(f"sinf bench {src.model} --json > bench.json   # then load it above", language="bash")
    st.stop()

try:
    rows = report.bench_table(bench)
except SinfError as exc:
    st.error(f"The benchmark from {origin} cannot be read: {exc}")
    st.stop()

title = report.report_title(bench)
st.subheader(title)
mismatch = report.model_warning(bench, src.model)
if mismatch:
    st.warning(mismatch)
st.caption(f"{report.info_text(bench)}. From {origin}. Hardware: {report.hardware_text(bench)}")
by_mode = {r["mode"]: r for r in rows}
cols = st.columns(max(1, len(rows) - 1))
for col, r in zip(cols, [r for r in rows if r["mode"] != "base"]):
    tr = r.get("throughput_ratio")
    col.metric(f"{r['mode']}: throughput vs base", "n/a" if tr is None else f"{tr:.2f}x",
               delta=None if r.get("delta_top1") is None else f"{r['delta_top1']:+.2f} points top-1",
               delta_color="normal", border=True, help=report.MODE_LABELS.get(r["mode"], r["mode"]))

table = pd.DataFrame([{label: report.fmt(k, r.get(k)) for k, label in report.table_columns(bench)} for r in rows])
st.dataframe(table, hide_index=True, key="bench_table", column_config=ui.full_width_columns(table))
target = report.target_text(bench)
if target:
    (st.success if bench["target"].get("met") else st.warning)(target)
ops = report.operating_points(bench)
if ops:
    with st.expander("Chosen operating points (picked on the calibration split)"):
        ops_table = pd.DataFrame(ops)
        st.dataframe(ops_table, hide_index=True, key="ops_table", column_config=ui.full_width_columns(ops_table))
st.caption("Speed-up at batch size 1 = base latency / mode latency; throughput ratio = mode / base images per second. "
           "FLOPs per image = 2 x multiply-accumulates, expected over the routes taken.")

figs = report.figures(bench)
cs = st.columns(2)
for i, fig in enumerate(figs[:2]):
    cs[i].plotly_chart(fig, key=f"bench_fig_{i}")
st.plotly_chart(figs[2], key="bench_fig_2")
cs = st.columns(2)
for i, fig in enumerate(figs[3:5]):
    cs[i].plotly_chart(fig, key=f"bench_fig_{i + 3}")

st.subheader("Export")
st.caption(f"Titled and named after the benchmark's model, {report.bench_info(bench)['model']}.")
e1, e2, e3 = st.columns(3)
e1.download_button("Standalone HTML report", lambda: report.to_html(bench, title, f"source: {origin}"),
                   file_name=report.export_name(bench, "report", "html"), mime="text/html", key="dl_html")
e2.download_button("Table as CSV", report.to_csv(bench), file_name=report.export_name(bench, "bench", "csv"),
                   mime="text/csv", key="dl_csv")
e3.download_button("Benchmark as JSON", report.to_json(bench, {"model": report.bench_info(bench)["model"]}),
                   file_name=report.export_name(bench, "bench", "json"), mime="application/json", key="dl_json")
