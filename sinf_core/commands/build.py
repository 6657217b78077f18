"""`sinf build MODEL`: the whole pipeline into one bundle folder (resumable, cached per step)."""

from __future__ import annotations

import json
import time

from ..config import DEFAULT_BN_SAMPLES, DEFAULT_FILL, FILLS
from .common import StageProgress, add_model_options, open_from_args

NAME = "build"
HELP = "run the whole SINF analysis (stats, clusters, overlap, router, scores, grid, benchmark) into a bundle"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "batch_size"), {"bf16": "bf16 autocast for the analysis passes"})
    p.add_argument("--out", help="bundle folder (default: $SINF_CACHE_DIR/bundles/<model>)")
    p.add_argument("--methods", help="comma-separated filter scores (default: all)")
    p.add_argument("--r-m", type=float, default=0.05, help="removed fraction at the first pruned layer")
    p.add_argument("--r-l-grid", default="0.1,0.3,0.5,0.7,0.9", help="removed fractions at the last layer")
    p.add_argument("--route-target", type=float, default=0.75, help="router accuracy that fixes the attachment tap")
    p.add_argument("--taps", help="comma-separated candidate taps for the router (default: spread over the model)")
    p.add_argument("--grid-taps", default="router",
                   help="comma-separated stem boundaries for the oracle-routing grid ('router' = the router's tap)")
    p.add_argument("--max-per-class", type=int,
                   help="samples per class the data-dependent filter scores look at (default: the scores' own, 100)")
    p.add_argument("--no-bench", action="store_true", help="skip the benchmark step")
    p.add_argument("--bench-options", help="benchmark options as a JSON object, e.g. "
                   "'{\"taps\": [\"layer3.2\"], \"head_fit_samples\": 20000}' (see `sinf bench --help`)")
    p.add_argument("--fill", choices=FILLS, default=DEFAULT_FILL,
                   help="what replaces a removed channel: its mean activation on the cluster's fit images, folded "
                        "into the next layer (mean replacement, default), or zero")
    p.add_argument("--bn-samples", type=int, default=DEFAULT_BN_SAMPLES,
                   help="fit images per cluster on which each subgraph's BatchNorm statistics are re-estimated (the pruning-induced shift, measured on the cluster's own images; default %(default)s; 0: off). The build keeps it only if it wins on the calibration split (step 'bn', bn.json)")
    p.add_argument("--json", action="store_true", help="print the manifest's step summary as JSON")


def run(args) -> int:
    from ..errors import SinfError
    from ..pipeline import BuildSettings, build_bundle, default_bundle_dir

    def floats(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise SinfError(f"not a comma-separated list of numbers: {text!r}") from exc

    settings = BuildSettings(r_M=args.r_m, r_L_grid=floats(args.r_l_grid), route_target=args.route_target,
                             bench=not args.no_bench, fill=args.fill,
                             bn_samples=args.bn_samples)
    if args.methods:
        settings.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    settings.grid_taps = tuple(t.strip() for t in args.grid_taps.split(",") if t.strip())
    if args.max_per_class:
        settings.score_options = {"max_per_class": args.max_per_class}
    if args.bench_options:
        try:
            settings.bench_options = json.loads(args.bench_options)
        except json.JSONDecodeError as exc:
            raise SinfError(f"--bench-options is not valid JSON: {exc}") from None
        if not isinstance(settings.bench_options, dict):
            raise SinfError("--bench-options must be a JSON object")
        from ..bench import BenchOptions

        BenchOptions.from_dict(settings.bench_options).validate()  # a bad option fails before any work
    if args.taps:
        settings.taps = tuple(t.strip() for t in args.taps.split(",") if t.strip())
    t0 = time.perf_counter()
    exp = open_from_args(args)
    out = args.out or default_bundle_dir(args.model)
    bars = StageProgress(quiet=args.json)
    bundle = build_bundle(exp, out, settings, bars, bars.log)
    bars.close()
    seconds = round(time.perf_counter() - t0, 1)
    summary = {"bundle": str(bundle.root), "seconds": seconds,
               "steps": {k: v["seconds"] for k, v in bundle.manifest["steps"].items()},
               "this_run": bundle.manifest.get("last_build_seconds", {})}
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0
