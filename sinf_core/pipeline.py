"""`sinf build`: the whole analysis of one model, written step by step into a bundle.

statistics (fit) -> clusters -> overlap -> router + exit heads (fit, calibrated on calib) -> filter
scores (fit) -> the oracle-routing grid of every score x r_L (calib and report) -> benchmark -> the
studio step (the benchmark's heads and calibration outputs at its operating points, for the app). Each step
is cached in the bundle under a key of its inputs, so a second run recomputes nothing and an
interrupted run resumes at the first missing step. Artefact names are the bundle contract the app reads.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifacts as A
from .bundle import Bundle, load_scores, score_methods, state_dict_sha256  # noqa: F401  (re-exported)
from .config import DEFAULT_BN_SAMPLES, DEFAULT_FILL
from .errors import SinfError
from .experiment import Experiment

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class BuildSettings:
    methods: tuple[str, ...] = ("dcs", "dcs_lda", "dcs_p1", "dcs_std", "l1", "bn_gamma", "mean_act", "std", "apoz",
                                "taylor", "hrank", "chip", "tvs", "random")
    r_M: float = 0.05
    r_L_grid: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    grid_taps: tuple[str, ...] = ("router",)  # stem boundaries for the oracle grid; "router" = the router's tap
    q: float = 20.0
    k: int = 20
    fill: str = DEFAULT_FILL  # removed channels: "mean" (mean replacement from the fit statistics) or "zero"
    bn_samples: int = DEFAULT_BN_SAMPLES  # fit images per cluster for BatchNorm re-estimation (0: off)
    route_target: float = 0.75
    taps: tuple[str, ...] | None = None
    router: dict = field(default_factory=dict)  # extra RoutePredictor parameters (epochs, max_fit_samples, ...)
    score_options: dict = field(default_factory=dict)
    stats_feature_sample: int = 2000
    bench: bool = True
    bench_options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def shipped_bundle_dir(model_name: str) -> Path:
    """Where the project ships a prebuilt bundle of a model: ``assets/bundles/<model>``."""
    from .models.registry import ASSETS_DIR

    return ASSETS_DIR / A.BUNDLES / A.folder_name(model_name)


def default_bundle_dir(model_name: str, seed_from_assets: bool = True) -> Path:
    """``$SINF_CACHE_DIR/bundles/<model>``, where ``sinf build`` writes by default. When it holds no
    bundle and the project ships one in ``assets/bundles/<model>``, the shipped bundle is copied there
    first (atomically: a temp folder renamed into place), so later writes never touch ``assets/``.
    A spec's folder is named without its class count (``artifacts.folder_name``: ``torchvision-resnet18``),
    so ``sinf report torchvision:resnet18`` finds what ``sinf build torchvision:resnet18 ...`` wrote."""
    import shutil
    import tempfile

    from .io import cache_dir

    model_name = A.folder_name(model_name)
    target = cache_dir() / A.BUNDLES / model_name
    shipped = shipped_bundle_dir(model_name)
    if seed_from_assets and not (target / A.MANIFEST).is_file() and (shipped / A.MANIFEST).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_name}.", dir=target.parent))
        try:
            shutil.copytree(shipped, tmp, dirs_exist_ok=True)
            if target.exists():  # a folder without a manifest: nothing usable in it, keep it aside
                target.rename(target.with_name(f"{model_name}.partial-{int(time.time())}"))
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _data_json(exp: Experiment) -> dict:
    h = exp.hierarchy
    return {
        "dataset": exp.train.name,
        "class_names": list(h.class_names),
        "cluster_names": list(h.cluster_names),
        "cluster_of_class": list(h.cluster_of_class),
        "splits": exp.splits.summary(),
        "mean": list(exp.train.mean),
        "std": list(exp.train.std),
        "n_train": len(exp.train),
        "n_test": len(exp.test),
        "input_shape": list(exp.input_shape),
    }


def build_bundle(
    exp: Experiment,
    out: str | Path,
    settings: BuildSettings | None = None,
    on_progress: ProgressFn | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Bundle:
    """Run (or resume) every step for ``exp`` into the bundle folder ``out``; returns the bundle."""
    from .clusters import adjusted_rand, cluster_classes, cluster_maps
    from .overlap import filter_overlap
    from .router import ExitPredictor, RoutePredictor, fit_router_and_exit
    from .scores import compute_all_scores
    from .stats import ActivationStats, collect_stats
    from .subgraph.batchnorm import check_bn_samples
    from .subgraph.spec import check_fill

    s = settings or BuildSettings()
    check_fill(s.fill)
    check_bn_samples(s.bn_samples)
    prog = on_progress or (lambda stage, done, total: None)
    rt = exp.runtime.with_(on_progress=prog)  # how every pass of the build runs
    model = exp.model.eval()
    fit, calib, report = exp.fit_data(), exp.calib_data(), exp.report_data()
    bundle = Bundle.open_or_create(out, exp.model_name, state_dict_sha256(model),
                                   {"dataset": exp.train.name, "protocol": exp.splits.protocol}, exp.input_shape)
    base_inputs = {"splits": exp.splits.summary(), "dataset": exp.train.name, "n_train": len(exp.train)}
    timings: dict[str, float] = {}

    def run(name: str, inputs: dict, compute: Callable[[], dict]) -> str:
        t0 = time.perf_counter()
        key, fresh = bundle.step(name, {**base_inputs, **inputs}, compute)
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {'computed' if fresh else 'cached'} in {timings[name]:.1f} s")
        return key

    # 1. data description
    run("data", {}, lambda: {A.DATA: _data_json(exp)})

    # 2. statistics over the fit split (and over calibration: its confusion matrix feeds spectral clusters)
    k_stats = run("stats", {"feature_sample": s.stats_feature_sample, "bs": rt.batch_size, "bf16": rt.bf16}, lambda: {
        A.STATS: collect_stats(model, fit, None, rt, on_batch=rt.counter("statistics (fit)", len(fit)),
                                           feature_sample=s.stats_feature_sample).to_tensors(),
        A.STATS_CALIB: collect_stats(model, calib, None, rt,
                                                 on_batch=rt.counter("statistics (calib)", len(calib))).to_tensors(),
    })
    stats = ActivationStats.from_tensors(bundle.tensors(A.STATS))
    calib_stats = ActivationStats.from_tensors(bundle.tensors(A.STATS_CALIB))

    # 3. clusters: hierarchy, Ward on prototypes, spectral on the calibration confusion; UMAP maps
    # data-driven clusters: k of them, or as many as the hierarchy has when the data set has no more than k classes
    k = s.k if s.k < exp.hierarchy.num_classes else exp.hierarchy.num_clusters

    def clusters_step() -> dict:
        h = exp.hierarchy
        out = {"hierarchy": {"k": h.num_clusters, "assignment": list(h.cluster_of_class)}}
        for method in ("ward", "spectral"):
            found = cluster_classes(method, h.class_names, k, h, stats, calib_stats)
            out[method] = {"k": k, "assignment": list(found.cluster_of_class), "ari": round(adjusted_rand(found, h), 4)}
        prog("UMAP maps", 0, 1)
        maps = cluster_maps(stats)
        out["umap_classes"] = np.asarray(maps["classes"]).round(4).tolist()
        if "samples" in maps:
            out["umap_samples"] = {"xy": np.asarray(maps["samples"]).round(4).tolist(),
                                   "labels": np.asarray(maps["sample_labels"]).tolist()}
        return {A.CLUSTERS: out}

    run("clusters", {"stats": k_stats, "k": k}, clusters_step)

    # 4. filter overlap and the depth profile
    run("overlap", {"stats": k_stats, "q": s.q},
        lambda: {A.OVERLAP: filter_overlap(stats, exp.hierarchy, s.q).to_json()})

    # 5. router and exit heads; the router's tap is the stem boundary for everything after it
    router_params = {"accuracy_target": s.route_target, **s.router}
    if s.taps:
        router_params["taps"] = list(s.taps)

    def router_step() -> dict:
        import tempfile

        router = RoutePredictor(**router_params)
        exit_head = ExitPredictor(**{k: v for k, v in router_params.items() if k != "taps"})
        fit_router_and_exit(router, exit_head, model, fit, calib, rt, on_progress=prog)
        rep = router.evaluate(model, report, rt)
        files = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, heads in ((A.ROUTER, router), (A.EXIT, exit_head)):
                heads.save(tmp, name)
                for fname in reversed(A.file_pair(name)):  # weights, then config (the manifest's order)
                    files[fname] = (Path(tmp) / fname).read_bytes()
        files[A.ROUTER_REPORT] = {"summary": router.summary(), "report_accuracy": rep["accuracy"],
                                       "exit_summary": exit_head.summary()}
        return files

    k_router = run("router", {"params": router_params}, router_step)
    tap = bundle.json(A.ROUTER_JSON)["tap"]

    # 6. filter scores for every cluster and prunable layer (fit split)
    def scores_step() -> dict:
        tables = compute_all_scores(list(s.methods), model, None, fit, exp.hierarchy, stats, s.score_options,
                                    rt=rt,
                                    on_progress=lambda st, d, t: prog(f"scores: {st}", d, t))
        return {A.scores_file(m): {A.score_key(c, layer): v for c, per in tab.items() for layer, v in per.items()}
                for m, tab in tables.items()}

    k_scores = run("scores", {"methods": list(s.methods), "options": s.score_options, "stats": k_stats}, scores_step)

    taps = [tap if t == "router" else t for t in s.grid_taps]
    grid_inputs = {"scores": k_scores, "router": k_router, "r_M": s.r_M, "r_L_grid": list(s.r_L_grid),
                   "taps": list(s.grid_taps), "bf16": rt.bf16, "fill": s.fill}

    # 7. BatchNorm re-estimation on or off: decided on the calibration split (oracle routing, one score)
    from .subgraph.batchnorm import BatchNormSamples

    # one sample set for the decision and the grid (its stem outputs are computed lazily, once per tap)
    samples = BatchNormSamples(model, fit, exp.hierarchy, s.bn_samples, rt=rt) if s.bn_samples else None
    bn_samples = 0
    if samples is not None:
        def bn_step() -> dict:
            probe = next((m for m in s.methods if m.startswith("dcs")), s.methods[0])
            return {A.BN: bn_decision(exp, load_scores(bundle, probe), probe, taps[0], s.r_M, s.r_L_grid,
                                           samples, stats if s.fill == "mean" else None, prog)}

        k_bn = run("bn", {**grid_inputs, "bn_samples": s.bn_samples, "methods": list(s.methods)}, bn_step)
        decision = bundle.json(A.BN)
        bn_samples = s.bn_samples if decision["use"] else 0
        log(f"BatchNorm re-estimation: {'on' if decision['use'] else 'off'} (mean calibration accuracy "
            f"{decision['calib_mean_on']:.2f} % with, {decision['calib_mean_off']:.2f} % without; {decision['score']})")
        grid_inputs["bn"] = k_bn

    # 8. oracle-routing grid: every score x r_L, calibration and report splits
    def grid_step() -> dict:
        from .subgraph.evaluate import evaluate_cluster_subgraphs
        from .subgraph.schedule import make_cluster_specs

        bn = samples if bn_samples else None
        rows = []
        stem_caches: dict[str, dict] = {"calib": {}, "report": {}}
        total = len(taps) * len(s.methods) * len(s.r_L_grid) * 2
        done = 0
        for grid_tap in taps:
            for m in s.methods:
                scores = load_scores(bundle, m)
                for r_L in s.r_L_grid:
                    specs = make_cluster_specs(model, exp.model_name, grid_tap, scores, exp.hierarchy, s.r_M, r_L,
                                               fill_stats=stats if s.fill == "mean" else None, bn_samples=bn)
                    for split, data in (("calib", calib), ("report", report)):
                        res = evaluate_cluster_subgraphs(model, specs, data, exp.hierarchy, rt,
                                                         stem_cache=stem_caches[split])
                        rows.append({"tap": grid_tap, "method": m, "r_M": s.r_M, "r_L": r_L, "split": split, "fill": s.fill,
                                     "bn_samples": bn_samples,
                                     "mean_acc": res["mean"]["accuracy"],
                                     "per_cluster": [r["accuracy"] for r in res["clusters"]],
                                     "flops": [r["flops_with_stem"] for r in res["clusters"]],
                                     "params": [r["params_with_stem"] for r in res["clusters"]],
                                     "flop_ratio": res["mean"]["flop_ratio"]})
                        done += 1
                        prog("grid (oracle routing)", done, total)
        return {A.GRID: {"tap": tap, "taps": taps, "fill": s.fill, "bn_samples": bn_samples, "rows": rows}}

    run("grid", grid_inputs, grid_step)

    # 9. benchmark: operating points chosen on calibration, reported on the report split, timed side by side
    if s.bench:
        from .bench import BenchOptions, run_benchmark
        from .bench.options import recorded_options, runtime_overrides

        bench_opts = {"score_options": dict(s.score_options), "fill": s.fill, "bn_samples": bn_samples,
                      **s.bench_options}
        if "score" not in s.bench_options and s.methods and not any(m.startswith("dcs") for m in s.methods):
            bench_opts["score"] = s.methods[0]  # no DCS variant built: 'auto' has nothing to choose from
        resolved = BenchOptions.from_dict(bench_opts).validate()  # a bad option fails here, before any work
        if resolved.clusters != "hierarchy":
            raise SinfError("a bundle's benchmark runs on the bundle's own clusters (the app and the runtimes rebuild "
                            f"its points from them); benchmark {resolved.clusters} clusters with `sinf bench --clusters`")
        # keyed on every option and on how it runs, defaults included: a changed default reruns the benchmark
        bench_rt = exp.runtime.with_(**runtime_overrides(bench_opts))
        k_bench = run("bench", {"router": k_router, "scores": k_scores,
                                "options": recorded_options(resolved, bench_rt)},
                      lambda: {A.BENCH: run_benchmark(exp, bundle, bench_opts, prog, log)})

        # 10. what SINF Studio reads at once: the benchmark's heads and calibration outputs at its points
        from .tuning import studio_artifacts

        run("studio", {"bench": k_bench, "format": 3}, lambda: studio_artifacts(exp, bundle, prog, log))

    bundle.manifest["last_build_seconds"] = timings
    bundle._write_manifest()
    return bundle


def bn_decision(exp: Experiment, scores, score: str, tap: str, r_M: float, r_L_grid, bn_samples, fill_stats,
                prog: ProgressFn | None = None) -> dict:
    """Whether re-estimating the subgraphs' BatchNorm statistics helps this model, decided on the
    calibration split: oracle-routed mean per-cluster accuracy of ``score``'s subgraphs at ``tap`` over
    the r_L grid, with and without re-estimation (on VGG16-BN it rescues deep cuts; on ResNet-56,
    whose residual stream keeps the statistics nearly right, it cost up to a point at mild cuts)."""
    from .subgraph.evaluate import evaluate_cluster_subgraphs
    from .subgraph.schedule import make_cluster_specs

    calib = exp.calib_data()
    cache: dict = {}
    on, off = [], []
    for i, r_L in enumerate(r_L_grid):
        for use, out in ((False, off), (True, on)):
            specs = make_cluster_specs(exp.model, exp.model_name, tap, scores, exp.hierarchy, r_M, r_L,
                                       fill_stats=fill_stats, bn_samples=bn_samples if use else None)
            res = evaluate_cluster_subgraphs(exp.model, specs, calib, exp.hierarchy, exp.runtime, stem_cache=cache)
            out.append(res["mean"]["accuracy"])
        if prog:
            prog("BatchNorm re-estimation (calibration)", i + 1, len(r_L_grid))
    mean_on, mean_off = float(np.mean(on)), float(np.mean(off))
    return {"score": score, "tap": tap, "r_M": r_M, "r_L": list(r_L_grid), "bn_samples": bn_samples.per_cluster,
            "calib_on": on, "calib_off": off, "calib_mean_on": round(mean_on, 4), "calib_mean_off": round(mean_off, 4),
            "use": bool(mean_on > mean_off)}
