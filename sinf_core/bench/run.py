"""The benchmark run: one plain function per stage (heads, scores, precompute, sweep, screen, static,
report accuracy, timing, summary) over one ``BenchRun`` holding what the stages hand each other."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..artifacts import ROUTER
from ..cost import Cost, count_flops, count_params, model_cost
from ..data import ImageDataset
from ..device import hardware_info
from ..engine import SemanticInference
from ..errors import SinfError
from ..models import SinfModel
from ..router import RouteHead, RoutePredictor
from ..runtime import Runtime
from ..subgraph.batchnorm import BatchNormSamples
from ..subgraph.schedule import first_pruned_index
from ..subgraph.slicing import build_subgraph
from ..timing import interleaved_latency, interleaved_throughput, paired_ratios
from .contenders import _Contenders, _images_on
from .costs import PathCosts
from .heads import default_bench_taps, fit_bench_heads
from .inputs import _cluster_scores, _fit_stats, _global_scores, bench_clusters, resolve_bn_samples, resolve_score
from .metrics import _per_cluster, result_metrics
from .options import (BENCH_FORMAT, BENCH_VERSION, CONTENDERS, MODES, SELECT_COMBOS, BenchOptions, LogFn, ProgressFn,
                      recorded_options, runtime_overrides)
from .precompute import stem_features, tap_sweep_data
from .reproduce import pin_candidates
from .select import SELECT, run_select
from .static import StaticNet, _static_calib_top1, static_for_flops
from .sweep import TapData, _point_label, _round_point, candidates_within_budget, pareto_front, pick_fastest, sweep_tap


def run_benchmark(
    exp,
    bundle=None,
    options: BenchOptions | Mapping[str, Any] | None = None,
    on_progress: ProgressFn | None = None,
    log: LogFn = lambda s: None,
) -> dict:
    """Run the whole benchmark for experiment ``exp`` (an ``Experiment``); ``bundle`` (a ``Bundle`` or
    None) supplies the route heads and cluster scores when it has them. Returns a JSON-able dict with,
    for each of base / sinf / exit / cascade / static: top1, latency_ms_bs1, throughput_ips, flops,
    params (plus ratios to base, route accuracy, fallback rate, per-cluster accuracy, the chosen
    operating point), the Pareto fronts, the timing screen and ``hardware``."""
    opts = options if isinstance(options, BenchOptions) else BenchOptions.from_dict(options)
    opts.validate()
    rt = exp.runtime.with_(**runtime_overrides(options))  # every contender runs on it
    with rt.applied():
        return _run(exp, bundle, opts, rt, on_progress or (lambda s, d, t: None), log)


@dataclass
class BenchRun:
    """What one benchmark run's stages hand each other. Set up by ``_start``; each stage fills its part."""

    exp: Any
    bundle: Any
    opts: BenchOptions
    rt: Runtime
    prog: ProgressFn
    log: LogFn
    model: SinfModel
    calib: ImageDataset
    report: ImageDataset
    input_shape: tuple
    hardware: dict
    t_start: float
    cluster_bundle: Any = None  # the bundle where its router, heads and scores fit the clusters (else None)
    clusters_info: dict = field(default_factory=dict)
    t0: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    # heads
    taps: list[str] = field(default_factory=list)
    route_heads: dict[str, RouteHead] = field(default_factory=dict)
    exit_heads: dict[str, RouteHead] = field(default_factory=dict)
    head_summary: dict = field(default_factory=dict)
    # scores
    score_name: str = ""
    cluster_scores: dict = field(default_factory=dict)
    fill_stats: Any = None
    bn_samples: BatchNormSamples | None = None
    # precompute (calibration)
    work: SinfModel | None = None
    labels: torch.Tensor | None = None
    feats: dict[str, torch.Tensor] | None = None
    base_pred: torch.Tensor | None = None
    base_top1_calib: float = 0.0
    tap_data: dict[str, TapData] = field(default_factory=dict)
    # sweep
    points: list[dict] = field(default_factory=list)
    fronts: dict[str, list[dict]] = field(default_factory=dict)
    cands: dict[str, list[dict]] = field(default_factory=dict)
    per_tap: dict = field(default_factory=dict)
    # engines and the screen
    contenders: _Contenders | None = None
    served: nn.Module | None = None
    served_route: dict[str, nn.Module] = field(default_factory=dict)
    served_exit: dict[str, nn.Module] = field(default_factory=dict)
    base_fns: tuple[Callable, Callable] | None = None
    engines: dict[str, tuple[SemanticInference, PathCosts]] = field(default_factory=dict)
    screen: dict[str, list[dict]] = field(default_factory=dict)
    screen_pool: torch.Tensor | None = None  # calibration images every candidate is screened on
    chosen: dict[str, dict] = field(default_factory=dict)
    # static network
    static_info: dict = field(default_factory=dict)
    static_net: StaticNet | None = None
    # report split
    results: dict[str, dict] = field(default_factory=dict)
    finals: dict[str, tuple[Callable, Callable]] = field(default_factory=dict)
    x_report: torch.Tensor | None = None
    pool_size: int = 0

    @property
    def hier(self):
        return self.exp.hierarchy

    @property
    def dev(self) -> torch.device:
        return self.rt.device

    @property
    def z(self) -> float:
        return float(self.opts.budget_z)

    def lap(self, name: str) -> None:
        """Record the seconds since the previous lap (or the start of the heads) under ``name``."""
        self.seconds[name] = round(time.perf_counter() - self.t0, 2)
        self.t0 = time.perf_counter()


