"""SINF on the deployment runtimes (issue 14): accuracy and paired speed of the base network and of SINF's
modes on PyTorch, ONNX Runtime and OpenVINO, float32 and int8, in one process, side by side.

    python docs/investigate_runtimes.py cifar100_resnet56 [--reps 6] [--latency-calls 200] [--work DIR]

1. The bundle's operating point per mode (``bench.json``, chosen on calibration) as a ``RoutedModel``;
   each exported as ONNX (float32) and as int8 (static QDQ, per-channel weights, calibrated on the
   calibration split: the base and stem on images, heads and tail on tap features, each cluster's
   subgraph on its own cluster's images' tap features).
2. Calibration split through the int8 pipeline: exit / route confidences, the routed subgraph's and the
   int8 tail's predictions; gamma and tau re-chosen with the benchmark's rule (``bench.sweep_tap``, the
   cheapest expected-FLOPs point within the benchmark's budget, ``budget_z`` standard errors included).
3. Report split: top-1 of every contender; throughput over the benchmark's pool (2,048 report images,
   batch 256) interleaved and paired against the PyTorch float32 base (BatchNorm folded, channels_last);
   batch-1 latency interleaved the same way; per-piece times on the best int8 backend (where the time goes).

Writes ``docs/runtimes_<model>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("exit", "cascade", "sinf")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def exports(exp, bundle, work: Path, calib) -> dict:
    """{mode: {"rm": RoutedModel, "fp32": folder, "int8": folder}}, reusing folders whose manifest matches."""
    from sinf_core.errors import SinfError
    from sinf_core.export import export_onnx, read_manifest, routed_model_from_bundle

    out = {}
    for mode in MODES:
        rm = routed_model_from_bundle(exp, bundle, mode)
        out[mode] = {"rm": rm}
        for prec in ("fp32", "int8"):
            folder = work / f"{mode}_{prec}"
            try:
                man = read_manifest(folder)
                ok = man["operating_point"] == rm.point and man["precision"] == prec
            except SinfError:
                ok = False
            if not ok:
                t0 = time.perf_counter()
                export_onnx(rm, folder, prec, calib if prec == "int8" else None)
                log(f"exported {mode} {prec} in {time.perf_counter() - t0:.0f} s")
            out[mode][prec] = folder
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--bundle")
    ap.add_argument("--work", help="folder for the exports (default /tmp/sinf_runtimes/<model>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--latency-calls", type=int, default=200)
    ap.add_argument("--calib-samples", type=int, default=1024)
    args = ap.parse_args()

    from sinf_core.backends import open_runtime, torch_runtime
    from sinf_core.bundle import Bundle
    from sinf_core.data import normalise
    from sinf_core.device import cpu_model
    from sinf_core.experiment import open_experiment
    from sinf_core.export import calibration_set
    from sinf_core.fusion import prepare_for_inference
    from sinf_core.pipeline import shipped_bundle_dir
    from sinf_core.runtime_bench import calibration_outputs, rechoose_thresholds
    from sinf_core.timing import interleaved_latency, interleaved_throughput, paired_ratios, spread

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    exp = open_experiment(args.model, runtime="cpu")
    bundle = Bundle.open(args.bundle or shipped_bundle_dir(args.model), model=args.model)
    bench = bundle.json("bench.json")
    bs, pool_n = int(bench["options"]["batch_size"]), int(bench["options"]["pool"])
    work = Path(args.work or f"/tmp/sinf_runtimes/{args.model}")
    calib_set = calibration_set(exp, args.calib_samples)
    ex = exports(exp, bundle, work, calib_set)

    calib, report = exp.calib_data(), exp.report_data()
    xc = normalise(calib.images, calib.mean, calib.std)
    xr = normalise(report.images, report.mean, report.std)
    yc, yr = calib.labels.clone(), report.labels.clone()
    T = args.threads

    # ---- the contenders' runtimes (sessions created once)
    ref = prepare_for_inference(exp.model, fold_bn=True, channels_last=True)
    any_fp32, any_int8 = ex[MODES[0]]["fp32"], ex[MODES[0]]["int8"]
    bases = {
        "torch fp32 base": None,
        "onnxruntime fp32 base": open_runtime(any_fp32, "onnxruntime", threads=T, pieces=["base"]),
        "onnxruntime int8 base": open_runtime(any_int8, "onnxruntime", threads=T, pieces=["base"]),
        "openvino fp32 base": open_runtime(any_fp32, "openvino", threads=T, pieces=["base"]),
        "openvino bf16 base": open_runtime(any_fp32, "openvino", "bf16", threads=T, pieces=["base"]),
        "openvino int8 base": open_runtime(any_int8, "openvino", threads=T, pieces=["base"]),
    }

    def torch_base_pool(x):
        with torch.inference_mode():
            return torch.cat([ref(c.contiguous(memory_format=torch.channels_last)).argmax(1) for c in x.split(bs)])

    pools = {"torch fp32 base": torch_base_pool}
    ones = {"torch fp32 base": torch_base_pool}
    for k, rt in bases.items():
        if rt is not None:
            pools[k] = lambda x, rt=rt: rt.base_pool(x, bs)
            ones[k] = lambda x, rt=rt: rt.run_base(x)

    # ---- which int8 backend is faster on the base (a short screen on calibration images)
    screen = interleaved_throughput({k: pools[k] for k in ("onnxruntime int8 base", "openvino int8 base")},
                                    xc[:512], reps=3)
    best = max(("onnxruntime", "openvino"), key=lambda b: screen[f"{b} int8 base"]["ips"])
    log(f"int8 screen: " + ", ".join(f"{k} {v['ips']:.0f} img/s" for k, v in screen.items()) + f" -> {best}")

    # ---- calibration split through the int8 pipeline; thresholds re-chosen with the benchmark's rule
    with torch.inference_mode():
        base_calib = torch_base_pool(xc)
    base_calib_top1 = 100.0 * float((base_calib == yc).double().mean())
    engines, chosen = {}, {}
    for mode in MODES:
        rt = open_runtime(ex[mode]["int8"], best, threads=T)
        outs = calibration_outputs(rt, xc)
        chosen[mode] = rechoose_thresholds(ex[mode]["rm"], outs, yc, base_calib_top1, bench["options"], exp.model)
        chosen[mode]["int8_tail_calib_top1"] = round(100.0 * float((outs["tail_pred"] == yc).double().mean()), 3)
        log(f"{mode}: bundle gamma {ex[mode]['rm'].gamma} tau {ex[mode]['rm'].tau}; re-chosen on int8 calibration "
            f"{chosen[mode]}")
        engines[f"{best} int8 {mode} (bundle point)"] = rt
        rt2 = open_runtime(ex[mode]["int8"], best, threads=T, gamma=chosen[mode]["gamma"], tau=chosen[mode]["tau"])
        engines[f"{best} int8 {mode} (int8-calibrated point)"] = rt2
    for k, rt in engines.items():
        pools[k] = lambda x, rt=rt: rt.run_pool(x, bs).pred
        ones[k] = lambda x, rt=rt: rt.run(x).pred

    # ---- report-split accuracy
    results: dict[str, dict] = {}
    for k, fn in pools.items():
        pred = fn(xr)
        results[k] = {"top1": round(100.0 * float((pred == yr).double().mean()), 3)}
        if k in engines:
            res = engines[k].run_pool(xr, bs)
            results[k].update({key: round(v / len(yr), 4) for key, v in res.counts().items()})
            results[k]["gamma"], results[k]["tau"] = engines[k].gamma, engines[k].tau
    log("accuracy: " + ", ".join(f"{k} {v['top1']}" for k, v in results.items()))

    # ---- timing: throughput (pool, paired against the torch fp32 base) and batch-1 latency, interleaved
    load_timing = os.getloadavg()
    pool = xr[:pool_n]
    tp = interleaved_throughput(pools, pool, reps=args.reps, warmup=1)
    lat = interleaved_latency(ones, xr[: args.latency_calls], calls=args.latency_calls, warmup=20)
    ref_name = "torch fp32 base"
    same_base = f"{best} int8 base"
    for k in pools:
        r = results[k]
        r["ips"] = round(tp[k]["ips"], 1)
        pr = paired_ratios(tp, k, ref_name)
        r["ratio_vs_torch_fp32"] = round(statistics.median(pr), 3)
        r["ratio_vs_torch_fp32_spread"] = {kk: round(v, 3) for kk, v in spread(pr).items() if kk in ("q25", "q75", "relative_iqr")}
        r["ratio_vs_same_backend_int8_base"] = round(statistics.median(paired_ratios(tp, k, same_base)), 3)
        r["latency_ms"] = round(lat[k]["median_ms"], 3)
        r["latency_p10_p90_ms"] = [round(lat[k]["p10_ms"], 3), round(lat[k]["p90_ms"], 3)]
        r["latency_speedup_vs_torch_fp32"] = round(lat[ref_name]["median_ms"] / lat[k]["median_ms"], 3)
    load_after = os.getloadavg()
    log("timing done")

    # ---- where the time goes on the best int8 backend: each piece alone, batch 256 and batch 1
    rt_c = engines[f"{best} int8 cascade (bundle point)"]
    rt_s = engines[f"{best} int8 sinf (bundle point)"]
    pieces = {}
    for label, rt in (("cascade tap", rt_c), ("sinf tap", rt_s)):
        s = rt.sessions
        xb = np.ascontiguousarray(pool[:bs].numpy())
        hb = s["stem"](xb)
        fns = {"base": lambda z, s=bases[same_base].sessions["base"]: s(np.ascontiguousarray(z.numpy())),
               "stem": lambda z, s=s: s["stem"](np.ascontiguousarray(z.numpy())),
               "tail": lambda z, s=s, hb=hb: s["tail"](hb[: z.shape[0]]),
               "route head": lambda z, s=s, hb=hb: s["route"](hb[: z.shape[0]]),
               "cluster subgraph (mean of 4)": lambda z, rt=rt, hb=hb: [rt.cluster_session[m](hb[: z.shape[0]])
                                                                         for m in (0, 5, 10, 15)]}
        if "exit" in s:
            fns["exit head"] = lambda z, s=s, hb=hb: s["exit"](hb[: z.shape[0]])
        t256 = interleaved_throughput(fns, pool[:bs], reps=max(5, args.reps), warmup=1)
        t1 = interleaved_latency(fns, pool[:64], calls=100, warmup=10)
        pieces[label] = {"tap": rt.manifest["tap"], **{k: {"ms_batch256": round(1000 * t256[k]["median_s"] / (4 if "mean of 4" in k else 1), 3),
                                                         "ms_batch1": round(t1[k]["median_ms"] / (4 if "mean of 4" in k else 1), 4)}
                                                     for k in fns}}
    out = {"model": args.model, "cpu": cpu_model(), "threads": T, "batch_size": bs, "pool": int(pool.shape[0]),
           "reps": args.reps, "latency_calls": args.latency_calls,
           "loadavg": {"start": load_start, "before_timing": load_timing, "after_timing": load_after,
                       "end": os.getloadavg()},
           "best_int8_backend": best, "int8_screen_ips": {k: round(v["ips"], 1) for k, v in screen.items()},
           "base_calib_top1": round(base_calib_top1, 3), "rechosen": chosen,
           "bundle_points": {m: ex[m]["rm"].point for m in MODES}, "quantization": calib_set.summary(),
           "results": results, "pieces": pieces, "seconds": round(time.perf_counter() - t_start, 1),
           "versions": versions()}
    path = REPO / "docs" / f"runtimes_{args.model}.json"
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(markdown(out))


def versions() -> dict:
    import onnxruntime
    import openvino

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def markdown(o: dict) -> str:
    lines = [f"### {o['model']} ({o['cpu']}, {o['threads']} threads; load {o['loadavg']['before_timing'][0]:.2f} before "
             f"timing, {o['loadavg']['after_timing'][0]:.2f} after)", "",
             "| contender | report top-1 | throughput img/s | x torch fp32 (paired) | x same-backend int8 base | "
             "batch-1 ms | batch-1 x torch fp32 | exit / route / fallback |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k, r in o["results"].items():
        mix = f"{r['exit']:.2f} / {r['route']:.2f} / {r['fallback']:.2f}" if "exit" in r else ""
        lines.append(f"| {k} | {r['top1']:.2f} | {r['ips']:.0f} | {r['ratio_vs_torch_fp32']:.2f} | "
                     f"{r['ratio_vs_same_backend_int8_base']:.2f} | {r['latency_ms']:.2f} | "
                     f"{r['latency_speedup_vs_torch_fp32']:.2f} | {mix} |")
    lines += ["", "Pieces alone on the best int8 backend (ms per batch of 256 / per single image):", "",
              "| tap | piece | ms / batch 256 | ms / image at batch 1 |", "| --- | --- | ---: | ---: |"]
    for label, p in o["pieces"].items():
        for k, v in p.items():
            if k != "tap":
                lines.append(f"| {label} {p['tap']} | {k} | {v['ms_batch256']:.2f} | {v['ms_batch1']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
