"""SINF Studio: explore filter overlap, tune pruning per cluster, run routed inference live, show the speed-up.

Run with ``streamlit run app/streamlit_app.py`` (``make run``). Pages live in ``app/views/``, not in
``pages/``: until a first session has run this script, Streamlit's legacy discovery would serve a
``pages/`` folder by itself, and a first deep link such as /pruning would run the page without this
script. Everything the pages load comes through ``app/loaders.py`` (this session's source:
``app/session.py``); all computation is in ``sinf_core``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import session, ui  # noqa: E402

PAGES = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="SINF Studio", page_icon=":material/alt_route:", layout="wide")

nav = st.navigation([
    st.Page(PAGES / "home.py", title="Home", icon=":material/home:", default=True),
    st.Page(PAGES / "clusters.py", title="Clusters", icon=":material/bubble_chart:"),
    st.Page(PAGES / "overlap.py", title="Filter overlap", icon=":material/grid_on:"),
    st.Page(PAGES / "pruning.py", title="Pruning", icon=":material/content_cut:"),
    st.Page(PAGES / "live.py", title="Live inference", icon=":material/bolt:"),
    st.Page(PAGES / "report.py", title="Speed-up report", icon=":material/speed:"),
])

with st.sidebar:
    st.markdown("**SINF Studio**: semantic inference, one routed subgraph per cluster.")
    ui.source_caption(session.source())
    timing = st.empty()

ui.style()
t0 = time.perf_counter()
try:
    nav.run()
finally:
    dt = time.perf_counter() - t0
    times = st.session_state.setdefault("sinf_page_times", [])
    times.append((nav.title, round(dt, 3)))
    timing.caption(f"{nav.title} rendered in {dt:.2f} s")