def _run(exp, bundle, opts: BenchOptions, rt: Runtime, prog: ProgressFn, log: LogFn) -> dict:
    r = _start(exp, bundle, opts, rt, prog, log)
    _heads(r)
    _scores(r)
    _precompute(r)
    _sweep(r)
    _screen(r)
    _static(r)
    _report_accuracy(r)
    run_select(r)
    r.lap("select")
    tp, lat = _timing(r)
    return _summary(r, tp, lat)


def _start(exp, bundle, opts: BenchOptions, rt: Runtime, prog: ProgressFn, log: LogFn) -> BenchRun:
    t_start = time.perf_counter()
    model: SinfModel = exp.model.eval()
    calib, report = exp.calib_data(), exp.report_data()
    if len(calib) == 0:
        raise SinfError("the calibration split is empty: operating points are chosen on it")
    if len(report) == 0:
        raise SinfError("the report split is empty: there is nothing to report the benchmark on")
    if len(exp.splits.fit) == 0:
        raise SinfError("the fit split is empty: the heads are trained on it")
    exp, info = bench_clusters(exp, bundle, opts, rt, prog)
    if info["method"] != "hierarchy":
        log(f"clusters: {info['k']} by {info['method']} (sizes {info['sizes']}); the bundle's router, heads and "
            "scores are for its own clusters and are not used")
    return BenchRun(exp, bundle, opts, rt, prog, log, model, calib, report, exp.input_shape,
                    hardware_info(rt.device), t_start, bundle if info["method"] == "hierarchy" else None, info)


def _heads(r: BenchRun) -> None:
    """The swept taps and the route / exit heads at each."""
    r.t0 = time.perf_counter()
    model, opts = r.model, r.opts
    router = None
    if r.cluster_bundle is not None:
        router = RoutePredictor.load(r.cluster_bundle.root, ROUTER)
    taps = list(opts.taps) if opts.taps else default_bench_taps(model, None if router is None else router.taps_,
                                                                   r.input_shape)
    for t in taps:
        model.unit_index(t)
    taps = sorted(dict.fromkeys(taps), key=model.unit_index)
    taps = [t for t in taps if first_pruned_index(model, t) < len(model.prunable_layers())]
    if not taps:
        raise SinfError("no swept tap leaves a prunable layer after it")
    r.taps = taps
    r.route_heads, r.exit_heads, r.head_summary = fit_bench_heads(r.exp, taps, opts, router, r.prog, r.log,
                                                                       r.cluster_bundle)
    r.lap("heads")


