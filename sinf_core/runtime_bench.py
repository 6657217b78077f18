"""`sinf bench --backend B --precision P`: every contender on a deployment runtime, beside the PyTorch
float32 base (BatchNorm folded, channels_last) as the reference, in one process, interleaved.

The operating points come from the bundle's PyTorch benchmark (``bench.json``, chosen on calibration):
for each mode its tap, schedule and heads. On the runtime each mode is exported (``export.export_onnx``;
int8: static post-training quantization calibrated on the calibration split only) and its thresholds
gamma / tau are chosen again, with the benchmark's own rule (``bench.sweep_tap`` and
``candidates_within_budget``: the cheapest expected-FLOPs point within the budget, ``budget_z`` standard
errors included), on the runtime's own calibration outputs: an int8 router is not the float32 one.
Every reported figure is on the report split; throughput ratios are paired per repetition.

The JSON has, per contender (``base`` = the runtime's own base network, ``sinf``, ``exit``, ``cascade``,
``static``, ``select``: the benchmark's network selection, its cheaper networks on the runtime too): ``top1``, ``throughput_ips``, ``latency_ms_bs1``, ``flops``, ``params``, ratios against the
same runtime's base and against the reference; ``reference`` (the PyTorch float32 base) and
``reference_rows`` (what a PyTorch user tries first: bf16 autocast where the CPU has fast bf16, and
``torch.compile``).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .artifacts import BENCH, RUNTIME_DIR
from .bench import (BENCH_FORMAT, SELECT, ScheduleData, TapData, candidates_within_budget, head_cost, sweep_tap)
from .cost import model_cost, module_cost, stem_cost, stem_output, tail_cost
from .device import bf16_is_fast, hardware_info
from .errors import SinfError
from .timing import interleaved_latency, interleaved_throughput, paired_ratios, spread

RUNTIME_FORMAT = f"{BENCH_FORMAT}-runtime"
RUNTIME_VERSION = 1
MODES = ("exit", "cascade", "sinf")
REFERENCE = "torch fp32 base"
LogFn = Callable[[str], None]
ProgressFn = Callable[[str, int, int], None]


def _top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * float((pred == labels).double().mean()), 4)


def calibration_outputs(rt, x: torch.Tensor, batch_size: int = 256) -> dict:
    """Per calibration image, through a runtime's pieces: exit / route confidence and argmax, the unpruned
    tail's prediction and the prediction of the subgraph of the cluster the router picked (-1: none)."""
    from .backends import _softmax_max

    s = rt.sessions
    keys = ("exit_conf", "exit_pred", "route_conf", "route_pred", "tail_pred", "sub_pred")
    acc: dict[str, list] = {k: [] for k in keys}
    for i in range(0, x.shape[0], batch_size):
        h = s["stem"](np.ascontiguousarray(x[i : i + batch_size].numpy()))
        acc["tail_pred"].append(torch.from_numpy(s["tail"](h)).argmax(1))
        if "exit" in s:
            c, p = _softmax_max(s["exit"](h), rt.exit_T)
            acc["exit_conf"].append(c)
            acc["exit_pred"].append(p)
        if "route" in s:
            c, p = _softmax_max(s["route"](h), rt.route_T)
            acc["route_conf"].append(c)
            acc["route_pred"].append(p)
            sub = torch.full_like(p, -1)
            for m in range(rt.K):
                idx = (p == m).nonzero().flatten()
                if idx.numel() and rt.cluster_session[m] is not None:
                    z = torch.from_numpy(rt.cluster_session[m](np.ascontiguousarray(h[idx.numpy()])))
                    sub[idx] = rt.cluster_classes[m][z.argmax(1)]
            acc["sub_pred"].append(sub)
    return {k: torch.cat(v) if v else None for k, v in acc.items()}


