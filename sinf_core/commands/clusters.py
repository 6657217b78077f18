"""`sinf clusters MODEL`: the hierarchy's clusters or data-driven ones (Ward / spectral), with the ARI."""

from __future__ import annotations

import time

from .common import add_model_options, emit, open_from_args
from .stats import add_stats_options, stats_for

NAME = "clusters"
HELP = "semantic clusters: the data set's hierarchy, Ward on class prototypes, or spectral on the confusion matrix"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "batch_size"), {"bf16": "bf16 autocast for the statistics pass"})
    add_stats_options(p)
    p.add_argument("--method", choices=["hierarchy", "ward", "spectral", "all"], default="hierarchy",
                   help="'all' runs every method (and spectral on soft confusions) and compares them")
    p.add_argument("--k", type=int, default=20, help="number of data-driven clusters (default 20)")
    p.add_argument("--soft", action="store_true",
                   help="spectral: use summed softmax probabilities instead of argmax counts")
    p.add_argument("--assign-labels", choices=["cluster_qr", "kmeans", "discretize"], default="cluster_qr",
                   help="spectral: how the embedding becomes clusters (default cluster_qr: deterministic)")
    p.add_argument("--seed", type=int, default=0, help="random_state for spectral clustering and UMAP")
    p.add_argument("--map", action="store_true", help="add UMAP 2-D maps of the class prototypes and an image sample")
    p.add_argument("--out", help="write the clusters as a hierarchy JSON file (usable with image folders)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from ..clusters import adjusted_rand, cluster_classes, cluster_maps, majority_match
    from ..errors import SinfError
    from ..io import write_json

    t0 = time.perf_counter()
    if args.k < 1:
        raise SinfError("--k must be at least 1")
    exp = open_from_args(args)
    h = exp.hierarchy
    if args.k > h.num_classes:
        raise SinfError(f"--k must be at most the number of classes ({h.num_classes})")
    methods = ["hierarchy", "ward", "spectral", "spectral_soft"] if args.method == "all" else [args.method]
    fit = stats_for(exp, args, "fit", args.json)[0] if (args.map or {"ward", "all"} & {args.method}) else None
    calib = stats_for(exp, args, "calib", args.json)[0] if {"spectral", "all"} & {args.method} else None
    out: dict = {"model": args.model, "k": args.k, "reference": "hierarchy", "results": {}}
    found = {}
    for m in methods:
        base = "spectral" if m.startswith("spectral") else m
        soft = m == "spectral_soft" or (base == "spectral" and args.soft)
        found[m] = cluster_classes(base, h.class_names, args.k, h, fit, calib, soft=soft, random_state=args.seed,
                                 assign_labels=args.assign_labels)
        out["results"][m] = {
            "method": base, "soft": soft if base == "spectral" else None, "k": found[m].num_clusters,
            "source": {"hierarchy": "data set", "ward": "fit split (prototypes)", "spectral": "calibration split"}[base],
            "ari_vs_hierarchy": round(adjusted_rand(found[m], h), 4),
            "sizes": sorted((len(found[m].members(c)) for c in range(found[m].num_clusters)), reverse=True),
            "clusters": majority_match(found[m], h),
        }
    main = found[methods[0] if args.method != "all" else "hierarchy"]
    if args.map:
        maps = cluster_maps(fit, args.seed)
        out["map"] = {"classes": maps["classes"].round(4).tolist(), "class_names": list(h.class_names),
                      "cluster_of_class": list(main.cluster_of_class)}
        if "samples" in maps:
            out["map"]["samples"] = maps["samples"].round(4).tolist()
            out["map"]["sample_labels"] = maps["sample_labels"].tolist()
    if args.out:
        if args.method == "all":
            raise SinfError("--out needs one --method")
        write_json(args.out, main.to_json())
        out["written"] = args.out
    out["seconds"] = round(time.perf_counter() - t0, 1)
    emit(out, args.json, _text(out))
    return 0


def _text(out: dict) -> str:
    lines = [f"{out['model']}: clusters ({out['seconds']} s)"]
    for name, r in out["results"].items():
        lines.append(f"  {name:<14} K={r['k']:<3} ARI vs hierarchy {r['ari_vs_hierarchy']:.4f}  [{r['source']}]")
    if len(out["results"]) == 1:
        r = next(iter(out["results"].values()))
        for c in r["clusters"]:
            lines.append(f"    {c['cluster']:<24} ({c['purity']:.0%} {c['majority']}): {', '.join(c['classes'])}")
    if out.get("written"):
        lines.append(f"  written: {out['written']}")
    return "\n".join(lines)