def _scores(r: BenchRun) -> None:
    """The subgraphs' cluster scores, the fill statistics and the BatchNorm samples."""
    exp, opts = r.exp, r.opts
    r.score_name = resolve_score(r.bundle, opts.score)
    r.cluster_scores = _cluster_scores(exp, r.cluster_bundle, r.score_name, opts, r.rt, r.prog)
    r.fill_stats = _fit_stats(exp, r.bundle, opts, r.rt, r.prog) if opts.fill == "mean" else None
    n_bn = resolve_bn_samples(r.bundle, opts.bn_samples)
    r.opts = opts = replace(opts, bn_samples=n_bn)  # recorded as used
    r.bn_samples = BatchNormSamples(r.model, exp.fit_data(), r.hier, n_bn, opts.seed, r.rt) if n_bn else None
    r.log(f"subgraph score: {r.score_name}; removed channels filled with {opts.fill}; BatchNorm statistics "
          + (f"re-estimated on {n_bn} fit images per cluster" if r.bn_samples else "of the base model"))
    r.lap("scores")


def _precompute(r: BenchRun) -> None:
    """On calibration: the stem features, the base model's predictions and every tap's sweep data."""
    model, opts, rt = r.model, r.opts, r.rt
    r.work = rt.ready(model)  # a copy unless already so
    r.labels = r.calib.labels.clone()
    r.feats, r.base_pred = stem_features(r.work, r.calib, r.taps, rt.with_(on_progress=r.prog))
    r.base_top1_calib = 100.0 * float((r.base_pred == r.labels).double().mean())
    for i, tap in enumerate(r.taps):
        r.tap_data[tap] = tap_sweep_data(
            model, r.exp.model_name, tap, r.feats[tap], rt.ready(r.route_heads[tap]), rt.ready(r.exit_heads[tap]),
            r.cluster_scores, r.hier, opts.schedules, opts.multiple_of, rt, r.work,
            r.input_shape, r.fill_stats, r.bn_samples)
        r.prog("sweep subgraphs (calibration)", i + 1, len(r.taps))
    r.lap("precompute")


def _sweep(r: BenchRun) -> None:
    """Every operating point's calibration top-1 and expected FLOPs; the fronts and the candidates."""
    opts, z, base = r.opts, r.z, r.base_top1_calib
    r.points = [p for tap in r.taps for p in sweep_tap(r.labels, r.base_pred, r.tap_data[tap], opts.gammas, opts.taus)]
    r.fronts = {m: pareto_front([p for p in r.points if p["mode"] == m]) for m in MODES}
    r.cands = {m: candidates_within_budget([p for p in r.points if p["mode"] == m], base, opts.budget,
                                           opts.candidates_per_mode, z)
               for m in MODES}
    r.per_tap = {m: {tap: [_round_point(p) for p in candidates_within_budget(
        [p for p in r.points if p["mode"] == m and p["tap"] == tap], base, opts.budget, 1, z)]
        for tap in r.taps} for m in MODES}
    for m in MODES:
        if m in opts.pinned:  # an earlier run's choice, served whatever this machine's screen would pick
            r.cands[m] = pin_candidates(r.points, m, opts.pinned)
    r.lap("sweep")
    r.log(f"sweep: {len(r.points)} points; base calibration top-1 {base:.2f} %; "
          + ", ".join(f"{m}: {len(r.fronts[m])} on the front, {len(r.cands[m])} timed" for m in MODES))


def _make_engine(r: BenchRun, p: dict) -> tuple[SemanticInference, PathCosts]:
    """The engine of operating point ``p`` on the served (readied, shared) modules, and its path costs."""
    C = r.contenders
    td = r.tap_data[p["tap"]]
    sd = None if p["r_M"] is None else next(s for s in td.schedules if (s.r_M, s.r_L) == (p["r_M"], p["r_L"]))
    mode = p["mode"]
    subs = None
    if sd is not None:
        subs = [C.ready(build_subgraph(r.work, sd.specs[m])) for m in range(r.hier.num_clusters)]
    eng = SemanticInference(
        r.served, r.served_route[p["tap"]] if mode != "exit" else None, subs,
        r.served_exit[p["tap"]] if mode != "sinf" else None, tap=p["tap"], mode=mode,
        gamma=p["gamma"] if p["gamma"] is not None else 1.0, tau=p["tau"] if p["tau"] is not None else 1.0,
        rt=r.rt, input_shape=r.input_shape)
    costs = PathCosts(td.stem, td.tail, td.router if mode != "exit" else None, td.exit if mode != "sinf" else None,
                      sd.costs if sd is not None else ())
    return eng, costs


