"""`sinf subgraph MODEL --tap T`: per-cluster pruned subgraphs from a filter score and a retention
schedule; their oracle-routed accuracy, parameters and FLOPs; optionally their speed against the
unpruned tail, measured side by side."""

from __future__ import annotations

import time

from ..config import DEFAULT_BN_SAMPLES, DEFAULT_FILL, FILLS
from .common import add_model_options, emit, open_from_args, progress

NAME = "subgraph"
HELP = "build per-cluster pruned subgraphs (score + schedule), evaluate them and time them against the tail"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "channels_last", "batch_size", "threads"),
                      {"channels_last": "time with the default NCHW layout instead of channels-last"})
    p.add_argument("--tap", required=True, help="unit where the shared stem ends, e.g. layer2.8 (see the model's units)")
    p.add_argument("--score", default="l1", help="filter score used to pick kept channels (default l1; see `sinf scores`)")
    p.add_argument("--r-m", type=float, default=0.05, help="removed fraction at the first layer after the tap (default 0.05)")
    p.add_argument("--r-l", type=float, default=0.5, help="removed fraction at the last prunable layer (default 0.5)")
    p.add_argument("--multiple-of", type=int, help="round kept channel counts up to a multiple of this (e.g. 8)")
    p.add_argument("--fill", choices=FILLS, default=DEFAULT_FILL,
                   help="what replaces a removed channel: its mean activation over the cluster's fit images "
                        "(mean replacement, default) or zero")
    p.add_argument("--bn-samples", type=int, default=DEFAULT_BN_SAMPLES,
                   help="fit images per cluster on which each subgraph's BatchNorm statistics are re-estimated (the pruning-induced shift, measured on the cluster's own images; default %(default)s; 0: keep the base model's)")
    p.add_argument("--full-head", action="store_true", help="keep every class in the head (default: the cluster's classes)")
    p.add_argument("--split", choices=["calib", "report", "none"], default="calib",
                   help="where to measure accuracy (default calib; use report only for numbers you publish; none: skip)")
    p.add_argument("--speed", default="", metavar="B1,B2",
                   help="also time cluster --speed-cluster's subgraph against the unpruned tail at these batch sizes")
    p.add_argument("--speed-cluster", type=int, default=0, help="cluster index timed by --speed (default 0)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per batch size (median reported)")
    p.add_argument("--fold-bn", action="store_true", help="time with BatchNorms folded into the convs (as `sinf bench` does)")
    p.add_argument("--out", help="write the subgraph specs (JSON) here")
    p.add_argument("--cache-dir", help="score cache root (default $SINF_CACHE_DIR or ~/.cache/sinf)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _batch_sizes(text: str) -> list[int]:
    from ..errors import SinfError

    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SinfError(f"--speed takes comma-separated batch sizes, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise SinfError("batch sizes must be >= 1")
    return sizes


def run(args) -> int:
    from ..scores import get_score

    t0 = time.perf_counter()
    get_score(args.score)
    sizes = _batch_sizes(args.speed)
    exp = open_from_args(args)
    with exp.runtime.applied():
        return _run(args, exp, sizes, t0)


def _run(args, exp, sizes, t0) -> int:
    import torch

    from ..data import iterate_batches
    from ..errors import SinfError
    from ..scores.cache import load_or_compute_scores
    from ..subgraph.batchnorm import BatchNormSamples, check_bn_samples
    from ..subgraph.evaluate import compare_tail_speed, evaluate_cluster_subgraphs
    from ..subgraph.schedule import make_cluster_specs
    from ..subgraph.spec import save_subgraphs

    rt = exp.runtime
    model, hier = exp.model, exp.hierarchy
    model.unit_index(args.tap)  # a clear error before any work
    if not 0 <= args.speed_cluster < hier.num_clusters:
        raise SinfError(f"--speed-cluster must be in 0..{hier.num_clusters - 1}")
    res = load_or_compute_scores([args.score], model, args.model, exp.fit_data(), "fit", hier, None, None, None, None,
                                 args.cache_dir, False, rt)
    table = res[args.score]["scores"]
    fill_stats = None
    if args.fill == "mean":
        from ..stats import cached_stats

        fill_stats, _, _ = cached_stats(args.model, model, exp.train, "fit", indices=exp.splits.fit,
                                        rt=rt, root=args.cache_dir)
    specs = make_cluster_specs(model, args.model, args.tap, {m: table[m] for m in range(hier.num_clusters)}, hier,
                               args.r_m, args.r_l, args.multiple_of, restricted=not args.full_head,
                               fill_stats=fill_stats,
                               bn_samples=BatchNormSamples(model, exp.fit_data(), hier, check_bn_samples(args.bn_samples),
                                                           rt=rt) if args.bn_samples else None)
    out: dict = {"model": args.model, "tap": args.tap, "score": args.score, "r_M": args.r_m, "r_L": args.r_l,
                 "fill": args.fill, "bn_samples": args.bn_samples,
                 "multiple_of": args.multiple_of, "restricted_head": not args.full_head, "split": args.split}
    if args.out:
        out["specs_file"] = str(save_subgraphs(args.out, {hier.cluster_names[m]: s for m, s in specs.items()}))
    lines = [f"{args.model}: {len(specs)} subgraphs after {args.tap}, score {args.score}, "
             f"r_M {args.r_m:.0%} -> r_L {args.r_l:.0%}"]
    if args.split != "none":
        data = exp.calib_data() if args.split == "calib" else exp.report_data()
        bar = progress(len(data), f"evaluate on {args.split}", quiet=args.json)
        ev = evaluate_cluster_subgraphs(model, specs, data, hier, rt, baseline=True,
                                        on_batch=bar.update)
        bar.close()
        out["evaluation"] = ev
        lines.append(f"  oracle-routed accuracy on {args.split} ({ev['n']} images), subgraph vs unpruned tail "
                     "(same restricted head):")
        for r in ev["clusters"]:
            acc = "   n/a" if r["accuracy"] is None else f"{r['accuracy']:6.2f}"
            base = "   n/a" if r["base_accuracy"] is None else f"{r['base_accuracy']:6.2f}"
            lines.append(f"    {r['cluster']:<32} {acc} % vs {base} %   {r['flops'] / 1e6:8.2f} MFLOPs "
                         f"({r['flop_ratio']:.1%} of tail)")
        mean = ev["mean"]
        lines.append(f"  mean over clusters: {mean['accuracy']:.2f} % vs {mean['base_accuracy']:.2f} %, "
                     f"{mean['flops'] / 1e6:.2f} MFLOPs ({mean['flop_ratio']:.1%} of tail); with stem "
                     f"{mean['flops_with_stem'] / 1e6:.2f} MFLOPs (FLOPs = 2 x MACs)")
    if sizes:
        src = exp.calib_data() if args.split != "report" else exp.report_data()
        speed = []
        for b in sizes:
            if b > len(src):
                raise SinfError(f"batch size {b} is larger than the {len(src)} images available")
            x, _ = next(iterate_batches(src, b, None, exp.device))
            speed.append(compare_tail_speed(model, specs[args.speed_cluster], x, args.reps, rt=rt,
                                            fold_bn=args.fold_bn))
        out["speed"] = {"cluster": hier.cluster_names[args.speed_cluster], "threads": torch.get_num_threads(),
                        "runs": speed}
        lines.append(f"  speed, cluster {hier.cluster_names[args.speed_cluster]} "
                     f"({torch.get_num_threads()} threads, median of {args.reps}, interleaved):")
        for s in speed:
            lines.append(f"    batch {s['batch']:>4}: tail {s['tail_ms']:8.2f} ms, subgraph {s['subgraph_ms']:8.2f} ms, "
                         f"time ratio {s['time_ratio']:.3f} (speed-up {s['speedup']:.2f}x), FLOP ratio {s['flop_ratio']:.3f}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    emit(out, args.json, "\n".join(lines))
    return 0
