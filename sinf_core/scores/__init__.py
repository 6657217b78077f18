"""Filter scores behind one interface: DCS and the baselines (METHOD.md sections 3-4).

``SCORES`` maps a name to its ``ScoreSpec``. Two entry points:

- ``compute_scores(method, model, layers, data, clusters, cluster, stats, options)`` ->
  ``{layer name: Tensor[C]}`` (higher = keep) for one cluster (or ``cluster=None``: all classes);
- ``compute_all_scores(methods, model, layers, data, clusters, ...)`` -> ``{method: {cluster: {layer:
  Tensor[C]}}}`` for every cluster and layer at once, in ONE streamed pass over the data shared by all
  the requested feature-map scores (plus one gradient pass for Taylor).

``data`` is the FIT split (training data, METHOD.md section 0). Data-dependent scores look at most at
``max_per_class`` samples per class (a fixed seeded choice, the same whether a cluster is scored alone or
with all clusters), and for a cluster only at the samples of that cluster's classes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

import torch

from ..data import Hierarchy, ImageDataset
from ..errors import SinfError
from ..models import PrunableLayer, SinfModel
from ..runtime import Runtime
from . import baselines as _b
from . import dcs as _dcs
from .base import LayerScores, ScoreJob, ScoreSpec, ScoreTable, Target, check_targets_have_data, no_reducers
from .feature_maps import stream

SCORES: dict[str, ScoreSpec] = {
    spec.name: spec
    for spec in [
        ScoreSpec("dcs", "Discriminative Capability Score: channel blocks of a linear probe on pooled maps",
                  True, _dcs.DEFAULTS, _dcs.reducers, _dcs.finish),
        # DCS variants: the comparison picks one of the dcs* entries on the calibration split (METHOD.md s. 0)
        ScoreSpec("dcs_lda", "DCS with a shrinkage-LDA probe instead of logistic regression", True,
                  {**_dcs.DEFAULTS, "probe": "lda"}, _dcs.reducers, _dcs.finish),
        ScoreSpec("dcs_p1", "DCS on globally average-pooled maps (p = 1) rather than a 2 x 2 grid (p = 2)", True,
                  {**_dcs.DEFAULTS, "p": 1}, _dcs.reducers, _dcs.finish),
        ScoreSpec("dcs_std", "DCS (LDA probe) x spread: rank(DCS) x rank(std of a_l), for mean replacement", True,
                  {**_dcs.DEFAULTS, "probe": "lda"}, _dcs.std_weighted_reducers, _dcs.std_weighted_finish),
        ScoreSpec("l1", "L1 norm of the conv filter", False, _b.DEFAULTS["l1"], no_reducers, _b.l1_finish),
        ScoreSpec("bn_gamma", "|gamma| of the BatchNorm after the conv", False, _b.DEFAULTS["bn_gamma"],
                  no_reducers, _b.bn_gamma_finish),
        ScoreSpec("mean_act", "mean activation a_l", True, _b.DEFAULTS["mean_act"], _b.mean_act_reducers,
                  _b.mean_act_finish),
        ScoreSpec("std", "spread of a_l: its standard deviation over the cluster's samples", True,
                  _b.DEFAULTS["std"], _b.std_reducers, _b.std_finish),
        ScoreSpec("apoz", "1 - average percentage of zeros", True, _b.DEFAULTS["apoz"], _b.apoz_reducers,
                  _b.apoz_finish),
        ScoreSpec("taylor", "first-order Taylor |A * dL/dA| (cluster-restricted cross-entropy)", True,
                  _b.DEFAULTS["taylor"], no_reducers, _b.taylor_finish),
        ScoreSpec("hrank", "mean rank of the feature maps (HRank)", True, _b.DEFAULTS["hrank"],
                  _b.hrank_reducers, _b.hrank_finish),
        ScoreSpec("chip", "channel independence: nuclear-norm drop when the channel is removed (CHIP)", True,
                  _b.DEFAULTS["chip"], _b.chip_reducers, _b.chip_finish),
        ScoreSpec("tvs", "TVSPrune: min separation of class-conditional mean maps", True, _b.DEFAULTS["tvs"],
                  _b.tvs_reducers, _b.tvs_finish),
        ScoreSpec("random", "seeded uniform random", False, _b.DEFAULTS["random"], no_reducers, _b.random_finish),
    ]
}

# Short human labels of the scores, for select boxes, figure legends and captions (app and exports).
SCORE_LABELS: dict[str, str] = {
    "dcs": "DCS (ours)", "dcs_lda": "DCS, LDA probe", "dcs_p1": "DCS, p = 1", "dcs_std": "DCS x spread",
    "std": "spread (std of a_l)", "l1": "L1 norm", "bn_gamma": "BN |gamma|", "mean_act": "mean activation", "apoz": "APoZ",
    "taylor": "Taylor", "hrank": "HRank", "chip": "CHIP", "tvs": "TVSPrune", "random": "random",
}

ProgressFn = Callable[[str, int, int], None]


def get_score(name: str) -> ScoreSpec:
    if name not in SCORES:
        raise SinfError(f"unknown filter score {name!r}; known: {', '.join(SCORES)}")
    return SCORES[name]


def resolve_options(method: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's defaults overridden by the entries of ``options`` it understands (others ignored)."""
    spec = get_score(method)
    opts = dict(spec.defaults)
    for k, v in (options or {}).items():
        if k not in opts:
            continue
        d = opts[k]
        if v is not None and isinstance(d, (int, float)) and not isinstance(d, bool):
            try:
                v = type(d)(v)
            except (TypeError, ValueError) as exc:
                raise SinfError(f"option {k} of {method} must be a number, got {v!r}") from exc
        opts[k] = v
    return opts