def _screen(r: BenchRun) -> None:
    """Engines for the candidates; their throughput screened on calibration images; each mode's choice."""
    opts, z = r.opts, r.z
    C = r.contenders = _Contenders(r.rt, opts.fold_bn)
    r.served = C.ready(r.work)  # the base model as every contender runs it, readied once and shared
    r.served_route = {t: C.ready(h) for t, h in r.route_heads.items()}
    r.served_exit = {t: C.ready(h) for t, h in r.exit_heads.items()}
    r.base_fns = C.plain(r.served)
    r.screen_pool = screen_pool = _images_on(r.calib, opts.screen_pool, r.dev)
    fns = {"base": r.base_fns[0]}
    for m in MODES:
        for i, p in enumerate(r.cands[m]):
            name = f"{m}#{i}"
            r.engines[name] = _make_engine(r, p)
            fns[name] = C.engine(r.engines[name][0])[0]
    if len(fns) > 1:
        tp = interleaved_throughput(fns, screen_pool, opts.screen_reps, 1, r.dev, r.prog)
        for m in MODES:
            pts = r.cands[m]
            ratios = [statistics.median(paired_ratios(tp, f"{m}#{i}")) for i in range(len(pts))]
            r.screen[m] = [{**_round_point(p), "ips": round(tp[f"{m}#{i}"]["ips"], 2), "ratio_to_base": round(v, 4)}
                           for i, (p, v) in enumerate(zip(pts, ratios))]
            k = pick_fastest(pts, ratios, r.base_top1_calib, opts.budget, z)
            if k is not None:
                r.chosen[m] = {**pts[k], "engine": f"{m}#{k}", "screen_ratio": ratios[k]}
    for m in MODES:
        if m in r.chosen:
            c = r.chosen[m]
            r.log(f"chosen {m}: {_point_label(c)}, calibration top-1 {c['top1']:.2f} % "
                  f"(standard error of the difference from base {c['top1_se']:.2f}), "
                  f"{c['flops'] / 1e6:.1f} MFLOPs, screened {c['screen_ratio']:.3f}x base")
    r.lap("screen")


def _static(r: BenchRun) -> None:
    """The static network matched to the chosen point's expected FLOPs (its score chosen on calibration)."""
    opts, model, chosen = r.opts, r.model, r.chosen
    match = opts.pinned.get("static", opts.static_match)
    if match == "best":
        match = max(chosen, key=lambda m: chosen[m]["screen_ratio"]) if chosen else None
    r.static_info = {"matched_mode": match}
    if match in chosen:
        cp = chosen[match]
        tap = cp["tap"]
        glob = _global_scores(r.exp, opts, r.rt, r.prog)
        glob_fill = None if r.fill_stats is None else {
            l.name: r.fill_stats.group_mean(l.name, range(r.hier.num_classes)) for l in model.prunable_layers()}
        trials = []
        for method, scores in glob.items():
            st = static_for_flops(model, r.exp.model_name, tap, scores, cp["flops"], opts.multiple_of, r.input_shape,
                                  fill=glob_fill)
            if r.bn_samples is not None:  # on every cluster's samples: the static network serves all classes
                st["spec"] = r.bn_samples.estimate(st["spec"])
            tail = r.rt.ready(build_subgraph(r.work, st["spec"]))
            acc = _static_calib_top1(tail, r.feats[tap], r.labels, r.rt)
            trials.append({"score": method, "r": round(st["r"], 6), "flops": st["flops"], "calib_top1": round(acc, 4),
                           "reachable": st["reachable"], "_spec": st["spec"], "_tail": tail})
        best = max(trials, key=lambda t: t["calib_top1"])
        r.static_net = StaticNet(r.work, tap, best["_tail"]).eval()
        r.static_info.update({"tap": tap, "score": best["score"], "r": best["r"], "target_flops": round(cp["flops"], 1),
                              "calib_top1": best["calib_top1"], "reachable": best["reachable"],
                              "multiple_of": opts.multiple_of,
                              "kept": best["_spec"].kept_counts(),
                              "candidates": [{k: v for k, v in t.items() if not k.startswith("_")} for t in trials]})
        r.log(f"static: {best['score']} from {tap}, r = {best['r']:.3f}, {best['flops'] / 1e6:.1f} MFLOPs "
              f"(target {cp['flops'] / 1e6:.1f}), calibration top-1 {best['calib_top1']:.2f} %")
    r.feats = None  # the calibration features are not needed any more
    r.lap("static")


