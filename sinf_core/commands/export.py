"""`sinf export MODEL --format onnx OUT/`: the routed model at the benchmark's operating point as one
ONNX graph per piece (stem, heads, cluster subgraphs, unpruned tail, base) plus a routing manifest."""

from __future__ import annotations

import json

from .common import StageProgress, add_model_options, open_from_args

NAME = "export"
HELP = ("export the routed model at a bundle's operating point for deployment runtimes: one ONNX graph per piece "
        "and a JSON routing manifest (float32, or int8 calibrated on the calibration split)")


def add_arguments(p) -> None:
    from ..export import CALIB_METHODS, DEFAULT_CALIB_METHOD, DEFAULT_CALIB_SAMPLES, PRECISIONS

    add_model_options(p)
    p.add_argument("out", help="folder to write the graphs and routing.json into")
    p.add_argument("--bundle", help="bundle folder (default: $SINF_CACHE_DIR/bundles/<model>)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="graph format (default onnx)")
    p.add_argument("--mode", choices=["sinf", "exit", "cascade"],
                   help="whose operating point to export (default: the benchmark's best mode)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fp32 (default) or int8 (static "
                   "post-training quantization, QDQ, per-channel weights, calibrated on the calibration split)")
    p.add_argument("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES,
                   help=f"calibration images for the int8 ranges (default {DEFAULT_CALIB_SAMPLES}; each cluster's "
                        "subgraph is calibrated on that cluster's share of them)")
    p.add_argument("--calib-method", default=DEFAULT_CALIB_METHOD, choices=list(CALIB_METHODS),
                   help=f"activation range estimator for int8 (default {DEFAULT_CALIB_METHOD})")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")


def run(args) -> int:
    from ..bundle import Bundle
    from ..export import calibration_set, export_onnx, routed_model_from_bundle
    from ..pipeline import default_bundle_dir

    bundle = Bundle.open(args.bundle or default_bundle_dir(args.model), model=args.model)  # a clear error first
    exp = open_from_args(args, bundle)  # at the bundle's image size
    rm = routed_model_from_bundle(exp, bundle, args.mode)
    calib = calibration_set(exp, args.calib_samples) if args.precision == "int8" else None
    bars = StageProgress(quiet=args.json)
    man = export_onnx(rm, args.out, args.precision, calib, bars, {"method": args.calib_method})
    bars.close()
    if args.json:
        print(json.dumps(man))
    else:
        print(f"{args.model}: mode {man['mode']} at {man['tap']} (gamma {man['gamma']}, tau {man['tau']}), "
              f"{man['precision']}, {len(man['pieces'])} graphs -> {args.out}")
    return 0