def rechoose_thresholds(rm, outs: dict, labels: torch.Tensor, base_top1: float, options: dict, model) -> dict:
    """The benchmark's choice (its gamma / tau grids, budget and budget_z) over a runtime's calibration
    outputs at ``rm``'s tap and schedule: the cheapest expected-FLOPs point within the budget."""
    shape, n = rm.input_shape, labels.shape[0]
    some_head = rm.route if rm.route is not None else rm.exit
    td = TapData(rm.tap,
                 outs["route_conf"] if outs["route_conf"] is not None else torch.zeros(n),
                 outs["route_pred"] if outs["route_pred"] is not None else torch.zeros(n, dtype=torch.long),
                 outs["exit_conf"] if outs["exit_conf"] is not None else torch.zeros(n),
                 outs["exit_pred"] if outs["exit_pred"] is not None else torch.full((n,), -1),
                 stem_cost(model, rm.tap, shape), tail_cost(model, rm.tap, shape),
                 head_cost(rm.route if rm.route is not None else some_head, model, rm.tap, shape),
                 head_cost(rm.exit if rm.exit is not None else some_head, model, rm.tap, shape))
    if rm.subgraphs:
        ex = stem_output(model, rm.tap, shape)
        costs = tuple(module_cost(rm.subgraphs[m], ex) for m in range(len(rm.cluster_names)))
        td.schedules.append(ScheduleData(float(rm.point["r_M"]), float(rm.point["r_L"]), {}, costs, outs["sub_pred"]))
    pts = [p for p in sweep_tap(labels, outs["tail_pred"], td, options["gammas"], options["taus"]) if p["mode"] == rm.mode]
    cands = candidates_within_budget(pts, base_top1, float(options["budget"]), 1, float(options["budget_z"]))
    if not cands:
        return {"gamma": rm.gamma, "tau": rm.tau, "within_budget": False,
                "note": "no point within the budget on this runtime's calibration outputs: the PyTorch point is kept"}
    p = cands[0]
    return {"gamma": 1.0 if p["gamma"] is None else p["gamma"], "tau": 1.0 if p["tau"] is None else p["tau"],
            "within_budget": True, "calib_top1": round(p["top1"], 4), "calib_flops": round(p["flops"], 1),
            "exit_rate": round(p["exit_rate"], 4), "route_rate": round(p["route_rate"], 4),
            "fallback_rate": round(p["fallback_rate"], 4)}


def _export(rm, folder: Path, precision: str, calib_set, log: LogFn) -> Path:
    """``rm`` exported into ``folder`` unless an export of the same point and precision is there."""
    from .export import export_once

    t0 = time.perf_counter()
    if export_once(rm, folder, precision, calib_set)[1]:
        log(f"exported {rm.mode} ({precision}) in {time.perf_counter() - t0:.0f} s")
    return folder


def _static_session(exp, bundle, backend: str, precision: str, folder: Path, calib_set, threads: int, bs: int):
    """The benchmark's static network (``export.static_net_from_bundle``) on ``backend``, exported as one
    network (int8: quantized on the calibration images, as the base): (pool fn, batch-1 fn) over
    normalised images -> predictions, or None when the benchmark has none."""
    from .backends import TorchSession, open_session
    from .export import export_network, static_net_from_bundle
    from .fusion import prepare_for_inference

    net = static_net_from_bundle(exp, bundle)
    if net is None:
        return None
    if backend == "torch":
        sess = TorchSession(prepare_for_inference(net, fold_bn=True), precision)
    else:
        path = export_network(net, folder / "static.onnx", "int8" if precision == "int8" else "fp32", calib_set,
                              exp.input_shape)
        sess = open_session(path, backend, precision, threads=threads)

    def one(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess(np.ascontiguousarray(x.numpy()))).argmax(1)

    return (lambda x: torch.cat([one(c) for c in x.split(bs)])), one