def _report_accuracy(r: BenchRun) -> None:
    """The report split: accuracy and decisions of the real engines (and of the base and static nets)."""
    hier, C = r.hier, r.contenders
    labels_r = r.report.labels.clone()
    clusters_r = r.report.cluster_labels.clone()
    x_report = _images_on(r.report, None, r.dev)
    results, finals = r.results, r.finals
    finals["base"] = r.base_fns
    base_c = model_cost(r.model, r.input_shape)
    with torch.inference_mode():
        pred = r.base_fns[0](x_report)
    results["base"] = {"top1": round(100.0 * float((pred == labels_r).double().mean()), 4),
                       "per_cluster": _per_cluster(pred, labels_r, clusters_r, hier.cluster_names),
                       "flops": base_c.flops, "params": base_c.params, "calib_top1": round(r.base_top1_calib, 4)}
    r.prog("report accuracy", 1, len(MODES) + 2)
    for i, m in enumerate(MODES):
        if m not in r.chosen:
            continue
        eng, costs = r.engines[r.chosen[m]["engine"]]
        res = eng.run_pool(x_report, r.rt.batch_size)
        results[m] = result_metrics(res, labels_r, clusters_r, hier.cluster_names, costs)
        op = {k: v for k, v in r.chosen[m].items() if k not in ("engine",)}
        results[m]["operating_point"] = _round_point(op)
        results[m]["operating_point"]["screen_ratio"] = round(op["screen_ratio"], 4)
        results[m]["calib_top1"] = round(op["top1"], 4)
        results[m]["calib_flops"] = round(op["flops"], 1)
        finals[m] = C.engine(eng)
        r.prog("report accuracy", i + 2, len(MODES) + 2)
    if r.static_net is not None:
        with torch.inference_mode():
            spool, sone = C.plain(C.ready(r.static_net))
            pred = spool(x_report)
        sc = Cost(count_params(r.static_net), count_flops(r.static_net, torch.zeros(1, *r.input_shape, device=r.dev)))
        results["static"] = {"top1": round(100.0 * float((pred == labels_r).double().mean()), 4),
                             "per_cluster": _per_cluster(pred, labels_r, clusters_r, hier.cluster_names),
                             "flops": sc.flops, "params": sc.params, **r.static_info}
        finals["static"] = (spool, sone)
    r.prog("report accuracy", len(MODES) + 2, len(MODES) + 2)
    r.lap("report_accuracy")
    r.x_report = x_report


def _timing(r: BenchRun) -> tuple[dict, dict]:
    """Throughput and batch-size-1 latency of every contender, side by side, interleaved."""
    opts, finals, x_report = r.opts, r.finals, r.x_report
    pool = x_report[: opts.pool]
    r.pool_size = int(pool.shape[0])
    tp = interleaved_throughput({k: v[0] for k, v in finals.items()}, pool, opts.throughput_reps, 1, r.dev, r.prog)
    r.lap("throughput")
    lat = interleaved_latency({k: v[1] for k, v in finals.items()}, x_report[: max(opts.latency_calls, 1)],
                              opts.latency_calls, opts.latency_warmup, r.dev, r.prog)
    r.lap("latency")
    del pool, x_report
    r.x_report = None
    return tp, lat


