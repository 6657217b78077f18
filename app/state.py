"""SINF Studio's one loader: every page gets its model, data, bundle artefacts and derived tables here.

What a page needs comes from the bundle (``sinf build`` writes it; ``Bundle.open(path).json(name)`` /
``.tensors(name)``) when the bundle holds it, and otherwise from a direct library call (statistics,
clusters, overlap, filter scores, subgraph evaluation) so the analysis pages also work before a bundle
exists. Parts only a build produces (router / exit heads, the operating-point grid, the benchmark) are
``None`` when missing and the page says which command makes them.

Caching: models and data sets are ``st.cache_resource``; small JSON tables are ``st.cache_data``;
long computations that show a progress bar go through ``memo`` (a process-wide store under
``st.cache_resource``), because a progress bar must be drawn by the script thread while the work runs,
which Streamlit's caches would replay on every hit. Everything raises ``SinfError`` for problems a user
can fix; the pages show those as messages.

The app is configured by environment variables (all optional):
``SINF_APP_MODEL`` (default ``cifar100_resnet56``), ``SINF_APP_CHECKPOINT`` (weights file),
``SINF_APP_DATASET`` (data set name or image-folder path), ``SINF_APP_BUNDLE`` (bundle folder), plus the
library's ``SINF_DATA_DIR`` / ``SINF_WEIGHTS_DIR`` / ``SINF_CACHE_DIR``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import streamlit as st
import torch

from sinf_core.bundle import MANIFEST, Bundle
from sinf_core.data import Hierarchy
from sinf_core.errors import SinfError
from sinf_core.models import MODELS

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
ENV_MODEL, ENV_CHECKPOINT, ENV_DATASET, ENV_BUNDLE = (
    "SINF_APP_MODEL", "SINF_APP_CHECKPOINT", "SINF_APP_DATASET", "SINF_APP_BUNDLE")
DEFAULT_MODEL = "cifar100_resnet56"
CIFAR100_BYTES = 169_001_437  # size of the official archive, for the download bar


# ==================================================================================== the source
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
        if e.weights_url or (e.weights_file and (ASSETS_DIR / e.weights_file).is_file()):
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
            bench = json.loads((folder / "bench.json").read_text()) if (folder / "bench.json").is_file() else None
            measured = (bench or {}).get("base", {}).get("top1")
        except (OSError, ValueError, AttributeError):
            measured = None
        pub = r["published_top1"] if r["published_top1"] is not None else r["card_top1"]
        rows.append({"model": r["name"], "published top-1 (%)": pub,
                     "published by": "release" if r["published_top1"] is not None else "model card" if pub else None,
                     "measured top-1 (%, report split)": measured, "bundle": (folder / MANIFEST).is_file(),
                     "parameters": r["parameters"], "description": r["description"]})
    return rows


# ==================================================================================== memo + progress
@st.cache_resource(show_spinner=False)
def _memo_store() -> tuple[dict, threading.RLock]:
    return {}, threading.RLock()


def memo(key: tuple, compute: Callable[[], T]) -> T:
    """Process-wide cache for long computations that draw their own progress bar (computed once per key;
    one long computation at a time)."""
    store, lock = _memo_store()
    if key in store:
        return store[key]
    with lock:
        if key not in store:
            store[key] = compute()
        return store[key]


def forget(prefix: tuple) -> None:
    """Drop memo entries whose key starts with ``prefix`` (e.g. after saving into the bundle)."""
    store, lock = _memo_store()
    with lock:
        for k in [k for k in store if k[: len(prefix)] == prefix]:
            store.pop(k, None)


class Progress:
    """A progress bar drawn only while a computation runs; ``__call__(done, total, stage)``."""

    def __init__(self, label: str):
        self.label = label
        self._ph = st.empty()
        self._bar = None
        self._t0 = time.perf_counter()

    def __call__(self, done: float, total: float, stage: str | None = None) -> None:
        frac = 0.0 if not total else max(0.0, min(1.0, float(done) / float(total)))
        text = f"{self.label}{f' ({stage})' if stage else ''}: {int(done)}/{int(total)}"
        if self._bar is None:
            self._bar = self._ph.progress(frac, text=text)
        else:
            self._bar.progress(frac, text=text)

    def stage(self, stage: str) -> Callable[[int, int], None]:
        return lambda done, total: self(done, total, stage)

    def close(self) -> float:
        self._ph.empty()
        return time.perf_counter() - self._t0


def counter(progress: Progress, total: int, stage: str | None = None) -> Callable[[int], None]:
    seen = [0]

    def on_batch(n: int) -> None:
        seen[0] += int(n)
        progress(seen[0], total, stage)

    return on_batch


def _wait_with_bar(work: Callable[[], T], measure: Callable[[], int], total: int, label: str) -> T:
    """Run ``work`` in a thread while the script thread draws a bar of ``measure()`` / ``total`` bytes."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:  # re-raised in the script thread
            out["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    bar = st.progress(0.0, text=label)
    while th.is_alive():
        th.join(0.25)
        got = measure()
        bar.progress(min(1.0, got / total) if total else 0.0, text=f"{label}: {got / 1e6:.1f} / {total / 1e6:.0f} MB")
    bar.empty()
    if "error" in out:
        raise out["error"]
    return out["value"]


# ==================================================================================== model + data
def _ensure_cifar100(data_dir: str | None) -> None:
    """Download CIFAR-100 with a visible progress bar when it is not on disk yet."""
    from sinf_core.data.cifar import download_cifar100, find_cifar100_folder
    from sinf_core.data.registry import resolve_data_dir

    root = resolve_data_dir(data_dir)
    if find_cifar100_folder(root) is not None:
        return
    archive = root / "cifar-100-python.tar.gz"
    with st.status("Downloading CIFAR-100 (about 170 MB, once) ...", expanded=True) as status:
        try:
            _wait_with_bar(lambda: download_cifar100(root),
                           lambda: archive.stat().st_size if archive.exists() else 0, CIFAR100_BYTES,
                           "CIFAR-100 archive")
        except SinfError:
            raise
        except Exception as exc:
            status.update(label="CIFAR-100 download failed", state="error")
            raise SinfError(
                f"CIFAR-100 is not in {root} and could not be downloaded ({exc.__class__.__name__}: {exc}). "
                "Offline, set SINF_DATA_DIR to a folder holding cifar-100-python/."
            ) from exc
        status.update(label="CIFAR-100 ready", state="complete", expanded=False)


def _ensure_weights(model: str) -> None:
    """Download the model's release weights with a visible progress bar when torch.hub does not have them."""
    from sinf_core.models.registry import get_entry, hub_checkpoint_dir, seed_hub_cache

    entry = get_entry(model)
    if not entry.weights_url:
        return
    seed_hub_cache()
    dest = hub_checkpoint_dir()
    fname = entry.weights_url.rsplit("/", 1)[1]
    if (dest / fname).is_file():
        return

    def partial_size() -> int:
        parts = list(dest.glob(f"{fname}.*.partial")) if dest.is_dir() else []
        return max((p.stat().st_size for p in parts), default=0)

    def fetch() -> None:
        dest.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.weights_url, str(dest / fname), progress=False)

    with st.status(f"Downloading the weights of {model} (once) ...", expanded=True) as status:
        try:
            _wait_with_bar(fetch, partial_size, 4_000_000 if "resnet" in model else 80_000_000, fname)
        except Exception as exc:
            status.update(label="weights download failed", state="error")
            raise SinfError(
                f"cannot download {fname} ({exc.__class__.__name__}: {exc}). Offline, set SINF_WEIGHTS_DIR to a "
                f"folder holding it or place it in {dest}."
            ) from exc
        status.update(label="weights ready", state="complete", expanded=False)


