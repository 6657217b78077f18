"""Scores on disk: one bundle per (model, weights) under $SINF_CACHE_DIR/scores (default ~/.cache/sinf).

Each (method, resolved options, data, layers, clusters) is one bundle step holding a safetensors file
(keys ``artifacts.score_key``: ``"<cluster>|<layer>"``, ``"all|<layer>"`` for the unconditioned target, as
in a bundle's ``scores_<method>.safetensors``) and a JSON meta file.
The step name carries a hash of those inputs, so several option sets live side by side; checksums and
atomic writes come from ``sinf_core.bundle``. Missing methods are computed together in one shared pass.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..artifacts import ALL_TARGET, CACHE_SCORES, file_pair, model_cache_folder, score_key
from ..bundle import Bundle, sha256_json, state_dict_sha256
from ..data import Hierarchy, ImageDataset
from ..io import cache_dir  # noqa: F401  (re-exported)
from ..models import SinfModel
from ..runtime import Runtime
from . import ScoreTable, compute_all_scores, get_score, resolve_layers, resolve_options
from .base import Target

CACHE_FORMAT = 2  # 2: score keys "<cluster>|<layer>" (artifacts.score_key; were "<cluster>/<layer>")


def data_fingerprint(data: ImageDataset, split: str) -> dict:
    """What identifies the data a score looked at: name, split, size, and a hash of images + labels."""
    h = hashlib.sha256()
    h.update(data.labels.numpy().tobytes())
    h.update(data.images.numpy().tobytes())
    return {"dataset": data.name, "split": split, "n": len(data), "sha256": h.hexdigest()}


def _key(t: Target) -> str:
    return ALL_TARGET if t is None else str(t)


def table_to_tensors(table: ScoreTable) -> dict[str, torch.Tensor]:
    return {score_key(t, layer): v.detach().to(torch.float32).contiguous().clone()
            for t, layers in table.items() for layer, v in layers.items()}


def tensors_to_table(tensors: dict[str, torch.Tensor], targets: Sequence[Target], layers: Sequence[str]) -> ScoreTable:
    return {t: {l: tensors[score_key(t, l)] for l in layers} for t in targets}


def load_or_compute_scores(
    methods: Sequence[str],
    model: SinfModel,
    model_name: str,
    data: ImageDataset,
    split: str = "fit",
    clusters: Hierarchy | None = None,
    layers: Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    targets: Sequence[Target] | None = None,
    stats: Any = None,
    root: str | Path | None = None,
    recompute: bool = False,
    rt: Runtime | None = None,
    on_progress=None,
) -> dict[str, dict]:
    """{method: {"scores": ScoreTable, "cached": bool, "seconds": float, "file": Path, "options": dict,
    "meta": dict}}. Cached methods are loaded; the others are computed in one ``compute_all_scores`` call
    (one shared pass) and stored. "seconds" is the method's own work (its reducers inside the shared pass
    plus its finish step); "meta" also holds the shared pass and the whole batch's wall time."""
    clusters = clusters or data.hierarchy
    lay = [l.name for l in resolve_layers(model, layers)]
    tg = list(range(clusters.num_clusters)) if targets is None else list(targets)
    sha = state_dict_sha256(model)
    bundle = Bundle.open_or_create(cache_dir(root) / CACHE_SCORES / model_cache_folder(model_name, sha), model_name, sha,
                                   {"what": "filter scores"})
    fp = data_fingerprint(data, split)
    steps, todo, result = {}, [], {}
    for m in dict.fromkeys(methods):
        inputs = {"format": CACHE_FORMAT, "method": m, "options": resolve_options(m, options), "data": fp,
                  "layers": lay, "targets": [_key(t) for t in tg], "clusters": clusters.to_json(),
                  "stats_samples": None if stats is None or not get_score(m).data_dependent else int(stats.total)}
        name = f"{m}.{sha256_json(inputs)[:12]}"
        steps[m] = (name, inputs)
        meta_file, tensors_file = file_pair(name)
        if bundle.has(name) and not recompute:
            meta = bundle.json(meta_file)
            result[m] = {"scores": tensors_to_table(bundle.tensors(tensors_file), tg, lay), "cached": True,
                         "seconds": meta["seconds"], "file": bundle.root / tensors_file,
                         "options": inputs["options"], "meta": meta}
        else:
            todo.append(m)
    if todo:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        tables = compute_all_scores(todo, model, lay, data, clusters, stats, options, tg, rt, on_progress, timings)
        wall = time.perf_counter() - t0
        for m in todo:
            name, inputs = steps[m]
            meta_file, tensors_file = file_pair(name)
            meta = {"method": m, "options": inputs["options"], "layers": lay, "targets": inputs["targets"],
                    "cluster_names": list(clusters.cluster_names), "data": fp,
                    # the method's own work: its reducers inside the shared pass + its finish step
                    "seconds": round(timings.get(m, 0.0) + timings.get(f"{m}.reduce", 0.0), 3),
                    "finish_seconds": round(timings.get(m, 0.0), 3),
                    "reduce_seconds": round(timings.get(f"{m}.reduce", 0.0), 3),
                    "shared_pass_seconds": round(timings.get("features", 0.0), 3),
                    "shared_pass_reducers_seconds": round(timings.get("features.reducers", 0.0), 3),
                    "batch_seconds": round(wall, 3), "batch_methods": todo}
            art = {tensors_file: table_to_tensors(tables[m]), meta_file: meta}
            if recompute:
                bundle.put(name, art, inputs)
            else:
                bundle.step(name, inputs, lambda art=art: art)
            result[m] = {"scores": tables[m], "cached": False, "seconds": meta["seconds"],
                         "file": bundle.root / tensors_file, "options": inputs["options"], "meta": meta}
    return {m: result[m] for m in dict.fromkeys(methods)}
