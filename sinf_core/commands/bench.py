"""`sinf bench MODEL`: base vs SINF vs early exit vs the cascade vs static pruning, in one process.

Operating points are chosen on the calibration split (the fastest measured point within the accuracy
budget, per mode); every reported number comes from the report split; all five contenders are timed
side by side, interleaved, in one run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .common import StageProgress, add_model_options, open_from_args

NAME = "bench"
HELP = "benchmark base / SINF / early exit / cascade / static pruning side by side (accuracy, FLOPs, latency, throughput)"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "channels_last", "batch_size", "threads"),
                      {"bf16": "bf16 autocast for every contender",
                       "channels_last": "run every contender on contiguous (NCHW) tensors (default: channels_last, faster on CPU)",
                       "batch_size": "batch size of every pass and of the throughput runs",
                       "threads": "torch CPU threads for the whole benchmark (1 is steadier on a busy machine)"})
    from ..bench import BenchOptions

    p.add_argument("--budget", type=float, default=None,
                   help=f"accuracy budget: points of calibration top-1 below the base model (default "
                        f"{BenchOptions.budget}; with --backend / --precision: the bundle benchmark's)")
    p.add_argument("--bundle", help="a `sinf build` bundle folder whose router and scores to reuse")
    p.add_argument("--taps", help="comma-separated taps to sweep (default: the router's candidate taps whose stem "
                                  "holds 60-95 %% of the FLOPs)")
    p.add_argument("--schedules", help="semicolon-separated r_M,r_L pairs, e.g. '0.05,0.3;0.25,0.75'")
    p.add_argument("--multiple-of", type=int, default=8, help="round kept channel counts up to this multiple (0: exact)")
    p.add_argument("--score", default="auto", help="cluster-conditioned filter score of the subgraphs (default auto: "
                   "with --bundle, the DCS variant best on calibration in its oracle grid; else dcs)")
    p.add_argument("--static-scores", default="l1,bn_gamma,mean_act,taylor",
                   help="global scores tried for the static network; the best on calibration is used")
    p.add_argument("--static-match", default="best", choices=["best", "sinf", "exit", "cascade"],
                   help="whose expected FLOPs the static network matches (default: the fastest chosen mode)")
    p.add_argument("--bn-samples", type=int, default=None,
                   help="fit images per cluster on which each subgraph's BatchNorm statistics are re-estimated (the pruning-induced shift, measured on the cluster's own images; 0: keep the base model's; default: the bundle's decision, made on calibration by `sinf build`, else 256)")
    p.add_argument("--budget-z", type=float, default=1.645,
                   help="standard errors of a point's calibration difference from base that must also fit the "
                        "budget (default 1.645: one-sided 95 %%; 0: the plain estimate)")
    p.add_argument("--target-ratio", type=float, default=1.15,
                   help="throughput ratio to base the best mode is checked against (default 1.15)")
    p.add_argument("--no-fold-bn", action="store_true",
                   help="run every contender with its BatchNorms as separate layers (default: folded into the convs)")
    p.add_argument("--pool", type=int, default=2048, help="report images in the throughput pool (default 2048)")
    p.add_argument("--reps", type=int, default=6, help="interleaved throughput repetitions (default 6)")
    p.add_argument("--latency-calls", type=int, default=200, help="timed batch-size-1 calls per contender (default 200)")
    p.add_argument("--candidates", type=int, default=3, help="front points timed per mode before choosing (default 3)")
    p.add_argument("--head-samples", type=int, default=50000, help="fit images the heads train on (default 50000)")
    p.add_argument("--head-epochs", type=int, default=8, help="head training epochs (default 8)")
    p.add_argument("--head-distill", type=float, default=0.9,
                   help="weight in [0, 1] of distillation from the base model in the heads' loss (default 0.9)")
    p.add_argument("--chain", help="network selection (contender 'select'): comma-separated registry models run "
                   "before this one, cheapest first, e.g. cifar100_resnet20")
    p.add_argument("--clusters", default="hierarchy",
                   help="what a cluster is: 'hierarchy' (the data set's own; default) or 'ward:K' (K data-driven "
                        "clusters of the fit split's class prototypes; the bundle's router and scores are then not used)")
    p.add_argument("--cache-dir", help="cache root for scores and heads (default $SINF_CACHE_DIR or ~/.cache/sinf)")
    p.add_argument("--out", help="also write the JSON result to this file, and a Markdown report beside it (.md)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="run every contender on this runtime, beside the PyTorch float32 base as the reference (default "
                        "torch). Any backend but torch float32 runs the operating points of --bundle's benchmark "
                        "(default: the model's default bundle), thresholds chosen again on the runtime's calibration outputs")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "bf16"],
                   help="fp32, int8 (static post-training quantization calibrated on the calibration split; onnxruntime, "
                        "openvino) or bf16 (torch autocast, openvino)")
    p.add_argument("--no-reference-rows", action="store_true",
                   help="with --backend / --precision: leave out the torch bf16 and torch.compile reference rows")
    p.add_argument("--reproduce", metavar="RESULT",
                   help="run an earlier `sinf bench` result again: its options and runtime settings, its chosen "
                        "operating points served instead of this machine's timing choice; prints whether every "
                        "point and accuracy is the same (exit status 1 when not)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _options(args) -> dict:
    from ..bench import BenchOptions
    from ..errors import SinfError

    opts: dict = {"budget": BenchOptions.budget if args.budget is None else args.budget, "budget_z": args.budget_z, "target_ratio": args.target_ratio,
                  "multiple_of": args.multiple_of or None, "score": args.score,
                  "static_match": args.static_match,
                  "fold_bn": not args.no_fold_bn, "pool": args.pool, "throughput_reps": args.reps, "latency_calls": args.latency_calls,
                  "candidates_per_mode": args.candidates, "head_fit_samples": args.head_samples,
                  "head_epochs": args.head_epochs, "head_distill": args.head_distill, "cache_dir": args.cache_dir,
                  "bn_samples": args.bn_samples, "clusters": args.clusters,
                  "static_scores": [s.strip() for s in args.static_scores.split(",") if s.strip()]}
    if args.chain:
        opts["chain"] = [t.strip() for t in args.chain.split(",") if t.strip()]
    if args.taps:
        opts["taps"] = [t.strip() for t in args.taps.split(",") if t.strip()]
    if args.schedules:
        try:
            opts["schedules"] = [tuple(float(v) for v in pair.split(",")) for pair in args.schedules.split(";") if pair.strip()]
        except ValueError:
            raise SinfError(f"--schedules takes 'r_M,r_L;r_M,r_L', got {args.schedules!r}") from None
    return opts


def _run_on_runtime(args) -> int:
    from ..artifacts import runtime_result_file
    from ..backends import check_backend
    from ..bundle import Bundle
    from ..io import write_json
    from ..pipeline import default_bundle_dir
    from ..runtime_bench import format_runtime_table, run_runtime_benchmark

    check_backend(args.backend, args.precision)  # a clear error before loading anything
    bundle = Bundle.open(args.bundle or default_bundle_dir(args.model), model=args.model)
    exp = open_from_args(args, bundle)  # at the bundle's image size
    bars = StageProgress(quiet=args.json)
    result = run_runtime_benchmark(exp, bundle, args.backend, args.precision, threads=exp.runtime.threads,
                                   budget=args.budget, reference_rows=not args.no_reference_rows, on_progress=bars, log=bars.log)
    bars.close()
    saved = write_json(Path(bundle.root) / runtime_result_file(args.backend, args.precision), result)
    if args.out:
        write_json(Path(args.out), result)
    print(json.dumps(result) if args.json else format_runtime_table(result) + f"\nSaved in the bundle: {saved}")
    return 0


def run(args) -> int:
    from ..bench import BenchOptions, format_table, run_benchmark
    from ..bench.reproduce import compare, format_comparison, options_from

    if (args.backend, args.precision) != ("torch", "fp32"):
        return _run_on_runtime(args)
    from ..bundle import Bundle
    from ..io import atomic_write, write_json
    from ..report import to_markdown

    t0 = time.perf_counter()
    earlier = _earlier(args.reproduce) if args.reproduce else None
    options: dict = options_from(earlier) if earlier else _options(args)
    BenchOptions.from_dict(options).validate()  # a clear error before loading anything
    bundle = Bundle.open(args.bundle, model=args.model) if args.bundle else None
    exp = open_from_args(args, bundle)  # at the bundle's image size
    bars = StageProgress(quiet=args.json)
    result = run_benchmark(exp, bundle, options, bars, bars.log)
    bars.close()
    result["command_seconds"] = round(time.perf_counter() - t0, 1)
    if earlier:
        result["reproduction"] = compare(earlier, result)
    if args.out:
        out = Path(args.out)
        write_json(out, result)
        md = to_markdown(result, f"{args.model}: base vs SINF vs early exit vs cascade vs static pruning")
        atomic_write(out.with_suffix(".md"), lambda p: p.write_text(md))
    print(json.dumps(result) if args.json else format_table(result))
    if earlier:
        if not args.json:
            print(format_comparison(result["reproduction"]))
        return 0 if result["reproduction"]["reproduced"] else 1
    return 0


def _earlier(path: str) -> dict:
    from ..errors import SinfError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SinfError(f"--reproduce {path}: cannot read a benchmark result there ({exc})") from exc
