"""Network selection on CIFAR-100: ResNet-20 first, ResNet-56 for what ResNet-20 is unsure of (and, as a
combination, ResNet-56 served at the shipped bundle's early-exit point). One run, this machine:

1. logits of both networks on the calibration and report splits (the public weights saw all of train, so
   calibration = a fixed half of test and report = the other half, METHOD.md section 0);
2. the gate's temperature fitted on calibration; every threshold swept on calibration
   (``selection.sweep_chain``); the cheapest point (expected FLOPs) whose calibration top-1 minus 1.645
   paired standard errors stays within the budget of the base (ResNet-56) is chosen;
3. on the report split: top-1 of the chosen point, the shares each network answered, expected FLOPs, and
   the paired throughput ratio (batch 256) and batch-1 latency ratio against ResNet-56 (BatchNorm
   folded, channels_last for every network alike), interleaved in one process.

    python docs/investigate_selection.py [--budget 1.0] [--reps 6]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from sinf_core.bench import candidates_within_budget
    from sinf_core.bundle import Bundle
    from sinf_core.cost import model_cost
    from sinf_core.data import normalise
    from sinf_core.device import cpu_model
    from sinf_core.engine import EXIT, SemanticInference
    from sinf_core.experiment import open_experiment
    from sinf_core.fusion import prepare_for_inference
    from sinf_core.evaluate import collect_logits
    from sinf_core.selection import Gate, NetworkSelection, Stage, argmax_of, fit_gate, sweep_chain
    from sinf_core.timing import interleaved_latency, interleaved_throughput, paired_ratios
    from sinf_core.tuning import STUDIO_HEADS, STUDIO_JSON, CostCache, heads_from_tensors

    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--z", type=float, default=1.645)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--bundle", default=str(REPO / "assets" / "bundles" / "cifar100_resnet56"))
    ap.add_argument("--int8", action="store_true",
                    help="also both networks as OpenVINO int8 (QDQ, calibrated on the calibration split), the chain's "
                         "gate chosen on the int8 ResNet-20's calibration outputs, against OpenVINO int8 ResNet-56")
    args = ap.parse_args()
    torch.set_num_threads(2)

    big = open_experiment("cifar100_resnet56", runtime="cpu")
    small = open_experiment("cifar100_resnet20", runtime="cpu")
    for split in ("calib", "report"):
        a, b = getattr(big.splits, split), getattr(small.splits, split)
        assert (a == b).all(), f"the two models' {split} splits differ"
    ready = lambda m: prepare_for_inference(m, fold_bn=True, channels_last=True)  # noqa: E731
    m20, m56 = ready(small.model), ready(big.model)
    shape = tuple(big.train.images.shape[1:])
    f20, f56 = model_cost(small.model, shape).flops, model_cost(big.model, shape).flops

    def prep(ds):
        x = normalise(ds.images, ds.mean, ds.std)
        return x.contiguous(memory_format=torch.channels_last), ds.labels

    xc, yc = prep(big.calib_data())
    xr, yr = prep(big.report_data())
    calib, rep = big.calib_data(), big.report_data()
    l20c, l56c = collect_logits(m20, calib), collect_logits(m56, calib)
    l20r, l56r = collect_logits(m20, rep), collect_logits(m56, rep)
    gate = fit_gate(l20c, yc)

    # the shipped bundle's early-exit point on ResNet-56, as the chain's last network
    b = Bundle.open(args.bundle, model="cifar100_resnet56")
    bench, info = b.json("bench.json"), b.json(STUDIO_JSON)
    heads = heads_from_tensors(b.tensors(STUDIO_HEADS), info["heads"], STUDIO_HEADS)
    p = bench["exit"]["operating_point"]
    exit_eng = SemanticInference(m56, None, None, ready(heads["exit"][p["tap"]]), tap=p["tap"], mode="exit",
                                 tau=p["tau"], rt=big.runtime)

    out = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
           "gate_temperature": gate.temperature, "flops": {"resnet20": f20, "resnet56": f56},
           "base_top1": {"calib": 100.0 * float((l56c.argmax(1) == yc).double().mean()),
                         "report": 100.0 * float((l56r.argmax(1) == yr).double().mean())},
           "resnet20_top1": {"calib": 100.0 * float((l20c.argmax(1) == yc).double().mean()),
                             "report": 100.0 * float((l20r.argmax(1) == yr).double().mean())}}

    costs = CostCache(big.model, shape)
    stem, tail, _ = costs.tap(p["tap"])
    exit_flops = stem.flops + costs.head(heads["exit"][p["tap"]], p["tap"]).flops

    def exit_costs(res):  # per input: stem + exit head, plus the tail where it did not exit
        return exit_flops + (res.mode_per_sample != EXIT).double() * tail.flops

    ex_c, ex_r = exit_eng.run_pool(xc, 256), exit_eng.run_pool(xr, 256)
    out["exit_alone"] = {"point": p, "calib_top1": 100.0 * float((ex_c.pred == yc).double().mean()),
                         "report_top1": 100.0 * float((ex_r.pred == yr).double().mean()),
                         "report_flops": float(exit_costs(ex_r).mean())}
    conf_c, pred_c = gate.confidence(l20c)
    first = Stage("resnet20", pred_c, f20, conf_c)
    lasts = {"select": (Stage("resnet56", l56c.argmax(1), f56), argmax_of(m56), lambda res: torch.full((len(yr),), f56)),
             "select+exit": (Stage("resnet56 exit", ex_c.pred, exit_costs(ex_c)), exit_eng.predict, None)}
    contenders = {}
    for name, (last, serve, _) in lasts.items():
        pts = sweep_chain(yc, l56c.argmax(1), [first, last])
        cands = candidates_within_budget(pts, out["base_top1"]["calib"], args.budget, 1, args.z)
        if not cands:
            out[name] = {"error": "no point within the budget"}
            continue
        chosen = cands[0]
        g = Gate(gate.temperature, chosen["thresholds"][0])
        chain = NetworkSelection([m20], [g], serve)
        res = chain.run_pool(xr, 256)
        reached = res.stage == 1
        last_cost = exit_costs(ex_r)[reached].sum() if name == "select+exit" else reached.double().sum() * f56
        out[name] = {"chosen_on_calibration": chosen,
                     "report_top1": 100.0 * float((res.pred == yr).double().mean()),
                     "report_answered": res.shares(),
                     "report_flops": f20 + float(last_cost) / len(yr)}
        contenders[name] = chain

    def base_pool(x):
        return torch.cat([m56(c).argmax(1) for c in x.split(256)])

    int8_fns, int8_lat = {}, {}
    if args.int8:
        import tempfile

        import numpy as np

        from sinf_core.backends import OvSession
        from sinf_core.export import calibration_set, export_module, quantize

        cal = calibration_set(big).images.contiguous()
        tmp = Path(tempfile.mkdtemp(prefix="sinf-select-int8-"))
        sess = {}
        for name, m in (("resnet20", m20), ("resnet56", m56)):
            plain = m.to(memory_format=torch.contiguous_format)
            export_module(plain, cal[:2], tmp / f"{name}.onnx", "images", "logits")
            quantize(tmp / f"{name}.onnx", tmp / f"{name}_int8.onnx", cal.numpy())
            sess[name] = OvSession(tmp / f"{name}_int8.onnx", threads=2)
            m.to(memory_format=torch.channels_last)

        def logits_of(name, x):
            x = x.contiguous().numpy()
            return torch.cat([torch.from_numpy(sess[name](np.ascontiguousarray(x[i : i + 256])))
                              for i in range(0, len(x), 256)])

        q20c, q56c = logits_of("resnet20", xc), logits_of("resnet56", xc)
        q20r, q56r = logits_of("resnet20", xr), logits_of("resnet56", xr)
        qgate = fit_gate(q20c, yc)
        qconf, qpred = qgate.confidence(q20c)
        base_q_calib = 100.0 * float((q56c.argmax(1) == yc).double().mean())
        out["int8"] = {"base_top1": {"calib": base_q_calib, "report": 100.0 * float((q56r.argmax(1) == yr).double().mean())},
                       "resnet20_top1_report": 100.0 * float((q20r.argmax(1) == yr).double().mean()),
                       "gate_temperature": qgate.temperature, "quantization": calibration_set(big).summary()}
        pts = sweep_chain(yc, q56c.argmax(1), [Stage("resnet20 int8", qpred, f20, qconf),
                                               Stage("resnet56 int8", q56c.argmax(1), f56)])
        cands = candidates_within_budget(pts, out["base_top1"]["calib"], args.budget, 1, args.z)  # vs the fp32 base
        if cands:
            chosen = cands[0]
            qg = Gate(qgate.temperature, chosen["thresholds"][0])
            n20 = lambda x: torch.from_numpy(sess["resnet20"](np.ascontiguousarray(x.contiguous().numpy())))  # noqa: E731
            n56 = lambda x: torch.from_numpy(sess["resnet56"](np.ascontiguousarray(x.contiguous().numpy()))).argmax(1)  # noqa: E731
            qchain = NetworkSelection([n20], [qg], n56)
            res = qchain.run_pool(xr, 256)
            out["int8"]["select"] = {"chosen_on_calibration": chosen,
                                     "report_top1": 100.0 * float((res.pred == yr).double().mean()),
                                     "report_answered": res.shares(),
                                     "report_flops": f20 + (1.0 - res.shares()[0]) * f56}
            int8_fns["select int8"] = lambda x: qchain.run_pool(x, 256).pred
            int8_lat["select int8"] = lambda x: qchain.run(x).pred
        int8_fns["base int8"] = lambda x: logits_of("resnet56", x).argmax(1)
        int8_lat["base int8"] = lambda x: logits_of("resnet56", x).argmax(1)

    fns = {"base": base_pool, "exit": lambda x: exit_eng.run_pool(x, 256).pred}
    fns.update({k: (lambda x, c=c: c.run_pool(x, 256).pred) for k, c in contenders.items()})
    lat_fns = {"base": lambda x: m56(x).argmax(1), "exit": lambda x: exit_eng.run(x).pred}
    lat_fns.update({k: (lambda x, c=c: c.run(x).pred) for k, c in contenders.items()})
    fns.update(int8_fns)
    lat_fns.update(int8_lat)
    with torch.inference_mode():
        tp = interleaved_throughput(fns, xr[:2048], reps=args.reps)
        lat = interleaved_latency(lat_fns, xr[:200], calls=200)
    out["base_ips"] = tp["base"]["ips"]
    out["latency_ms_bs1"] = {k: round(v["median_ms"], 3) for k, v in lat.items()}
    for k in fns:
        if k == "base":
            continue
        r = paired_ratios(tp, k)
        if k in int8_fns:
            dest = out["int8"].setdefault(k.split()[0], {})
            dest.update({"throughput_ratio_vs_torch_fp32": round(statistics.median(r), 3),
                         "latency_ratio_bs1_vs_torch_fp32": round(lat["base"]["median_ms"] / lat[k]["median_ms"], 3)})
            if k != "base int8":
                dest["throughput_ratio_vs_int8_base"] = round(statistics.median(paired_ratios(tp, k, "base int8")), 3)
                dest["latency_ratio_bs1_vs_int8_base"] = round(lat["base int8"]["median_ms"] / lat[k]["median_ms"], 3)
            continue
        out.setdefault(k if k != "exit" else "exit_alone", {}).update(
            {"throughput_ratio": round(statistics.median(r), 3), "throughput_ratios": [round(v, 3) for v in r],
             "latency_ratio_bs1": round(lat["base"]["median_ms"] / lat[k]["median_ms"], 3)})
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
