"""This browser session's source (which model, weights, data and bundle the app shows) and the models to
choose from.

The app is configured by environment variables (all optional):
``SINF_APP_MODEL`` (default ``cifar100_resnet56``), ``SINF_APP_CHECKPOINT`` (weights file),
``SINF_APP_DATASET`` (data set name or image-folder path), ``SINF_APP_BUNDLE`` (bundle folder), plus the
library's ``SINF_DATA_DIR`` / ``SINF_WEIGHTS_DIR`` / ``SINF_CACHE_DIR``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from sinf_core.artifacts import BENCH, MANIFEST
from sinf_core.data import Hierarchy
from sinf_core.models import MODELS

REPO = Path(__file__).resolve().parents[1]
ENV_MODEL, ENV_CHECKPOINT, ENV_DATASET, ENV_BUNDLE = (
    "SINF_APP_MODEL", "SINF_APP_CHECKPOINT", "SINF_APP_DATASET", "SINF_APP_BUNDLE")
DEFAULT_MODEL = "cifar100_resnet56"


@dataclass(frozen=True)
class Source:
    """Which model, weights, data and bundle the app shows."""

    model: str
    checkpoint: str | None = None
    dataset: str | None = None
    bundle: str = ""

    @property
    def key(self) -> tuple:
        return (self.model, self.checkpoint, self.dataset, self.bundle)


def default_bundle_dir(model: str) -> Path:
    """``$SINF_CACHE_DIR/bundles/<model>`` (where ``sinf build`` writes), seeded from the bundle shipped
    in ``assets/bundles/<model>`` when there is one and the cache has none yet."""
    from sinf_core.pipeline import default_bundle_dir as build_default

    return build_default(model)


def env_source() -> Source:
    model = os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    return Source(
        model=model,
        checkpoint=os.environ.get(ENV_CHECKPOINT) or None,
        dataset=os.environ.get(ENV_DATASET) or None,
        bundle=os.environ.get(ENV_BUNDLE) or str(default_bundle_dir(model)),
    )


def source() -> Source:
    """The source of this browser session (set on the Home page), by default from the environment."""
    src = st.session_state.get("sinf_source")
    if src is None:
        src = env_source()
        st.session_state["sinf_source"] = src
    return src


def set_source(src: Source) -> None:
    st.session_state["sinf_source"] = src


def selectable_models() -> list[str]:
    """Registered models that can load weights (public release or shipped file)."""
    from sinf_core.models.registry import ASSETS_DIR

    out = []
    for name, e in MODELS.items():
        if e.weights.url or (e.weights.file and (ASSETS_DIR / e.weights.file).is_file()):
            out.append(name)
    cur = os.environ.get(ENV_MODEL)
    if cur and cur not in out and cur in MODELS:
        out.insert(0, cur)
    return out


@st.cache_data(show_spinner=False, ttl=60)
def model_table() -> list[dict]:
    """One row per selectable model: its published top-1 (the release's, else its model card's), the
    measured base top-1 of its default bundle's benchmark (report split) and whether that bundle exists."""
    from sinf_core.models.registry import describe_models

    rows = []
    for r in describe_models():
        if r["name"] not in selectable_models():
            continue
        from sinf_core.pipeline import default_bundle_dir as cache_bundle_dir, shipped_bundle_dir

        folder = cache_bundle_dir(r["name"], seed_from_assets=False)  # read, do not copy, a model not shown
        if not (folder / MANIFEST).is_file():
            folder = shipped_bundle_dir(r["name"])
        measured = None
        try:
            bench = json.loads((folder / BENCH).read_text()) if (folder / BENCH).is_file() else None
            measured = (bench or {}).get("base", {}).get("top1")
        except (OSError, ValueError, AttributeError):
            measured = None
        pub = r["published_top1"] if r["published_top1"] is not None else r["card_top1"]
        rows.append({"model": r["name"], "published top-1 (%)": pub,
                     "published by": "release" if r["published_top1"] is not None else "model card" if pub else None,
                     "measured top-1 (%, report split)": measured, "bundle": (folder / MANIFEST).is_file(),
                     "parameters": r["parameters"], "description": r["description"]})
    return rows


def cluster_ratios(cfg: dict, h: Hierarchy) -> dict[int, tuple[float, float]]:
    """(r_M, r_L) per cluster index: the cluster's override, else the global pair."""
    out = {}
    for m, name in enumerate(h.cluster_names):
        o = cfg.get("overrides", {}).get(name)
        out[m] = (float(o[0]), float(o[1])) if o else (float(cfg["r_M"]), float(cfg["r_L"]))
    return out
