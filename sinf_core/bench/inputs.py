"""What the benchmark reads before it runs: the subgraph score, the cluster and global filter scores,
the fit statistics and the BatchNorm decision (a bundle's when it has them, else the disk caches)."""

from __future__ import annotations

import torch

from ..artifacts import BN, GRID, STATS
from ..config import DEFAULT_BN_SAMPLES
from ..subgraph.batchnorm import check_bn_samples
from .options import BenchOptions, ProgressFn, parse_clusters


def resolve_bn_samples(bundle, bn_samples: int | None) -> int:
    """``bn_samples`` when given; else the bundle's calibration decision (``bn.json`` of ``sinf build``):
    its sample count when re-estimation won, 0 when it lost; else ``DEFAULT_BN_SAMPLES``."""
    if bn_samples is not None:
        return check_bn_samples(bn_samples)
    if bundle is not None and bundle.has("bn"):
        d = bundle.json(BN)
        return int(d.get("bn_samples", DEFAULT_BN_SAMPLES)) if d.get("use") else 0
    return DEFAULT_BN_SAMPLES


def resolve_score(bundle, score: str) -> str:
    """``score``, or for 'auto' the DCS variant with the best mean calibration accuracy in the bundle's
    oracle grid among those whose scores the bundle holds ('dcs' without a grid)."""
    if score != "auto":
        return score
    if bundle is None or not bundle.has("grid"):
        return "dcs"
    from ..bundle import score_methods
    from ..comparison import choose_dcs_variant, grid_table

    grid = bundle.json(GRID)
    held = score_methods(bundle)
    tap = (grid.get("taps") or [grid.get("tap")])[0]  # the grid's first stem boundary (not always the router's tap)
    calib = {m: v for m, v in grid_table(grid, tap, "calib").items() if m in held}
    return choose_dcs_variant(calib) or "dcs"


def _fit_stats(exp, bundle, opts: BenchOptions, rt, prog: ProgressFn):
    """``ActivationStats`` of the fit split: the bundle's, else the disk cache (computed when missing, in
    float32 on ``rt``'s device)."""
    from ..stats import ActivationStats, cached_stats

    if bundle is not None and bundle.has("stats"):
        return ActivationStats.from_tensors(bundle.tensors(STATS))
    fit = exp.splits.fit
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        prog("statistics (fit)", done[0], len(fit))

    stats, _, _ = cached_stats(exp.model_name, exp.model, exp.train, "fit", indices=fit, rt=rt.with_(bf16=False),
                               on_batch=on_batch, root=opts.cache_dir)
    return stats


def _cluster_scores(exp, bundle, score: str, opts: BenchOptions, rt,
                    prog: ProgressFn) -> dict[int, dict[str, torch.Tensor]]:
    """{cluster: {layer: Tensor[C]}} of ``score``: the bundle's when it has them, else the score
    cache (computed on the fit split when missing)."""
    from ..bundle import load_scores, score_methods

    if bundle is not None and score in score_methods(bundle):
        return load_scores(bundle, score)
    from ..scores.cache import load_or_compute_scores

    res = load_or_compute_scores([score], exp.model, exp.model_name, exp.fit_data(), "fit", exp.hierarchy,
                                 options=opts.score_options or None, root=opts.cache_dir, rt=rt.with_(bf16=False),
                                 on_progress=lambda s, d, t: prog(f"scores: {s}", d, t))
    table = res[score]["scores"]
    return {int(m): table[m] for m in table}


def _global_scores(exp, opts: BenchOptions, rt, prog: ProgressFn) -> dict[str, dict[str, torch.Tensor]]:
    """{method: {layer: Tensor[C]}} of every global (all-classes) score in ``opts.static_scores``."""
    from ..scores.cache import load_or_compute_scores

    res = load_or_compute_scores(list(opts.static_scores), exp.model, exp.model_name, exp.fit_data(), "fit",
                                 exp.hierarchy, options=opts.score_options or None, targets=[None],
                                 root=opts.cache_dir, rt=rt.with_(bf16=False),
                                 on_progress=lambda s, d, t: prog(f"global scores: {s}", d, t))
    return {m: res[m]["scores"][None] for m in opts.static_scores}


def bench_clusters(exp, bundle, opts: BenchOptions, rt, prog: ProgressFn):
    """(the experiment with ``opts.clusters`` as its hierarchy, a record of them for the result): the data
    set's own clusters, or K Ward clusters of the fit split's class prototypes (its statistics: the
    bundle's, else the cache)."""
    from ..clusters import cluster_classes

    method, k = parse_clusters(opts.clusters)
    if method != "hierarchy":
        stats = _fit_stats(exp, bundle, opts, rt, prog)
        exp = exp.with_hierarchy(cluster_classes(method, exp.train.class_names, k, fit_stats=stats))
    h = exp.hierarchy
    return exp, {"method": method, "k": h.num_clusters, "sizes": [len(h.members(m)) for m in range(h.num_clusters)],
                 "classes": None if method == "hierarchy" else h.to_json()}
