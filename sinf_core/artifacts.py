"""Every file SINF writes or reads as its own, named in one place, and the one way a name becomes a path.

A bundle (``sinf_core.bundle``; ``sinf build`` writes it step by step, the app reads it) holds the files
below, each written by one step (``STEP_FILES``, plus the per-method and per-tap names of the functions).
These are the on-disk contract: shipped bundles' manifests checksum these exact names, so they never
change. The module is a leaf (standard library only), so any module imports it without a cycle.
"""

from __future__ import annotations

import re

JSON, SAFETENSORS, ONNX = ".json", ".safetensors", ".onnx"

# ---------------------------------------------------------------------------------------- a bundle
MANIFEST = "manifest.json"  # format, model, weights sha256, each step's inputs key and files' sha256 (Bundle, after every step)
DATA = "data.json"  # step data: data set, class / cluster names, splits, normalisation
STATS = "stats.safetensors"  # step stats: activation statistics over the fit split
STATS_CALIB = "stats_calib.safetensors"  # step stats: the same over calibration (its confusion feeds spectral clusters)
CLUSTERS = "clusters.json"  # step clusters: hierarchy / Ward / spectral assignments, UMAP maps
OVERLAP = "overlap.json"  # step overlap: filter overlap per layer and the depth profile
ROUTER, EXIT = "router", "exit"  # step router: the names its route and exit heads are saved under (TapHeads.save)
ROUTER_JSON, ROUTER_TENSORS = ROUTER + JSON, ROUTER + SAFETENSORS  # step router: route heads' config / weights
EXIT_JSON, EXIT_TENSORS = EXIT + JSON, EXIT + SAFETENSORS  # step router: exit heads' config / weights
ROUTER_REPORT = "router_report.json"  # step router: the heads' summary and report-split accuracy
GRID = "grid.json"  # step grid: oracle-routing accuracy / cost of every score x r_L (calib and report)
BN = "bn.json"  # step bn: whether BatchNorm re-estimation is on, decided on calibration
BENCH = "bench.json"  # step bench: the benchmark (operating points chosen on calibration, report split)
STUDIO = "studio.json"  # step studio: the benchmark's taps, head shapes and chosen points, for the app
STUDIO_HEADS = "studio_heads.safetensors"  # step studio: the benchmark's route and exit heads at every tap
CONFIG = "config.json"  # step config: the user's saved pruning configuration (the app's Save; Bundle.put)
SCORES_PREFIX, STUDIO_CALIB_PREFIX = "scores_", "studio_calib_"
RUNTIME_DIR = "runtime"  # not a bundle file: the runtime benchmark's default export work folder in a bundle folder,
# and its results (runtime_result_file): each names the bench step it ran the points of (``bundle_bench``)


def runtime_result_file(backend: str, precision: str) -> str:
    """``runtime/<backend>_<precision>.json`` in a bundle folder: ``sinf bench --backend B --precision P``'s result."""
    return f"{RUNTIME_DIR}/{safe_name(backend)}_{safe_name(precision)}{JSON}"


def scores_file(method: str) -> str:
    """Step scores: ``scores_<method>.safetensors``, one score method's {score_key: Tensor[C]}."""
    return f"{SCORES_PREFIX}{safe_name(method)}{SAFETENSORS}"


def scores_method(fname: str) -> str | None:
    """The method of a ``scores_file`` name, or None for another file."""
    if fname.startswith(SCORES_PREFIX) and fname.endswith(SAFETENSORS):
        return fname[len(SCORES_PREFIX):-len(SAFETENSORS)] or None
    return None


def studio_calib_file(tap: str) -> str:
    """Step studio: ``studio_calib_<tap>.safetensors``, the calibration outputs at ``tap`` (tuning.CalibrationOutputs)."""
    return f"{STUDIO_CALIB_PREFIX}{safe_name(tap)}{SAFETENSORS}"


def file_pair(stem: str) -> tuple[str, str]:
    """(``<stem>.json``, ``<stem>.safetensors``): a config / meta file and its tensors (saved heads, a score cache entry)."""
    return stem + JSON, stem + SAFETENSORS


# step name -> the files of fixed name it writes (the scores step writes ``scores_file(m)`` per method,
# the studio step also ``studio_calib_file(tap)``)
STEP_FILES: dict[str, tuple[str, ...]] = {
    "data": (DATA,), "stats": (STATS, STATS_CALIB), "clusters": (CLUSTERS,), "overlap": (OVERLAP,),
    "router": (ROUTER_TENSORS, ROUTER_JSON, EXIT_TENSORS, EXIT_JSON, ROUTER_REPORT), "scores": (),
    "bn": (BN,), "grid": (GRID,), "bench": (BENCH,), "studio": (STUDIO_HEADS, STUDIO), "config": (CONFIG,),
}