@st.cache_resource(show_spinner="Loading the model and the data set ...", max_entries=3)
def _open_experiment(model: str, checkpoint: str | None, dataset: str | None):
    from sinf_core.experiment import open_experiment

    exp = open_experiment(model, dataset=dataset, checkpoint=checkpoint, device="cpu")
    exp.model.eval()
    return exp


def experiment(src: Source):
    """The ``Experiment`` (model, train/test data, fixed splits) of ``src``; downloads what is missing,
    with a progress bar, on first use."""
    from sinf_core.models.registry import get_entry

    entry = get_entry(src.model)
    ds = src.dataset or entry.dataset
    if ds == "cifar100":
        _ensure_cifar100(None)
    if src.checkpoint is None:
        _ensure_weights(src.model)
    return _open_experiment(src.model, src.checkpoint, src.dataset)


# ==================================================================================== bundle
@st.cache_resource(show_spinner="Checking the bundle ...", max_entries=8)
def _open_bundle(path: str, model: str, manifest_mtime: float) -> Bundle:
    return Bundle.open(path, model=model, verify=True)


def _manifest_mtime(path: str) -> float | None:
    p = Path(path) / MANIFEST
    return p.stat().st_mtime if p.is_file() else None


def bundle(src: Source) -> Bundle | None:
    """The bundle of ``src``, or None when the folder holds none. A bundle of another model or format,
    or with damaged files, raises ``SinfError`` (checked once per manifest version)."""
    mtime = _manifest_mtime(src.bundle) if src.bundle else None
    if mtime is None:
        return None
    return _open_bundle(src.bundle, src.model, mtime)


