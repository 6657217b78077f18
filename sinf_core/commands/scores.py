"""`sinf scores MODEL`: compute (or load from the cache) filter scores for every cluster and prunable layer."""

from __future__ import annotations

import json
import time

from .common import add_model_options, emit, open_from_args, progress

NAME = "scores"
HELP = "compute and cache filter scores (DCS and the baselines) for every cluster and prunable layer"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "batch_size"), {"bf16": "bf16 autocast for the feature pass"})
    p.add_argument("--methods", default="all",
                   help="comma-separated score names, or 'all' (default): dcs,l1,bn_gamma,mean_act,apoz,taylor,"
                        "hrank,chip,tvs,random")
    p.add_argument("--max-per-class", type=int, help="samples per class of the fit split (default 100; 0 = all)")
    p.add_argument("--p", type=int, help="DCS pooling size p (default 2)")
    p.add_argument("--probe", choices=["logreg", "lda"], help="DCS probe (default logreg)")
    p.add_argument("--C", type=float, help="DCS inverse L2 regularisation strength (default 1.0)")
    p.add_argument("--seed", type=int, help="sampling / random-score seed (default 0)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other score option, e.g. chip_per_class=10 or tvs_measure=bhattacharyya (repeatable)")
    p.add_argument("--cache-dir", help="cache root (default $SINF_CACHE_DIR or ~/.cache/sinf)")
    p.add_argument("--recompute", action="store_true", help="ignore cached scores and compute them again")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def parse_options(args) -> dict:
    from ..errors import SinfError

    opts: dict = {}
    for item in args.option:
        if "=" not in item:
            raise SinfError(f"--option needs KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    for k in ("max_per_class", "p", "probe", "C", "seed"):
        v = getattr(args, k)
        if v is not None:
            opts[k] = v
    return opts


def run(args) -> int:
    from ..scores import SCORES, check_options
    from ..scores.cache import load_or_compute_scores

    t0 = time.perf_counter()
    methods = list(SCORES) if args.methods.strip() == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    opts = parse_options(args)
    check_options(methods, opts)  # unknown methods / options fail before the (slow) data and model load
    exp = open_from_args(args)
    data = exp.fit_data()
    bars: dict = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage.endswith(" done"):
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = progress(total, stage, unit="img" if stage in ("features", "taylor") else "fit",
                                         quiet=args.json)
        bar.n = done
        bar.refresh()

    res = load_or_compute_scores(methods, exp.model, args.model, data, "fit", exp.hierarchy, None, opts, None, None,
                                 args.cache_dir, args.recompute, exp.runtime, on_progress)
    for bar in bars.values():
        bar.close()
    layers = [l.name for l in exp.model.prunable_layers()]
    out = {
        "model": args.model, "split": "fit", "n_fit": len(data), "layers": layers,
        "clusters": list(exp.hierarchy.cluster_names), "seconds": round(time.perf_counter() - t0, 1),
        "methods": {m: {"cached": r["cached"], "seconds": r["seconds"], "file": str(r["file"]), "options": r["options"]}
                    for m, r in res.items()},
    }
    fresh = [r["meta"] for r in res.values() if not r["cached"]]
    if fresh:
        out["shared_pass_seconds"] = fresh[0]["shared_pass_seconds"]
        out["compute_seconds"] = fresh[0]["batch_seconds"]
    lines = [f"{args.model}: scores for {len(out['clusters'])} clusters x {len(layers)} layers "
             f"(fit split, {len(data)} images; {out['seconds']} s)"]
    if fresh:
        lines.append(f"  computed in {out['compute_seconds']:.1f} s, of which the shared feature pass "
                     f"{out['shared_pass_seconds']:.1f} s; per method (its own work):")
    for m, r in out["methods"].items():
        lines.append(f"  {m:<9} {'cached  ' if r['cached'] else 'computed'} {r['seconds']:8.1f} s  {r['file']}")
    emit(out, args.json, "\n".join(lines))
    return 0
