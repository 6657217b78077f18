"""SINF Studio's loaders: every page gets its model, data, bundle artefacts and derived tables here.

What a page needs comes from the bundle (``sinf build`` writes it; ``Bundle.open(path).json(name)`` /
``.tensors(name)``) when the bundle holds it, and otherwise from a direct library call (statistics,
clusters, overlap, filter scores, subgraph evaluation) so the analysis pages also work before a bundle
exists. Parts only a build produces (router / exit heads, the operating-point grid, the benchmark) are
``None`` when missing and the page says which command makes them.

Caching: models and data sets are ``st.cache_resource``; small JSON tables are ``st.cache_data``;
long computations that show a progress bar go through ``progress.memo``. Everything raises ``SinfError``
for problems a user can fix; the pages show those as messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from sinf_core import artifacts as A
from sinf_core.bundle import Bundle
from sinf_core.data import Hierarchy
from sinf_core.errors import SinfError
from sinf_core.models import get_entry
from sinf_core.scores import SCORE_LABELS  # noqa: F401  (re-exported for the pages)

from .downloads import ensure_cifar100, ensure_weights
from .progress import Progress, _memo_store, counter, forget, memo
from .session import Source


@st.cache_resource(show_spinner="Loading the model and the data set ...", max_entries=3)
def _open_experiment(model: str, checkpoint: str | None, dataset: str | None, image_size: int | None = None):
    from sinf_core.experiment import open_experiment

    exp = open_experiment(model, dataset=dataset, checkpoint=checkpoint, image_size=image_size)  # the default Runtime: picked once, here
    exp.model.eval()
    return exp


def experiment(src: Source):
    """The ``Experiment`` (model, train/test data, fixed splits) of ``src``; downloads what is missing,
    with a progress bar, on first use. An image folder is loaded at the size of ``src``'s bundle (the
    size it was built at), else at the model's default."""
    from sinf_core.data import DATASETS

    entry = get_entry(src.model)  # a spec has no data set of its own: open_experiment asks for one
    ds = src.dataset or entry.dataset
    if ds == "cifar100":
        ensure_cifar100(None)
    if src.checkpoint is None:
        ensure_weights(src.model)
    return _open_experiment(src.model, src.checkpoint, src.dataset, None if ds in DATASETS else _bundle_image_size(src))


def _bundle_image_size(src: Source) -> int | None:
    """The image size ``src``'s bundle was built at, read off its manifest (None without a readable one)."""
    path = Path(src.bundle) / A.MANIFEST if src.bundle else None
    if path is None or not path.is_file():
        return None
    try:
        return int(Bundle(Path(src.bundle), json.loads(path.read_text())).input_shape[-1])
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return None


# ==================================================================================== bundle
@st.cache_resource(show_spinner="Checking the bundle ...", max_entries=8)
def _open_bundle(path: str, model: str, manifest_mtime: float) -> Bundle:
    return Bundle.open(path, model=model, verify=True)


def _manifest_mtime(path: str) -> float | None:
    p = Path(path) / A.MANIFEST
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
    info = bundle_json(src, A.DATA)
    if info is not None:
        return info
    exp = experiment(src)
    h = exp.hierarchy
    return {
        "dataset": exp.train.name, "class_names": list(h.class_names), "cluster_names": list(h.cluster_names),
        "cluster_of_class": list(h.cluster_of_class), "splits": exp.splits.summary(),
        "mean": list(exp.train.mean), "std": list(exp.train.std),
        "input_shape": list(exp.input_shape), "train_images": len(exp.train), "test_images": len(exp.test),
    }


def model_facts(src: Source) -> dict:
    """Parameters and FLOPs per image of the whole base model (cached per source)."""

    def compute() -> dict:
        from sinf_core.cost import model_cost

        exp = experiment(src)
        c = model_cost(exp.model)
        entry = get_entry(src.model)  # a registered model, or a spec (torchvision:NAME, ...)
        return {"params": c.params, "flops": c.flops, "published_top1": entry.weights.top1,
                "description": entry.description, "units": exp.model.unit_names(),
                "prunable_layers": [l.name for l in exp.model.prunable_layers()]}

    return memo((src.key, "model_facts"), compute)


# ==================================================================================== statistics
def stats(src: Source):
    """``ActivationStats`` of the fit split: the bundle's, else computed once (disk-cached) with a bar."""
    from sinf_core.stats import ActivationStats, cached_stats

    def compute():
        t = bundle_tensors(src, A.STATS)
        if t is not None:
            return ActivationStats.from_tensors(t)
        exp = experiment(src)
        fit = exp.splits.fit
        progress = Progress("Activation statistics over the fit split (once; cached on disk)")
        try:
            s, _, _ = cached_stats(src.model, exp.model, exp.train, "fit", indices=fit, rt=exp.runtime,
                                   feature_sample=2000, on_batch=counter(progress, len(fit)))
        finally:
            progress.close()
        return s

    return memo((src.key, "stats", step_key(src, "stats")), compute)