def step_of(fname: str) -> str | None:
    """The bundle step that writes ``fname``, or None when no step does (``MANIFEST`` is the bundle's own)."""
    for step, files in STEP_FILES.items():
        if fname in files:
            return step
    if scores_method(fname):
        return "scores"
    if fname.startswith(STUDIO_CALIB_PREFIX) and fname.endswith(SAFETENSORS) and \
            fname[len(STUDIO_CALIB_PREFIX):-len(SAFETENSORS)]:
        return "studio"
    return None


# ---------------------------------------------------------------------------------------- score tensors
SCORE_KEY_SEP = "|"
ALL_TARGET = "all"  # the unconditioned target (cluster None) of a score cache entry


def score_key(cluster: int | str | None, layer: str) -> str:
    """The tensor key of one cluster's scores of one layer: ``"<cluster>|<layer>"`` (``"all|<layer>"`` for None)."""
    return f"{ALL_TARGET if cluster is None else cluster}{SCORE_KEY_SEP}{layer}"


def parse_score_key(key: str) -> tuple[int | str | None, str]:
    """(cluster, layer) of a ``score_key``: an int cluster index, None for ``all``, else the text as is
    (e.g. a cluster name). A key without the separator raises ``ValueError``."""
    c, sep, layer = key.partition(SCORE_KEY_SEP)
    if not sep or not layer:
        raise ValueError(f"not a score key (<cluster>{SCORE_KEY_SEP}<layer>): {key!r}")
    if c == ALL_TARGET:
        return None, layer
    return (int(c) if c.lstrip("-").isdigit() else c), layer


# ---------------------------------------------------------------------------------------- caches
# sub-folders of ``io.cache_dir()``
CACHE_STATS = "stats"  # stats_cache_file(key) + its .json meta (stats.cached_stats, `sinf stats`)
CACHE_SCORES = "scores"  # model_cache_folder(...): a bundle of score entries (scores.cache)
CACHE_BENCH = "bench"  # model_cache_folder(...)/heads-<key>-<taps>: the benchmark's heads (bench.heads)
BUNDLES = "bundles"  # folder_name(model) per model: `sinf build`'s default bundles (here) and the shipped ones (assets/)
HEADS_META = "meta.json"  # in a bench heads folder: its parameter key and taps (bench.heads)


def stats_cache_file(key: str) -> str:
    """``<key>.safetensors`` under ``CACHE_STATS``; its meta is the same name with ``.json`` (stats.save_stats)."""
    return safe_name(key) + SAFETENSORS


def model_cache_folder(model: str, sha256: str) -> str:
    """A cache folder of one model's weights: ``<folder_name(model)>-<sha256[:12]>``."""
    return f"{folder_name(model)}-{sha256[:12]}"


# ---------------------------------------------------------------------------------------- other files
ROUTING = "routing.json"  # an ONNX export folder's manifest (export.export_onnx, written last)
RUN_FINAL = "final.safetensors"  # a `sinf train` run folder: the final weights
RUN_SUMMARY = "summary.json"  # a `sinf train` run folder: the run's summary (`sinf publish` reads it)
RUN_CHECKPOINT = "checkpoint.pt"  # a `sinf train` run folder: the resumable checkpoint
HIERARCHY = "hierarchy.json"  # an image-folder data set's class -> cluster file (data.imagefolder)


def onnx_file(piece: str) -> str:
    """An ONNX export folder: ``<piece>.onnx``, one graph per piece (stem, heads, subgraphs, tail, base)."""
    return safe_name(piece) + ONNX


def card_file(weights_file: str) -> str:
    """A shipped weights file's model card (top-1, sha256): ``<weights stem>.json`` next to it."""
    stem = weights_file.rsplit("/", 1)[-1]
    return (stem.rsplit(".", 1)[0] if "." in stem else stem) + JSON


def report_file(kind: str, model: str, ext: str) -> str:
    """A report file of a model: ``<kind>_<folder_name(model)>.<ext>`` (``sinf report``: bench_*, ``sinf compare``: scores_*)."""
    return f"{kind}_{folder_name(model)}.{ext.lstrip('.')}"


# ---------------------------------------------------------------------------------------- names made safe
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")  # anything else (Windows refuses <>:"/\|?*) becomes '-'
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_name(text: str) -> str:
    """``text`` as one file or folder name every OS accepts: letters, digits, ``_.-`` kept, anything else
    as '-', no leading / trailing '.' or '-', never a Windows device name; names already safe are unchanged."""
    s = _UNSAFE.sub("-", str(text).strip()).strip(".-") or "_"
    return "_" + s if s.split(".")[0].upper() in _RESERVED else s


def _without_class_count(name: str) -> str:
    text = name.strip()
    head, at, count = text.rpartition("@")
    return head if at and count.isdigit() and int(count) >= 1 else text


def folder_name(model: str) -> str:
    """The one name a model takes on disk (cache and bundle folders, report and export files): a
    registered name as is; a spec without its class count, ':' as '-' (``torchvision:resnet18@10`` ->
    ``torchvision-resnet18``), so every spelling of one spec finds the same folder."""
    return safe_name(_without_class_count(model) if ":" in model else model)