class _RuntimeChain:
    """The benchmark's network selection (``select``) on a runtime: each cheaper network of its chain
    exported as one graph (int8: quantized on the calibration images, as the base), its gate's temperature
    fitted and its threshold chosen again on this runtime's own calibration logits, with the benchmark's
    rule (the cheapest expected-FLOPs point within the budget, ``budget_z`` included); the runtime's base
    network answers what reaches it. ``chain`` serves it; ``info`` records the networks and the choice."""

    def __init__(self, exp, torch_select: dict, base_rt, backend: str, precision: str, folder: Path, calib_set,
                 threads: int, bs: int, xc: torch.Tensor, yc: torch.Tensor, base_calib_pred: torch.Tensor,
                 options: dict, log: LogFn):
        from .artifacts import safe_name
        from .backends import TorchSession, open_session
        from .bench.select import chain_networks
        from .export import export_network
        from .fusion import prepare_for_inference
        from .selection import Gate, NetworkSelection, Stage, fit_gate, sweep_chain

        names = list(torch_select["networks"][:-1])
        nets = chain_networks(exp, names, "cpu")
        self.costs = [model_cost(m, exp.input_shape) for _, m in nets] + [model_cost(exp.model, exp.input_shape)]
        sessions = []
        for name, net in nets:
            if backend == "torch":
                sessions.append(TorchSession(prepare_for_inference(net, fold_bn=True), precision))
            else:
                path = export_network(net, folder / f"{safe_name(name)}.onnx", "int8" if precision == "int8" else "fp32",
                                      calib_set, exp.input_shape)
                sessions.append(open_session(path, backend, precision, threads=threads))

        def logits_of(sess):
            return lambda x: torch.from_numpy(sess(np.ascontiguousarray(x.numpy())))

        self.networks = [logits_of(s) for s in sessions]
        stages, temps = [], []
        for (name, _), f, c in zip(nets, self.networks, self.costs):
            lg = torch.cat([f(x) for x in xc.split(bs)])
            g = fit_gate(lg, yc)
            conf, pred = g.confidence(lg)
            stages.append(Stage(name, pred, float(c.flops), conf))
            temps.append(g.temperature)
        stages.append(Stage(exp.model_name, base_calib_pred, float(self.costs[-1].flops)))
        self.names = [s.name for s in stages]
        base_top1 = 100.0 * float((base_calib_pred == yc).double().mean())
        points = sweep_chain(yc, base_calib_pred, stages)
        cands = candidates_within_budget(points, base_top1, float(options["budget"]), 1, float(options["budget_z"]))
        if cands:
            p = cands[0]
            thresholds = p["thresholds"]
            self.choice = {"thresholds": thresholds, "within_budget": True, "calib_top1": round(p["top1"], 4),
                           "calib_flops": round(p["flops"], 1), "answered": [round(v, 4) for v in p["answered"]]}
        else:
            thresholds = list(torch_select["operating_point"]["thresholds"])
            self.choice = {"thresholds": thresholds, "within_budget": False,
                           "note": "no point within the budget on this runtime's calibration outputs: the PyTorch "
                                   "thresholds are kept"}
        self.temperatures = temps
        self.chain = NetworkSelection(self.networks, [Gate(t, th) for t, th in zip(temps, thresholds)],
                                      lambda x: base_rt.run_base(x))
        log(f"select: PyTorch thresholds {torch_select['operating_point']['thresholds']}; on {backend} {precision} "
            f"calibration: {thresholds} (gate temperatures {[round(t, 3) for t in temps]})")

    def pool(self, bs: int) -> Callable:
        return lambda x: self.chain.run_pool(x, bs).pred

    def one(self, x: torch.Tensor) -> torch.Tensor:
        return self.chain.run(x).pred

    def report(self, xr: torch.Tensor, yr: torch.Tensor, bs: int) -> dict:
        """Report-split top-1, the share each network answered and the expected FLOPs (every network that
        ran counts for the inputs that reached it)."""
        res = self.chain.run_pool(xr, bs)
        shares = res.shares() + [0.0] * (len(self.names) - len(res.shares()))
        flops = sum((1.0 - sum(shares[:k])) * c.flops for k, c in enumerate(self.costs))
        return {"top1": _top1(res.pred, yr), "answered": [round(v, 4) for v in shares], "flops": round(flops, 1),
                "params": int(sum(c.params for c in self.costs)), "networks": self.names,
                "gate_temperatures": [round(t, 4) for t in self.temperatures],
                "operating_point": {"mode": "select", "networks": self.names, "thresholds": self.choice["thresholds"]},
                "threshold_choice": self.choice}