def step_key(src: Source, step: str) -> str | None:
    """The manifest key of one bundle step (None without it): what a cached result read from that
    step depends on, so writing another step (e.g. saving the configuration) invalidates nothing else."""
    try:
        b = bundle(src)
    except SinfError:
        return None
    return None if b is None else b.step_key(step)


def bundle_problem(src: Source) -> str | None:
    """The message of a bundle that cannot be used, or None."""
    try:
        bundle(src)
    except SinfError as exc:
        return str(exc)
    return None


def build_command(src: Source) -> str:
    parts = ["sinf build", src.model]
    if src.checkpoint:
        parts.append(f"--checkpoint {src.checkpoint}")
    if src.dataset:
        parts.append(f"--dataset {src.dataset}")
    parts.append(f"--out {src.bundle}")
    return " ".join(parts)


def _has_file(b: Bundle, name: str) -> bool:
    """Whether the bundle's manifest records ``name`` (such files were checksummed on open) and it is there;
    a stray file in the folder is not part of the bundle."""
    return any(name in step.get("files", {}) for step in b.manifest["steps"].values()) and (b.root / name).is_file()


@st.cache_data(show_spinner=False, max_entries=64)
def _read_json(path: str, mtime: float) -> Any:
    return json.loads(Path(path).read_text())


def bundle_json(src: Source, name: str) -> Any | None:
    """A JSON artefact of the bundle, or None when the bundle (or that file) is missing."""
    try:
        b = bundle(src)
    except SinfError:
        return None
    if b is None or not _has_file(b, name):
        return None
    p = b.root / name
    return _read_json(str(p), p.stat().st_mtime)


@st.cache_resource(show_spinner=False, max_entries=32)
def _read_tensors(path: str, mtime: float) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def bundle_tensors(src: Source, name: str) -> dict[str, torch.Tensor] | None:
    try:
        b = bundle(src)
    except SinfError:
        return None
    if b is None or not _has_file(b, name):
        return None
    p = b.root / name
    return _read_tensors(str(p), p.stat().st_mtime)


def build_bundle(src: Source) -> None:
    """Run the whole pipeline (``sinf build``) into ``src.bundle`` with a progress bar per stage."""
    from sinf_core.pipeline import build_bundle as run_build

    exp = experiment(src)
    with st.status(f"Building the bundle for {src.model} ...", expanded=True) as status:
        progress = Progress("sinf build")
        log = st.empty()
        try:
            run_build(exp, src.bundle, on_progress=lambda stage, done, total: progress(done, total, stage),
                      log=lambda line: log.caption(line))
        except Exception:
            status.update(label="Build failed", state="error")
            raise
        finally:
            progress.close()
        status.update(label="Bundle built", state="complete", expanded=False)
    forget((src.key,))
    _open_bundle.clear()


# ==================================================================================== data facts
def hierarchy(src: Source) -> Hierarchy:
    return experiment(src).hierarchy


def data_info(src: Source) -> dict:
    """data.json of the bundle, else the same facts from the loaded data."""
    info = bundle_json(src, "data.json")
    if info is not None:
        return info
    exp = experiment(src)
    h = exp.hierarchy
    return {
        "dataset": exp.train.name, "class_names": list(h.class_names), "cluster_names": list(h.cluster_names),
        "cluster_of_class": list(h.cluster_of_class), "splits": exp.splits.summary(),
        "mean": list(exp.train.mean), "std": list(exp.train.std),
        "image_size": list(exp.train.images.shape[1:]), "train_images": len(exp.train), "test_images": len(exp.test),
    }


