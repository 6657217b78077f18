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