def _reference_rows(model, bs: int, input_shape: tuple, log: LogFn) -> dict[str, tuple]:
    """What a PyTorch user tries first, on the reference's own readied module (channels_last): bf16
    autocast where the CPU has fast bf16, and ``torch.compile``; {name: (pool fn, batch-1 fn, note)}."""
    def pool_of(fn):
        def run(x):
            with torch.inference_mode():
                return torch.cat([fn(c.contiguous(memory_format=torch.channels_last)).argmax(1) for c in x.split(bs)])
        return run

    rows: dict[str, tuple] = {}
    if bf16_is_fast("cpu"):
        def bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()
        rows["torch bf16 base"] = (pool_of(bf16), pool_of(bf16), "bf16 autocast (the CPU has fast bf16)")
    else:
        rows["torch bf16 base"] = (None, None, "not run: this CPU has no fast bf16 (AMX or avx512_bf16)")
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():  # compiled for both batch shapes before any clock runs
            for n in (bs, 1):
                compiled(torch.zeros(n, *input_shape).contiguous(memory_format=torch.channels_last))
        rows["torch.compile base"] = (pool_of(compiled), pool_of(compiled), "torch.compile (inductor, default mode)")
        log(f"torch.compile: compiled in {time.perf_counter() - t0:.0f} s")
    except Exception as exc:  # no C++ compiler, an unsupported op: the row says why it is missing
        rows["torch.compile base"] = (None, None, f"not run: torch.compile failed here ({type(exc).__name__}: "
                                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
    return rows


def run_runtime_benchmark(exp, bundle, backend: str, precision: str, *, work_dir: str | Path | None = None,
                          threads: int | None = None, reps: int | None = None, latency_calls: int | None = None,
                          calib_samples: int | None = None, budget: float | None = None, reference_rows: bool = True,
                          on_progress: ProgressFn | None = None, log: LogFn = lambda s: None) -> dict:
    """Every contender of the bundle's benchmark on ``backend`` at ``precision`` beside the PyTorch float32
    base; see the module docstring. ``work_dir`` keeps the exports (default: the bundle's ``runtime/``);
    ``budget``: the accuracy budget (points) the thresholds are chosen again within (default: the bundle
    benchmark's)."""
    from .backends import check_backend, open_runtime, torch_runtime
    from .data import normalise
    from .export import DEFAULT_CALIB_SAMPLES, calibration_set, routed_model_from_bundle
    from .fusion import prepare_for_inference
    from .tuning import chosen_points

    check_backend(backend, precision)
    if backend == "torch" and precision == "fp32":
        raise SinfError("the PyTorch float32 benchmark is `sinf bench` without --backend / --precision")
    if bundle is None or not bundle.has("bench"):
        raise SinfError("a runtime benchmark runs the operating points of a bundle's PyTorch benchmark: build "
                        "the bundle with its benchmark first (`sinf build MODEL`), or pass --bundle")
    prog = on_progress or (lambda s, d, t: None)
    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        bench = bundle.json(BENCH)
        if bench.get("model") not in (None, exp.model_name):
            raise SinfError(f"the bundle's benchmark is of {bench.get('model')!r}, not {exp.model_name!r}")
        opts = dict(bench["options"])
        if budget is not None:
            if not (isinstance(budget, (int, float)) and 0 <= float(budget) < float("inf")):
                raise SinfError(f"the accuracy budget must be a finite number of points >= 0, got {budget!r}")
            opts["budget"] = float(budget)
        bs, pool_n = int(opts["batch_size"]), int(opts["pool"])
        reps = int(reps or opts.get("throughput_reps") or 6)
        latency_calls = int(latency_calls or opts.get("latency_calls") or 200)
        T = torch.get_num_threads()
        work = Path(work_dir) if work_dir else Path(bundle.root) / RUNTIME_DIR
        points = chosen_points(bench)
        modes = [m for m in MODES if m in points]
        calib, report = exp.calib_data(), exp.report_data()
        xc, xr = normalise(calib.images, calib.mean, calib.std), normalise(report.images, report.mean, report.std)
        yc, yr = calib.labels.clone(), report.labels.clone()
        calib_set = calibration_set(exp, calib_samples or DEFAULT_CALIB_SAMPLES) if precision == "int8" else None
        export_prec = "int8" if precision == "int8" else "fp32"

        rms = {m: routed_model_from_bundle(exp, bundle, m) for m in modes}
        if not rms:
            raise SinfError("the bundle's benchmark chose no operating point for any mode")
        runtimes = {}
        for i, m in enumerate(modes):
            if backend == "torch":
                runtimes[m] = torch_runtime(rms[m], precision)
            else:
                folder = _export(rms[m], work / f"{m}_{export_prec}", export_prec, calib_set, log)
                runtimes[m] = open_runtime(folder, backend, precision, threads=T)
            prog(f"export ({backend} {precision})", i + 1, len(modes))
        base_rt = runtimes[modes[0]]  # every export holds the base network; its session runs the base
        static = _static_session(exp, bundle, backend, precision, work / f"static_{export_prec}", calib_set, T, bs)

        ref_model = prepare_for_inference(exp.model, fold_bn=True, channels_last=True)

        def reference_pool(x):
            with torch.inference_mode():
                return torch.cat([ref_model(c.contiguous(memory_format=torch.channels_last)).argmax(1) for c in x.split(bs)])

        # thresholds chosen again on this runtime's calibration outputs, against its own base
        base_calib_pred = base_rt.base_pool(xc, bs)
        base_calib_top1 = _top1(base_calib_pred, yc)
        chosen = {}
        for m in modes:
            outs = calibration_outputs(runtimes[m], xc, bs)
            chosen[m] = rechoose_thresholds(rms[m], outs, yc, base_calib_top1, opts, exp.model)
            runtimes[m].set_thresholds(chosen[m]["gamma"], chosen[m]["tau"])
            log(f"{m}: PyTorch point gamma {rms[m].gamma} tau {rms[m].tau}; on {backend} {precision} calibration: "
                f"gamma {chosen[m]['gamma']} tau {chosen[m]['tau']}")

        pools: dict[str, Callable] = {REFERENCE: reference_pool, "base": lambda x: base_rt.base_pool(x, bs)}
        ones: dict[str, Callable] = {REFERENCE: reference_pool, "base": lambda x: base_rt.run_base(x)}
        for m in modes:
            pools[m] = lambda x, rt=runtimes[m]: rt.run_pool(x, bs).pred
            ones[m] = lambda x, rt=runtimes[m]: rt.run(x).pred
        if static is not None:
            pools["static"], ones["static"] = static
        chain = None
        if (bench.get(SELECT) or {}).get("operating_point"):
            chain = _RuntimeChain(exp, bench[SELECT], base_rt, backend, precision, work / f"select_{export_prec}",
                                  calib_set, T, bs, xc, yc, base_calib_pred, opts, log)
            pools[SELECT], ones[SELECT] = chain.pool(bs), chain.one
        notes = {}
        if reference_rows:
            for name, (pool_fn, one_fn, note) in _reference_rows(ref_model, bs, tuple(xc.shape[1:]), log).items():
                notes[name] = note
                if pool_fn is not None:
                    pools[name], ones[name] = pool_fn, one_fn

        results: dict[str, dict] = {}
        for i, (name, fn) in enumerate(pools.items()):
            if name in modes:  # one pass gives the predictions and the exit / route / fallback shares
                res = runtimes[name].run_pool(xr, bs)
                results[name] = {"top1": _top1(res.pred, yr),
                                 **{k: round(v / len(yr), 4) for k, v in res.counts().items()}}
            elif name == SELECT:
                results[name] = chain.report(xr, yr, bs)
            else:
                results[name] = {"top1": _top1(fn(xr), yr)}
            prog("report accuracy", i + 1, len(pools))
        load_timing = os.getloadavg()
        tp = interleaved_throughput(pools, xr[:pool_n], reps=reps, warmup=1, on_progress=prog)
        lat = interleaved_latency(ones, xr[:latency_calls], calls=latency_calls, warmup=min(20, latency_calls),
                                  on_progress=prog)
        load_after = os.getloadavg()
    finally:
        torch.set_num_threads(old_threads)

    base_cost = model_cost(exp.model, exp.input_shape)
    for name, r in results.items():
        r["throughput_ips"] = round(tp[name]["ips"], 3)
        r["latency_ms_bs1"] = round(lat[name]["median_ms"], 4)
        r["latency_p10_p90_ms"] = [round(lat[name]["p10_ms"], 4), round(lat[name]["p90_ms"], 4)]
        vs_ref = paired_ratios(tp, name, REFERENCE)
        r["throughput_ratio_vs_reference"] = round(statistics.median(vs_ref), 4)
        sp = spread(vs_ref)
        r["throughput_ratio_vs_reference_q25_q75"] = [round(sp["q25"], 4), round(sp["q75"], 4)]
        r["latency_speedup_vs_reference"] = round(lat[REFERENCE]["median_ms"] / lat[name]["median_ms"], 4)
        if name in ("base", "static", SELECT, *modes):
            r["throughput_ratio"] = round(statistics.median(paired_ratios(tp, name, "base")), 4)
            r["latency_speedup"] = round(lat["base"]["median_ms"] / lat[name]["median_ms"], 4)
    ref = results.pop(REFERENCE)
    ref.update({"flops": base_cost.flops, "params": base_cost.params, "backend": "torch", "precision": "fp32",
                "note": "PyTorch float32, BatchNorm folded, channels_last"})
    out: dict = {"format": RUNTIME_FORMAT, "version": RUNTIME_VERSION, "model": exp.model_name,
                 "dataset": exp.train.name, "backend": backend, "precision": precision, "reference": ref}
    results["base"].update({"flops": base_cost.flops, "params": base_cost.params})
    for m in MODES:
        if m in modes:
            torch_res = bench.get(m) or {}
            results[m].update({"flops": torch_res.get("flops"), "params": torch_res.get("params"),
                               "operating_point": {**rms[m].point, "gamma": chosen[m]["gamma"], "tau": chosen[m]["tau"]},
                               "threshold_choice": chosen[m]})
        else:
            results[m] = {"top1": None, "throughput_ips": None, "latency_ms_bs1": None, "flops": None, "params": None,
                          "note": "no operating point in the bundle's benchmark"}
    torch_static = bench.get("static") or {}
    if "static" in results:
        results["static"].update({k: torch_static.get(k) for k in ("flops", "params", "tap", "score", "r", "kept",
                                                                    "matched_mode")})
    else:
        results["static"] = {"top1": None, "throughput_ips": None, "latency_ms_bs1": None,
                             "flops": torch_static.get("flops"), "params": torch_static.get("params"),
                             "note": "the bundle's benchmark has no static network"}
    if SELECT not in results:
        results[SELECT] = {"top1": None, "throughput_ips": None, "latency_ms_bs1": None, "flops": None, "params": None,
                           "note": "the bundle's benchmark has no network selection (`--chain`)"}
    for name in ("base", "static", SELECT, *MODES):
        r = results[name]
        if r.get("top1") is not None:
            r["top1_delta"] = round(r["top1"] - results["base"]["top1"], 4)
            r["top1_delta_vs_reference"] = round(r["top1"] - ref["top1"], 4)
    budget = float(opts["budget"])
    within = [m for m in modes if results[m]["top1_delta"] >= -budget]
    out.update({name: results[name] for name in ("base", *MODES, "static", SELECT)})
    out["best_mode"] = max(within, key=lambda m: results[m]["throughput_ratio"]) if within else None
    out["reference_rows"] = {name: {**results[name], "note": notes[name]} if name in results else {"note": notes[name]}
                             for name in notes}
    hw = hardware_info(torch.device("cpu"))
    hw.update({"threads": T, "loadavg_before_timing": [round(v, 2) for v in load_timing],
               "loadavg_after_timing": [round(v, 2) for v in load_after]})
    out.update({"hardware": hw, "versions": _versions(backend),
                "options": {"batch_size": bs, "pool": int(min(pool_n, len(yr))), "throughput_reps": reps,
                            "latency_calls": latency_calls, "budget": budget, "budget_z": opts["budget_z"],
                            "calibration_images": None if calib_set is None else int(calib_set.images.shape[0])},
                "quantization": None if calib_set is None else calib_set.summary(),
                "base_calib_top1": base_calib_top1, "seconds": round(time.perf_counter() - t_start, 1),
                "bundle_bench": bundle.step_key("bench")})
    return out


def _versions(backend: str) -> dict:
    v = {"torch": torch.__version__}
    try:
        if backend == "onnxruntime":
            import onnxruntime

            v["onnxruntime"] = onnxruntime.__version__
        elif backend == "openvino":
            import openvino

            v["openvino"] = openvino.__version__
    except ImportError:
        pass
    return v


def format_runtime_table(res: dict) -> str:
    """The runtime benchmark as a text table: ratios against the same runtime's base and the reference."""
    head = (f"{res['model']} on {res['backend']} {res['precision']} ({res['hardware']['cpu']}, "
            f"{res['hardware']['threads']} threads); reference: PyTorch float32 base")
    rows = [("contender", "top-1", "img/s", "x base", "x ref", "bs1 ms", "bs1 x ref")]
    ref = res["reference"]
    rows.append(("reference (torch fp32)", f"{ref['top1']:.2f}", f"{ref['throughput_ips']:.0f}", "", "1.00",
                 f"{ref['latency_ms_bs1']:.2f}", "1.00"))
    entries = [(n, res[n]) for n in ("base", *MODES, "static", SELECT) if n in res] + list(res.get("reference_rows", {}).items())
    for name, r in entries:
        if r.get("top1") is None:
            rows.append((name, "-", "-", "-", "-", "-", "-"))
            continue
        rows.append((name, f"{r['top1']:.2f}", f"{r['throughput_ips']:.0f}",
                     f"{r['throughput_ratio']:.2f}" if "throughput_ratio" in r else "",
                     f"{r['throughput_ratio_vs_reference']:.2f}", f"{r['latency_ms_bs1']:.2f}",
                     f"{r['latency_speedup_vs_reference']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, ""] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                          for row in rows]
    notes = [f"{n}: {r['note']}" for n, r in entries if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))
