"""`sinf eval MODEL`: top-1, superclass accuracy of the prediction, per-cluster accuracy."""

from __future__ import annotations

import time

from .common import add_model_options, emit, open_from_args, progress

NAME = "eval"
HELP = "evaluate a model: top-1, superclass accuracy of the prediction, per-cluster accuracy"


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "batch_size"))
    p.add_argument("--split", choices=["test", "calib", "report"], default="test",
                   help="test = the whole official test split (default; compare with published accuracy)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from ..evaluate import accuracy_report, collect_logits

    t0 = time.perf_counter()
    exp = open_from_args(args)
    data = {"test": exp.test, "calib": exp.calib_data(), "report": exp.report_data()}[args.split]
    if len(data) == 0:
        from ..errors import SinfError

        raise SinfError(f"the {args.split} split is empty ({exp.splits.protocol} protocol, {len(exp.train)} train and "
                        f"{len(exp.test)} test images in {exp.test.meta.get('source', exp.test.name)}); "
                        "use --split test or a larger data set")
    bar = progress(len(data), f"eval {args.model}", quiet=args.json)
    logits = collect_logits(exp.model, data, None, exp.runtime, on_batch=bar.update)
    bar.close()
    rep = accuracy_report(logits.argmax(1).numpy(), data.labels.numpy(), data.hierarchy)
    rep.update({"model": args.model, "split": args.split, "seconds": round(time.perf_counter() - t0, 1)})
    lines = [f"{args.model} on {args.split} ({rep['n']} images, {rep['seconds']} s)",
             f"  top-1                 {rep['top1']:.2f} %",
             f"  superclass of pred.   {rep['superclass_acc']:.2f} %",
             "  per-cluster top-1:"]
    lines += [f"    {k:<32} {v:6.2f} %" for k, v in rep["per_cluster"].items() if v is not None]
    emit(rep, args.json, "\n".join(lines))
    return 0