def check_options(methods: Iterable[str], options: dict[str, Any] | None) -> None:
    """Every option must be one that some registered score understands (catches typos); options that
    other scores use are ignored by the methods that do not (so one option dict serves a whole loop)."""
    for m in methods:
        get_score(m)
    known = {k for spec in SCORES.values() for k in spec.defaults}
    bad = sorted(set(options or {}) - known)
    if bad:
        raise SinfError(f"unknown score option(s) {bad}; known options: {sorted(known)}")


def resolve_layers(model: SinfModel, layers: Sequence[str | PrunableLayer] | None) -> list[PrunableLayer]:
    """All prunable layers (None) or the named ones, in forward order; an unknown name is a SinfError."""
    if layers is None:
        return list(model.prunable_layers())
    names = {l if isinstance(l, str) else l.name for l in layers}
    picked = [model.prunable_layer(n) for n in names]  # raises SinfError for unknown names
    order = {l.name: i for i, l in enumerate(model.prunable_layers())}
    return sorted(picked, key=lambda l: order[l.name])


def _resolve_targets(clusters: Hierarchy, targets: Sequence[Target] | None) -> list[Target]:
    if targets is None:
        return list(range(clusters.num_clusters))
    out = []
    for t in targets:
        if t is not None and not (isinstance(t, int) and 0 <= t < clusters.num_clusters):
            raise SinfError(f"cluster {t!r} out of range 0..{clusters.num_clusters - 1}")
        out.append(t)
    return out


def compute_all_scores(
    methods: Sequence[str],
    model: SinfModel,
    layers: Sequence[str | PrunableLayer] | None,
    data: ImageDataset,
    clusters: Hierarchy | None = None,
    stats: Any = None,
    options: dict[str, Any] | None = None,
    targets: Sequence[Target] | None = None,
    rt: Runtime | None = None,
    on_progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, ScoreTable]:
    """Scores of ``methods`` for every target (default: every cluster of ``clusters``) and layer.

    Returns {method: {target: {layer name: float32 Tensor[C]}}}. ``stats`` (an ``ActivationStats`` of
    the same data) lets mean_act / APoZ skip the pass. ``on_progress(stage, done, total)`` reports the
    shared pass ('features', images) and per-method work. ``timings`` (if given) receives seconds:
    'features' (the whole shared pass), 'features.reducers' (of which in reducers), '<method>.reduce'
    (the reducers a method uses; shared ones count for each user) and '<method>' (its own finish)."""
    methods = list(dict.fromkeys(methods))
    specs = [get_score(m) for m in methods]
    check_options(methods, options)
    clusters = clusters or data.hierarchy
    if clusters.class_names != data.hierarchy.class_names:
        raise SinfError("the cluster hierarchy is for a different set of classes than the data")
    lay = resolve_layers(model, layers)
    if not lay:
        raise SinfError("the model has no prunable layers to score")
    tg = _resolve_targets(clusters, targets)
    rt = Runtime.resolve(rt, model)
    jobs: dict[str, ScoreJob] = {}
    shared: dict[str, Any] = {}
    own: dict[str, list[str]] = {}
    for spec in specs:
        job = ScoreJob(model, lay, data, clusters, tg, resolve_options(spec.name, options), stats, rt, on_progress)
        if spec.data_dependent:
            check_targets_have_data(job)
        jobs[spec.name] = job
        red = spec.reducers(job)
        for k, r in red.items():
            shared.setdefault(k, r)
        own[spec.name] = list(red)
    t0 = time.perf_counter()
    if shared:
        n_rows = len(set().union(*[set(r.rows.tolist()) for r in shared.values()]))
        done = [0]

        def on_batch(n: int) -> None:
            done[0] += n
            if on_progress:
                on_progress("features", done[0], n_rows)

        stream(model, lay, data, list(shared.values()), rt, on_batch)
    if timings is not None:
        timings["features"] = time.perf_counter() - t0
        timings["features.reducers"] = sum(r.seconds for r in shared.values())
        for m, keys in own.items():
            timings[f"{m}.reduce"] = sum(shared[k].seconds for k in keys)
    out: dict[str, ScoreTable] = {}
    for spec in specs:
        t1 = time.perf_counter()
        out[spec.name] = spec.finish(jobs[spec.name], {k: shared[k] for k in own[spec.name]})
        if timings is not None:
            timings[spec.name] = time.perf_counter() - t1
        if on_progress:
            on_progress(f"{spec.name} done", 1, 1)
    return out


def compute_scores(
    method: str,
    model: SinfModel,
    layers: Sequence[str | PrunableLayer] | None,
    data: ImageDataset,
    clusters: Hierarchy | None = None,
    cluster: int | None = None,
    stats: Any = None,
    options: dict[str, Any] | None = None,
    rt: Runtime | None = None,
    on_progress: ProgressFn | None = None,
) -> LayerScores:
    """One score for one cluster (``None``: all classes, not cluster-conditioned): {layer: Tensor[C]}."""
    table = compute_all_scores([method], model, layers, data, clusters, stats, options, [cluster], rt, on_progress)
    return table[method][cluster]


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Channel indices from most to least worth keeping (stable: ties keep channel order)."""
    return torch.sort(scores, descending=True, stable=True).indices


__all__ = [
    "SCORE_LABELS",
    "SCORES", "ScoreSpec", "ScoreJob", "LayerScores", "ScoreTable", "compute_scores", "compute_all_scores",
    "get_score", "resolve_options", "check_options", "resolve_layers", "ranking",
]