def _summary(r: BenchRun, tp: dict, lat: dict) -> dict:
    """Ratios to the base model, the best mode and the target, and the whole JSON-able result."""
    opts, results, finals, exp = r.opts, r.results, r.finals, r.exp
    base = results["base"]
    for name in finals:
        res = results[name]
        res["throughput_ips"] = round(tp[name]["ips"], 3)
        res["throughput_ips_best"] = round(tp[name]["ips_best"], 3)
        res["throughput_runs_s"] = [round(v, 6) for v in tp[name]["all_s"]]
        res["latency_ms_bs1"] = round(lat[name]["median_ms"], 4)
        res["latency_p10_p90_ms"] = [round(lat[name]["p10_ms"], 4), round(lat[name]["p90_ms"], 4)]
    for name in finals:
        res = results[name]
        paired = paired_ratios(tp, name)
        res["throughput_ratio"] = round(statistics.median(paired), 4)
        res["throughput_ratio_q25_q75"] = [round(float(v), 4) for v in np.percentile(paired, [25, 75])]
        res["throughput_ratio_of_best_runs"] = round(res["throughput_ips_best"] / base["throughput_ips_best"], 4)
        res["latency_speedup"] = round(base["latency_ms_bs1"] / res["latency_ms_bs1"], 4)
        res["flops_ratio"] = round(res["flops"] / base["flops"], 4)
        res["params_ratio"] = round(res["params"] / base["params"], 4)
        res["top1_delta"] = round(res["top1"] - base["top1"], 4)
    for name in CONTENDERS:
        if name not in results:
            results[name] = {"top1": None, "latency_ms_bs1": None, "throughput_ips": None, "flops": None,
                             "params": None, "note": "no operating point within the budget"}

    modes_done = [m for m in MODES if results[m].get("throughput_ips") is not None]
    within = [m for m in modes_done if results[m]["top1_delta"] >= -opts.budget]
    best_mode = max(within or modes_done, key=lambda m: results[m]["throughput_ratio"]) if modes_done else None
    target = {"budget_points": opts.budget, "throughput_ratio_needed": opts.target_ratio}
    if best_mode is not None:
        b = results[best_mode]
        target.update({"best_mode": best_mode, "top1_delta": b["top1_delta"], "throughput_ratio": b["throughput_ratio"],
                       "met": bool(b["top1_delta"] >= -opts.budget and b["throughput_ratio"] >= opts.target_ratio)})
    hardware = r.hardware
    try:
        hardware["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    hardware["threads"] = torch.get_num_threads()
    hardware.update({"bf16": r.rt.bf16, "channels_last": r.rt.channels_last, "fold_bn": opts.fold_bn})
    r.seconds["total"] = round(time.perf_counter() - r.t_start, 2)
    return {
        "format": BENCH_FORMAT, "version": BENCH_VERSION,
        "model": exp.model_name, "dataset": exp.train.name, "splits": exp.splits.summary(),
        "clusters": r.clusters_info,
        **{name: results[name] for name in CONTENDERS},
        **{name: results[name] for name in (SELECT,) + SELECT_COMBOS if name in results},
        "best_mode": best_mode,
        "target": target,
        "hardware": hardware,
        "heads": r.head_summary,
        "taps": r.taps,
        "sweep": {"points": len(r.points), "base_calib_top1": round(r.base_top1_calib, 4),
                  "pareto": {m: [_round_point(p) for p in r.fronts[m]] for m in MODES},
                  "cheapest_within_budget_per_tap": r.per_tap,
                  "screen": r.screen},
        "timing": {"pool": r.pool_size, "batch_size": r.rt.batch_size, "throughput_reps": opts.throughput_reps,
                   "latency_calls": opts.latency_calls, "latency_warmup": opts.latency_warmup,
                   "screen_pool": opts.screen_pool, "screen_reps": opts.screen_reps},
        "options": recorded_options(opts, r.rt),
        "subgraph_score": r.score_name,
        "flops_unit": "FLOPs per image = 2 x MACs (torch.utils.flop_counter)",
        "seconds": r.seconds,
    }