def model_facts(src: Source) -> dict:
    """Parameters and FLOPs per image of the whole base model (cached per source)."""

    def compute() -> dict:
        from sinf_core.cost import model_cost

        exp = experiment(src)
        c = model_cost(exp.model, tuple(exp.train.images.shape[1:]))
        entry = MODELS[src.model]
        return {"params": c.params, "flops": c.flops, "published_top1": entry.published_top1,
                "description": entry.description, "units": exp.model.unit_names(),
                "prunable_layers": [l.name for l in exp.model.prunable_layers()]}

    return memo((src.key, "model_facts"), compute)


# ==================================================================================== statistics
def stats(src: Source):
    """``ActivationStats`` of the fit split: the bundle's, else computed once (disk-cached) with a bar."""
    from sinf_core.stats import ActivationStats, cached_stats

    def compute():
        t = bundle_tensors(src, "stats.safetensors")
        if t is not None:
            return ActivationStats.from_tensors(t)
        exp = experiment(src)
        fit = exp.splits.fit
        progress = Progress("Activation statistics over the fit split (once; cached on disk)")
        try:
            s, _, _ = cached_stats(src.model, exp.model, exp.train, "fit", indices=fit, batch_size=250,
                                   feature_sample=2000, on_batch=counter(progress, len(fit)))
        finally:
            progress.close()
        return s

    return memo((src.key, "stats", step_key(src, "stats")), compute)


def calib_stats(src: Source):
    """``ActivationStats`` of the calibration split (its confusion matrix feeds spectral clustering)."""
    from sinf_core.stats import ActivationStats, cached_stats

    def compute():
        t = bundle_tensors(src, "stats_calib.safetensors")
        if t is not None:
            return ActivationStats.from_tensors(t)
        exp = experiment(src)
        calib = exp.calib_data()
        progress = Progress("Statistics over the calibration split (once; cached on disk)")
        try:
            s, _, _ = cached_stats(src.model, exp.model, calib, "calib", batch_size=250, feature_sample=0,
                                   on_batch=counter(progress, len(calib)))
        finally:
            progress.close()
        return s

    return memo((src.key, "calib_stats", step_key(src, "stats")), compute)


# ==================================================================================== clusters
CLUSTER_METHODS = {"hierarchy": "the data set's hierarchy", "ward": "Ward on class prototypes",
                   "spectral": "spectral on the confusion matrix"}


@dataclass(frozen=True)
class Clustering:
    """A class partition: ``hierarchy`` (the Hierarchy), ``ari`` vs the data set's (None for itself)."""

    method: str
    k: int
    hierarchy: Hierarchy
    ari: float | None
    from_bundle: bool


def clustering(src: Source, method: str, k: int) -> Clustering:
    """The data set's hierarchy, or a data-driven clustering into ``k`` clusters (the bundle's when it
    holds that method at that K, else computed: Ward on the fit statistics' class prototypes, spectral on
    the calibration confusion matrix)."""
    from sinf_core.clusters import adjusted_rand, assignment_hierarchy, cluster_classes

    h = hierarchy(src)
    if method == "hierarchy":
        return Clustering(method, h.num_clusters, h, None, False)
    saved = (bundle_json(src, "clusters.json") or {}).get(method)
    if saved and int(saved.get("k", -1)) == int(k) and len(saved.get("assignment", [])) == h.num_classes:
        found = assignment_hierarchy(h.class_names, saved["assignment"], method)
        return Clustering(method, k, found, adjusted_rand(found, h), True)

    def compute() -> Hierarchy:
        with st.spinner(f"Clustering the classes ({CLUSTER_METHODS.get(method, method)}, K={k}) ..."):
            return cluster_classes(method, h.class_names, int(k), h,
                                   fit_stats=stats(src) if method == "ward" else None,
                                   calib_stats=calib_stats(src) if method == "spectral" else None)

    found = memo((src.key, "clustering", method, int(k), step_key(src, "clusters")), compute)
    return Clustering(method, int(k), found, adjusted_rand(found, h), False)