def calib_stats(src: Source):
    """``ActivationStats`` of the calibration split (its confusion matrix feeds spectral clustering)."""
    from sinf_core.stats import ActivationStats, cached_stats

    def compute():
        t = bundle_tensors(src, A.STATS_CALIB)
        if t is not None:
            return ActivationStats.from_tensors(t)
        exp = experiment(src)
        calib = exp.calib_data()
        progress = Progress("Statistics over the calibration split (once; cached on disk)")
        try:
            s, _, _ = cached_stats(src.model, exp.model, calib, "calib", rt=exp.runtime, feature_sample=0,
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
    saved = (bundle_json(src, A.CLUSTERS) or {}).get(method)
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
    saved = bundle_json(src, A.CLUSTERS) or {}
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


def score_methods() -> list[str]:
    from sinf_core.scores import SCORES

    return list(SCORES)


def _parse_score_tensors(t: dict[str, torch.Tensor], h: Hierarchy) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in t.items():
        try:
            c, layer = A.parse_score_key(key)
        except ValueError:
            continue
        m = c if isinstance(c, int) else (h.cluster_names.index(c) if c in h.cluster_names else None)
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
    return b is not None and _has_file(b, A.scores_file(method))


def scores(src: Source, method: str) -> dict[int, dict[str, torch.Tensor]]:
    """Per-cluster filter scores {cluster index: {layer: Tensor[C]}}: the bundle's
    ``scores_<method>.safetensors``, else computed on the fit split with a bar (once per process)."""
    from sinf_core.scores import compute_all_scores

    def compute():
        h = hierarchy(src)
        t = bundle_tensors(src, A.scores_file(method))
        if t is not None:
            parsed = _parse_score_tensors(t, h)
            if parsed:
                return parsed
        exp = experiment(src)
        progress = Progress(f"Filter scores: {SCORE_LABELS.get(method, method)} for every cluster (once)")
        try:
            table = compute_all_scores([method], exp.model, None, exp.fit_data(), h, stats=stats(src),
                                       rt=exp.runtime, on_progress=lambda s, d, n: progress(d, n, s))
        finally:
            progress.close()
        return {int(m): {k: v.float() for k, v in layer.items()} for m, layer in table[method].items() if m is not None}

    return memo((src.key, "scores", method, step_key(src, "scores")), compute)


# ==================================================================================== router + exit
def _load_heads(src: Source, kind: str):
    from sinf_core.router import ExitPredictor, RoutePredictor

    cls = RoutePredictor if kind == A.ROUTER else ExitPredictor
    try:
        b = bundle(src)
    except SinfError:
        return None
    if b is None or not _has_file(b, A.file_pair(kind)[0]):
        return None
    return memo((src.key, kind, step_key(src, "router")), lambda: cls.load(b.root, kind))


def router(src: Source):
    """The bundle's fitted ``RoutePredictor``, or None (``sinf build`` trains it)."""
    return _load_heads(src, A.ROUTER)


def exit_heads(src: Source):
    """The bundle's fitted ``ExitPredictor``, or None."""
    return _load_heads(src, A.EXIT)


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


# ==================================================================================== build artefacts
def grid(src: Source) -> list[dict] | None:
    """The build's oracle-routing grid (every score x r_L, calibration and report splits), one dict per
    row with ``flops`` / ``params`` as the mean over clusters of the subgraph-with-stem figures (the grid
    stores them per cluster), or None without a grid."""
    g = bundle_json(src, A.GRID)
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
    return bundle_json(src, A.BENCH)


def runtime_results(src: Source) -> list[dict]:
    """The bundle's runtime benchmarks (``sinf bench --backend B --precision P`` saves them in its
    ``runtime/`` folder), best first by backend / precision name: each ``{"file", "bench", "stale",
    "problem"}``; ``stale`` when it ran the points of an earlier benchmark of the bundle; ``problem`` (and
    no ``bench``) when the file cannot be read or is of another model."""
    from sinf_core.report import load_bench

    try:
        b = bundle(src)
    except SinfError:
        return []
    if b is None or not (b.root / A.RUNTIME_DIR).is_dir():
        return []
    out = []
    for p in sorted((b.root / A.RUNTIME_DIR).glob("*" + A.JSON)):
        rec = {"file": f"{A.RUNTIME_DIR}/{p.name}", "bench": None, "stale": False, "problem": None}
        try:
            got = load_bench(_read_json(str(p), p.stat().st_mtime))
        except (SinfError, ValueError, OSError) as exc:
            rec["problem"] = str(exc)
        else:
            if got.get("backend") is None:
                rec["problem"] = "not a runtime benchmark (no backend)"
            elif got["model"] != b.manifest.get("model"):
                rec["problem"] = f"a benchmark of {got['model']}, not of this bundle's {b.manifest.get('model')}"
            else:
                rec["bench"] = got
                rec["stale"] = got.get("bundle_bench") not in (None, b.step_key("bench"))
        out.append(rec)
    return out
