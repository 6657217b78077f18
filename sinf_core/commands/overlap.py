"""`sinf overlap MODEL`: top-q % filter overlap per layer and the within/between-cluster depth profile."""

from __future__ import annotations

import time

from .common import add_model_options, emit, open_from_args
from .stats import add_stats_options, stats_for

NAME = "overlap"
HELP = "filter overlap: Jaccard of top-q% channel sets per layer, within- vs between-cluster depth profile"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "batch_size"), {"bf16": "bf16 autocast for the statistics pass"})
    add_stats_options(p)
    p.add_argument("--q", type=float, default=20.0, help="top q %% of channels per class / cluster (default 20)")
    p.add_argument("--clusters", choices=["hierarchy", "ward", "spectral"], default="hierarchy",
                   help="which clusters define 'within' (default: the data set's hierarchy)")
    p.add_argument("--k", type=int, default=20, help="number of clusters for ward / spectral")
    p.add_argument("--class-matrices", action="store_true", help="also write the class x class Jaccard matrices")
    p.add_argument("--out", help="write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from ..clusters import adjusted_rand, cluster_classes
    from ..errors import SinfError
    from ..io import write_json
    from ..overlap import filter_overlap, top_q_count

    t0 = time.perf_counter()
    top_q_count(1, args.q)  # validates q before the slow part
    exp = open_from_args(args)
    fit = stats_for(exp, args, "fit", args.json)[0]
    calib = stats_for(exp, args, "calib", args.json)[0] if args.clusters == "spectral" else None
    h = exp.hierarchy
    if args.clusters != "hierarchy" and not 1 <= args.k <= h.num_classes:
        raise SinfError(f"--k must be between 1 and {h.num_classes}")
    clusters = cluster_classes(args.clusters, h.class_names, args.k, h, fit, calib)
    rep = filter_overlap(fit, clusters, args.q)
    out = {"model": args.model, "split": "fit", "samples": fit.total, "clusters": args.clusters,
           "ari_vs_hierarchy": round(adjusted_rand(clusters, h), 4), **rep.to_json(args.class_matrices)}
    if args.out:
        write_json(args.out, out)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    emit(out, args.json, "" if args.json else _text(out, args.out))
    return 0


def _text(out: dict, path: str | None) -> str:
    lines = [f"{out['model']}: filter overlap, top {out['q']:g} % channels, clusters = {out['clusters']} "
             f"({out['samples']} fit images, {out['seconds']} s)",
             f"  {'layer':<20} {'C':>4} {'k':>3} {'within':>7} {'between':>7} {'gap':>7} {'clusters':>8} {'chance':>7}"]
    fmt = lambda v: f"{v:7.3f}" if v is not None else "      -"  # noqa: E731
    for r in out["depth_profile"]:
        lines.append(f"  {r['layer']:<20} {r['channels']:>4} {r['k']:>3} {fmt(r['within'])} {fmt(r['between'])} "
                     f"{fmt(r['gap'])} {fmt(r['cluster_offdiag']):>8} {fmt(r['chance'])}")
    lines.append("  within/between: mean Jaccard over same-/different-cluster class pairs; clusters: mean Jaccard "
                 "between different clusters' sets; chance: two random k-sets")
    if path:
        lines.append(f"  written: {path}")
    return "\n".join(lines)