def maps(src: Source) -> dict:
    """UMAP maps: ``classes`` [K, 2] of the class prototypes and, when available, ``samples`` [S, 2] with
    ``sample_labels`` [S] (the bundle's clusters.json, else computed once from the statistics)."""
    saved = bundle_json(src, "clusters.json") or {}
    if saved.get("umap_classes"):
        out = {"classes": np.asarray(saved["umap_classes"], dtype=float)}
        smp = saved.get("umap_samples")
        if smp and smp.get("xy"):
            out["samples"] = np.asarray(smp["xy"], dtype=float)
            out["sample_labels"] = np.asarray(smp["labels"], dtype=int)
        return out
    from sinf_core.clusters import cluster_maps

    def compute() -> dict:
        s = stats(src)
        with st.spinner("Computing the UMAP maps of the classes and of an image sample (once) ..."):
            return cluster_maps(s)

    return memo((src.key, "maps", step_key(src, "clusters")), compute)


def example_images(src: Source, classes: list[int], per_class: int = 2, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """A few training images of ``classes`` (uint8 [N, 3, H, W]) and their labels."""
    exp = experiment(src)
    labels = exp.train.labels.numpy()
    rng = np.random.default_rng(seed)
    idx = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool):
            idx.extend(rng.choice(pool, size=min(per_class, len(pool)), replace=False).tolist())
    sel = torch.as_tensor(idx, dtype=torch.long)
    return exp.train.images[sel], exp.train.labels[sel].tolist()


# ==================================================================================== overlap
def overlap(src: Source, q: float):
    """``OverlapReport`` (class and cluster Jaccard matrices per layer, depth profile) at top-``q`` %,
    from the fit statistics (cheap: computed per q and cached)."""
    from sinf_core.overlap import filter_overlap

    return memo((src.key, "overlap", float(q), step_key(src, "overlap")),
                lambda: filter_overlap(stats(src), hierarchy(src), float(q)))


# ==================================================================================== scores
from sinf_core.scores import SCORE_LABELS  # noqa: E402  (re-exported for the pages)


def score_methods() -> list[str]:
    from sinf_core.scores import SCORES

    return list(SCORES)


def _parse_score_tensors(t: dict[str, torch.Tensor], h: Hierarchy) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in t.items():
        if "|" not in key:
            continue
        c, layer = key.split("|", 1)
        m = int(c) if c.lstrip("-").isdigit() else (h.cluster_names.index(c) if c in h.cluster_names else None)
        if m is None:
            continue
        out.setdefault(m, {})[layer] = v
    return out


def scores_ready(src: Source, method: str) -> bool:
    """Whether ``scores(src, method)`` is instant: in the bundle, or computed earlier in this process."""
    store, _ = _memo_store()
    if (src.key, "scores", method, step_key(src, "scores")) in store:
        return True
    try:
        b = bundle(src)
    except SinfError:
        return False
    return b is not None and _has_file(b, f"scores_{method}.safetensors")


def scores(src: Source, method: str) -> dict[int, dict[str, torch.Tensor]]:
    """Per-cluster filter scores {cluster index: {layer: Tensor[C]}}: the bundle's
    ``scores_<method>.safetensors``, else computed on the fit split with a bar (once per process)."""
    from sinf_core.scores import compute_all_scores

    def compute():
        h = hierarchy(src)
        t = bundle_tensors(src, f"scores_{method}.safetensors")
        if t is not None:
            parsed = _parse_score_tensors(t, h)
            if parsed:
                return parsed
        exp = experiment(src)
        progress = Progress(f"Filter scores: {SCORE_LABELS.get(method, method)} for every cluster (once)")
        try:
            table = compute_all_scores([method], exp.model, None, exp.fit_data(), h, stats=stats(src),
                                       batch_size=250, on_progress=lambda s, d, n: progress(d, n, s))
        finally:
            progress.close()
        return {int(m): {k: v.float() for k, v in layer.items()} for m, layer in table[method].items() if m is not None}

    return memo((src.key, "scores", method, step_key(src, "scores")), compute)


# ==================================================================================== router + exit
def _load_heads(src: Source, kind: str):
    from sinf_core.router import ExitPredictor, RoutePredictor

    cls = RoutePredictor if kind == "router" else ExitPredictor
    try:
        b = bundle(src)
    except SinfError:
        return None
    if b is None or not _has_file(b, f"{kind}.json"):
        return None
    return memo((src.key, kind, step_key(src, "router")), lambda: cls.load(b.root, kind))


def router(src: Source):
    """The bundle's fitted ``RoutePredictor``, or None (``sinf build`` trains it)."""
    return _load_heads(src, "router")


def exit_heads(src: Source):
    """The bundle's fitted ``ExitPredictor``, or None."""
    return _load_heads(src, "exit")


def default_tap(src: Source) -> str:
    """The attachment point: the router's, else the deepest candidate tap."""
    r = router(src)
    if r is not None:
        return r.tap_
    from sinf_core.router import default_taps

    return default_taps(experiment(src).model)[-1]


def candidate_taps(src: Source) -> list[str]:
    from sinf_core.router import default_taps

    taps = default_taps(experiment(src).model, n=12)
    r = router(src)
    if r is not None and r.tap_ not in taps:
        taps.append(r.tap_)
    return taps


def cluster_ratios(cfg: dict, h: Hierarchy) -> dict[int, tuple[float, float]]:
    """(r_M, r_L) per cluster index: the cluster's override, else the global pair."""
    out = {}
    for m, name in enumerate(h.cluster_names):
        o = cfg.get("overrides", {}).get(name)
        out[m] = (float(o[0]), float(o[1])) if o else (float(cfg["r_M"]), float(cfg["r_L"]))
    return out


@dataclass
class Upload:
    """A decoded upload: ``image`` uint8 [3, S, S] for the model, ``original`` (w, h, mode, frames)."""

    image: torch.Tensor
    width: int
    height: int
    mode: str
    frames: int
    notes: list[str] = field(default_factory=list)


def decode_upload(data: bytes, size: int) -> Upload:
    """Any upload -> the model's input; ``SinfError`` with a clear message for what cannot be used."""
    from PIL import Image

    from sinf_core.data.images import load_image_rgb

    img = load_image_rgb(data, size)  # raises SinfError for non-images, truncated files, giant images
    with Image.open(io.BytesIO(data)) as im:
        w, h, mode = im.size[0], im.size[1], im.mode
        frames = int(getattr(im, "n_frames", 1) or 1)
    notes = []
    if frames > 1:
        notes.append(f"animated image with {frames} frames: the first frame is used")
    if mode not in ("RGB",):
        notes.append(f"colour mode {mode} converted to RGB" + (" (transparency composited on white)"
                                                              if "A" in mode or mode == "P" else ""))
    if w < 8 or h < 8:
        notes.append(f"only {w}x{h} pixels: upscaled to {size}x{size}, so the prediction means little")
    elif (w, h) != (size, size):
        notes.append(f"resized from {w}x{h} to {size}x{size} (the model's input)")
    return Upload(img, w, h, mode, frames, notes)


# ==================================================================================== build artefacts
def grid(src: Source) -> list[dict] | None:
    """The build's oracle-routing grid (every score x r_L, calibration and report splits), one dict per
    row with ``flops`` / ``params`` as the mean over clusters of the subgraph-with-stem figures (the grid
    stores them per cluster), or None without a grid."""
    g = bundle_json(src, "grid.json")
    if g is None:
        return None
    rows = []
    for r in list(g.get("rows", []) if isinstance(g, dict) else g):
        r = dict(r)
        for key in ("flops", "params"):
            v = r.get(key)
            if isinstance(v, list):
                vals = [x for x in v if x is not None]
                r[key + "_per_cluster"] = v
                r[key] = float(np.mean(vals)) if vals else None
        rows.append(r)
    return rows


def bench(src: Source) -> dict | None:
    return bundle_json(src, "bench.json")


def page_timer() -> Callable[[], float]:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


__all__ = [
    "Source", "source", "step_key", "set_source", "env_source", "default_bundle_dir", "selectable_models", "model_table", "memo", "forget",
    "Progress", "experiment", "bundle", "bundle_problem", "bundle_json", "bundle_tensors", "build_command",
    "build_bundle", "hierarchy", "data_info", "model_facts", "stats", "scores", "scores_ready", "score_methods", "SCORE_LABELS",
    "router", "exit_heads", "calib_stats", "CLUSTER_METHODS", "Clustering", "clustering", "maps",
    "example_images", "overlap", "default_tap", "candidate_taps", "cluster_ratios", "Upload", "decode_upload", "grid",
    "bench", "page_timer",
]
