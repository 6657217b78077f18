"""The benchmark: expected FLOPs, the vectorised sweep against the real engine, static pruning to a FLOP
target, the budget rule, the timing primitives' bookkeeping, the JSON contract and bad input.

No timed assertions: wall-clock figures are only checked for presence and internal consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core.runtime import Runtime
from sinf_core.bench import (CONTENDERS, BenchOptions, format_table, PathCosts, StaticNet, candidates_within_budget,
                             channel_step_flops, decision_flops, expected_flops, sample_flops, interleaved_latency,
                             interleaved_throughput, pareto_front, pick_fastest, run_benchmark, static_for_flops,
                             stem_features, sweep_tap, tap_sweep_data)
from sinf_core.cost import Cost, count_flops, model_cost, module_cost, stem_output
from sinf_core.data import Splits, iterate_batches, make_splits
from sinf_core.engine import EXIT, FALLBACK, ROUTE, SemanticInference
from sinf_core.errors import SinfError
from sinf_core.experiment import Experiment
from sinf_core.router import RouteHead
from sinf_core.subgraph import SubgraphSpec, build_subgraph

TAP = "layer2.0"


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _random_heads(model, tap: str, x: torch.Tensor, seed: int = 0) -> tuple[RouteHead, RouteHead]:
    """A route head (3 clusters) and an exit head (6 classes) whose outputs are centred and spread on
    ``x``, so every decision path occurs for thresholds inside the confidence range."""
    torch.manual_seed(seed)
    with torch.no_grad():
        h = model.forward_stem(x, tap)
        heads = (RouteHead(h.shape[1], 3, hidden=8).eval(), RouteHead(h.shape[1], 6, hidden=8).eval())
        for head, t in zip(heads, (0.3, 0.4)):
            z = head(h)
            s = z.std(0).mean()
            head.fc.bias.sub_(z.mean(0)).div_(s)
            head.fc.weight.div_(s)
            head.temperature.fill_(t)
    return heads


def _random_scores(model, seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {m: {l.name: torch.rand(l.channels, generator=g) for l in model.prunable_layers()} for m in range(3)}


def _midpoints(conf: torch.Tensor, qs=(0.3, 0.6, 0.85)) -> list[float]:
    """Thresholds halfway between neighbouring confidences near the quantiles ``qs`` (never equal to
    a confidence, so float rounding cannot flip a decision)."""
    v = torch.sort(conf.double()).values
    out = []
    for q in qs:
        i = min(len(v) - 2, int(q * (len(v) - 1)))
        out.append(float((v[i] + v[i + 1]) / 2))
    return out


def _tiny_experiment(n_train: int = 20, n_test: int = 10) -> Experiment:
    train, test = make_tiny_dataset(n_per_class=n_train, seed=0), make_tiny_dataset(n_per_class=n_test, seed=1)
    splits = make_splits(train.labels.numpy(), test.labels.numpy(), "pretrained")
    return Experiment("tiny_resnet", make_tiny_resnet(), train, test, splits, Runtime(device="cpu"))


QUICK = {"taps": ["layer2.0", "layer2.1"], "schedules": [(0.1, 0.5)], "multiple_of": None, "score": "l1",
         "static_scores": ["l1", "bn_gamma"], "head_epochs": 1, "head_fit_samples": 60, "pool": 24, "screen_pool": 24,
         "batch_size": 16, "throughput_reps": 1, "screen_reps": 1, "latency_calls": 3, "latency_warmup": 1,
         "candidates_per_mode": 2}


# --------------------------------------------------------------------------------------------------
# Expected FLOPs
# --------------------------------------------------------------------------------------------------


def test_expected_flops_formula_on_numbers():
    # stem 100 + exit 3 + 0.8 * router 5 + 0.25 * 10 + 0.25 * 20 + 0.3 * tail 50
    assert expected_flops(100, 50, [10, 20], [0.25, 0.25], 0.3, router=5, exit=3, p_router=0.8) == pytest.approx(
        100 + 3 + 4 + 2.5 + 5 + 15)
    # SINF alone, METHOD.md section 9: stem + router + sum P(m) sub_m + P(fallback) tail
    assert expected_flops(100, 50, [10, 20], [0.5, 0.1], 0.4, router=5) == pytest.approx(100 + 5 + 5 + 2 + 20)
    with pytest.raises(SinfError):
        expected_flops(1, 1, [1, 2], [1.0], 0.0)


def test_decision_flops_equal_a_per_sample_hand_count():
    model = make_tiny_resnet()
    ds = make_tiny_dataset(n_per_class=6, seed=3)
    x, _ = next(iterate_batches(ds, len(ds)))
    router, exit_head = _random_heads(model, TAP, x)
    scores = _random_scores(model)
    from sinf_core.subgraph import make_cluster_specs

    specs = make_cluster_specs(model, "tiny", TAP, scores, ds.hierarchy, 0.2, 0.6)
    subs = [build_subgraph(model, specs[m]) for m in range(3)]
    with torch.no_grad():
        h = model.forward_stem(x, TAP)
        rconf = torch.softmax(router(h) / router.temperature, 1).amax(1)
        econf = torch.softmax(exit_head(h) / exit_head.temperature, 1).amax(1)
    gamma, tau = _midpoints(rconf)[1], _midpoints(econf)[2]
    res = SemanticInference(model, router, subs, exit_head, tap=TAP, mode="cascade", gamma=gamma, tau=tau).run(x)
    assert all(v > 0 for v in res.counts().values()), res.counts()

    # Hand count: FLOPs of every module a sample actually went through, summed and averaged.
    x1, h1 = x[:1], h[:1]
    f_stem = count_flops(lambda z: model.forward_stem(z, TAP), x1)
    f_exit, f_router = count_flops(exit_head, h1), count_flops(router, h1)
    f_tail = count_flops(lambda z: model.forward_tail(z, TAP), h1)
    f_sub = [count_flops(s, h1) for s in subs]
    per_sample = []
    for i in range(len(res)):
        total = f_stem + f_exit
        mode = int(res.mode_per_sample[i])
        if mode != EXIT:
            total += f_router
        if mode == ROUTE:
            total += f_sub[int(res.route[i])]
        elif mode == FALLBACK:
            total += f_tail
        per_sample.append(total)
    costs = PathCosts(Cost(0, f_stem), Cost(0, f_tail), Cost(0, f_router), Cost(0, f_exit),
                      tuple(Cost(0, f) for f in f_sub))
    assert decision_flops(costs, res.mode_per_sample, res.route) == pytest.approx(sum(per_sample) / len(res), rel=1e-12)
    # per input, as a chain's last network is costed
    assert sample_flops(costs, res.mode_per_sample, res.route).tolist() == pytest.approx(per_sample, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# The vectorised sweep equals running the engine
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_tiny_resnet, make_tiny_vgg])
def test_sweep_points_equal_actual_engine_runs(make):
    model = make()
    tap = TAP if make is make_tiny_resnet else "features.7"
    ds = make_tiny_dataset(n_per_class=12, seed=4)
    x, y = next(iterate_batches(ds, len(ds)))
    router, exit_head = _random_heads(model, tap, x, seed=1)
    scores = _random_scores(model, seed=2)
    bs = 16
    feats, base_pred = stem_features(model, ds, [tap], Runtime(device="cpu", batch_size=bs, channels_last=False))
    with torch.no_grad():
        assert torch.equal(base_pred, model(x).argmax(1))
    td = tap_sweep_data(model, "tiny", tap, feats[tap], router, exit_head, scores, ds.hierarchy, [(0.1, 0.4), (0.3, 0.8)],
                        rt=Runtime(device="cpu", batch_size=bs, channels_last=False))
    gammas, taus = _midpoints(td.route_conf) + [0.0, 1.0], _midpoints(td.exit_conf) + [1.0]
    points = sweep_tap(y, base_pred, td, gammas, taus)
    assert len(points) == len(taus) + len(td.schedules) * len(gammas) * (1 + len(taus))
    checked = 0
    for p in points:
        if p["gamma"] not in (None, gammas[1], 1.0) or p["tau"] not in (None, taus[0], taus[2], 1.0):
            continue
        sd = None if p["r_M"] is None else next(s for s in td.schedules if (s.r_M, s.r_L) == (p["r_M"], p["r_L"]))
        subs = None if sd is None else [build_subgraph(model, sd.specs[m]) for m in range(3)]
        mode = p["mode"]
        eng = SemanticInference(model, router if mode != "exit" else None, subs, exit_head if mode != "sinf" else None,
                                tap=tap, mode=mode, gamma=p["gamma"] if p["gamma"] is not None else 1.0,
                                tau=p["tau"] if p["tau"] is not None else 1.0)
        res = eng.run_pool(x, bs)
        assert p["top1"] == pytest.approx(100.0 * float((res.pred == y).double().mean()), abs=1e-9), p
        d = [int(a == t) - int(b == t) for a, b, t in zip(res.pred.tolist(), base_pred.tolist(), y.tolist())]
        assert p["top1_se"] == pytest.approx(100.0 * float(np.std(d)) / math.sqrt(len(d)), abs=1e-9), p
        counts = res.counts()
        assert p["exit_rate"] == pytest.approx(counts["exit"] / len(res))
        assert p["route_rate"] == pytest.approx(counts["route"] / len(res))
        assert p["fallback_rate"] == pytest.approx(counts["fallback"] / len(res))
        costs = PathCosts(td.stem, td.tail, td.router if mode != "exit" else None, td.exit if mode != "sinf" else None,
                          sd.costs if sd is not None else ())
        assert p["flops"] == pytest.approx(decision_flops(costs, res.mode_per_sample, res.route), rel=1e-9)
        checked += 1
    assert checked >= 10
    # gamma = 1 and tau = 1: everything falls back, so the point is the base model exactly
    for p in points:
        if (p["gamma"] in (None, 1.0)) and (p["tau"] in (None, 1.0)):
            assert p["top1"] == pytest.approx(100.0 * float((base_pred == y).double().mean()))
            assert p["fallback_rate"] == 1.0


def test_pareto_front_keeps_only_undominated_points():
    pts = [{"top1": a, "flops": f} for a, f in [(70, 100), (69, 90), (69.5, 95), (68, 95), (71, 120), (65, 80), (64, 85)]]
    front = pareto_front(pts)
    assert [(p["top1"], p["flops"]) for p in front] == [(65, 80), (69, 90), (69.5, 95), (70, 100), (71, 120)]


# --------------------------------------------------------------------------------------------------
# Static pruning to a FLOP target
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multiple_of", [None, 2])
@pytest.mark.parametrize("fraction", [0.6, 0.85])
def test_static_flops_match_the_target_within_one_channel_step(multiple_of, fraction):
    model = make_tiny_resnet()
    tap = "layer1.0"  # the stem is 29 % of the FLOPs
    scores = _random_scores(model, seed=7)[0]
    base = model_cost(model).flops
    target = fraction * base
    st = static_for_flops(model, "tiny", tap, scores, target, multiple_of)
    assert st["reachable"]
    step = channel_step_flops(model, tap, multiple_of=multiple_of)
    assert step > 0
    assert st["flops"] <= target < st["flops"] + step
    net = StaticNet(model, tap, build_subgraph(model, st["spec"]))
    assert count_flops(net, torch.zeros(1, 3, 32, 32)) == st["flops"]  # the number is the real network's
    assert st["spec"].classes is None  # full head: one network for every class
    assert all(i in range(64) for v in st["spec"].keep.values() for i in v)
    if multiple_of:
        layers = {l.name: l.channels for l in model.prunable_layers()}
        assert all(len(v) % multiple_of == 0 or len(v) == layers[k] for k, v in st["spec"].keep.items())


def test_static_with_mean_replacement_keeps_the_flops_and_fills_removed_channels():
    model = make_tiny_resnet()
    tap = "layer1.0"
    scores = _random_scores(model, seed=7)[0]
    target = 0.7 * model_cost(model).flops
    fill = {l.name: torch.rand(l.channels, generator=torch.Generator().manual_seed(i)) + 0.5
            for i, l in enumerate(model.prunable_layers())}
    plain = static_for_flops(model, "tiny", tap, scores, target)
    filled = static_for_flops(model, "tiny", tap, scores, target, fill=fill)
    assert filled["flops"] == plain["flops"] and filled["spec"].keep == plain["spec"].keep
    assert set(filled["spec"].fill) == set(filled["spec"].keep)
    assert all(filled["spec"].fill[k] == pytest.approx(fill[k].tolist()) for k in filled["spec"].keep)
    h = model.forward_stem(torch.randn(3, 3, 32, 32), tap)
    with torch.no_grad():  # the constants really reach the output
        assert not torch.allclose(build_subgraph(model, plain["spec"])(h), build_subgraph(model, filled["spec"])(h))


def test_auto_score_is_the_dcs_variant_best_on_calibration():
    from sinf_core.bench import resolve_score

    class FakeBundle:
        def __init__(self, rows, held):
            self.rows, self.held = rows, held

        def has(self, name):
            return name in ("grid", "scores")

        def json(self, name):  # the router's tap differs from the grid's boundary, as in real builds
            return {"tap": "router_tap", "taps": ["t"], "rows": self.rows}

        def files_of(self, step):
            return [f"scores_{m}.safetensors" for m in self.held]

    rows = [{"tap": "t", "method": m, "r_L": r, "split": split, "mean_acc": acc}
            for m, split, accs in (("dcs", "calib", (70, 60)), ("dcs_lda", "calib", (72, 61)),
                                   ("dcs", "report", (90, 90)), ("dcs_lda", "report", (10, 10)),
                                   ("mean_act", "calib", (99, 99)))
            for r, acc in zip((0.3, 0.7), accs)]
    assert resolve_score(FakeBundle(rows, ["dcs", "dcs_lda", "mean_act"]), "auto") == "dcs_lda"  # calib, not report
    assert resolve_score(FakeBundle(rows, ["dcs"]), "auto") == "dcs"  # only variants the bundle holds
    assert resolve_score(None, "auto") == "dcs" and resolve_score(None, "l1") == "l1"


def test_static_targets_out_of_reach_are_reported():
    model = make_tiny_resnet()
    scores = _random_scores(model)[0]
    base = model_cost(model).flops
    high = static_for_flops(model, "tiny", "layer1.1", scores, 2 * base)
    assert high["r"] == 0.0 and high["flops"] == base and high["reachable"]
    low = static_for_flops(model, "tiny", "layer1.1", scores, 1.0)
    assert not low["reachable"] and low["flops"] > 1.0


# --------------------------------------------------------------------------------------------------
# The budget rule and the timing primitives
# --------------------------------------------------------------------------------------------------


def test_pick_fastest_takes_the_fastest_point_within_the_budget():
    pts = [{"top1": a, "flops": f} for a, f in [(70.0, 100), (69.0, 90), (67.5, 60), (68.0, 80), (66.0, 50)]]
    ips = [100.0, 120.0, 500.0, 110.0, 900.0]
    # base 70, budget 2: 67.5 and 66 are out; 69.0 (120 img/s) beats 68.0 (110) and 70.0 (100)
    assert pick_fastest(pts, ips, 70.0, 2.0) == 1
    assert pick_fastest(pts, ips, 70.0, 2.6) == 2  # now 67.5 is in and it is the fastest
    assert pick_fastest(pts, ips, 70.0, 0.0) == 0
    assert pick_fastest(pts, ips, 75.0, 1.0) is None
    # a tie in speed goes to the more accurate point
    assert pick_fastest(pts[:2], [100.0, 100.0], 70.0, 2.0) == 0
    # guarded: 69.0 with a standard error of 0.8 falls below 68 at 1.645 of them; 68.0 (no error) is then
    # the fastest point in
    guarded = [dict(p, top1_se=se) for p, se in zip(pts, [0.0, 0.8, 0.1, 0.0, 0.1])]
    assert pick_fastest(guarded, ips, 70.0, 2.0, z=0.0) == 1
    assert pick_fastest(guarded, ips, 70.0, 2.0, z=1.645) == 3
    assert [p["top1"] for p in candidates_within_budget(guarded, 70.0, 2.0, 5, z=1.645)] == [68.0, 70.0]
    assert [p["top1"] for p in candidates_within_budget(guarded, 70.0, 2.0, 5)] == [68.0, 69.0, 70.0]
    with pytest.raises(SinfError):
        pick_fastest(pts, ips[:2], 70.0, 2.0)
    with pytest.raises(SinfError, match="budget"):
        pick_fastest(pts, ips, 70.0, -1.0)


def test_timing_primitives_call_every_contender_alike_in_rotating_order():
    calls: list[tuple[str, int]] = []

    def make(name):
        return lambda x: calls.append((name, int(x.shape[0])))

    fns = {n: make(n) for n in ("a", "b", "c")}
    images = torch.zeros(5, 3, 4, 4)
    lat = interleaved_latency(fns, images, calls=7, warmup=2)
    assert all(lat[n]["calls"] == 7 for n in fns)
    assert len(calls) == 3 * 9 and all(k == 1 for _, k in calls)
    firsts = [calls[3 * i][0] for i in range(9)]
    assert firsts[:3] == ["a", "b", "c"]  # the order rotates every round
    calls.clear()
    tp = interleaved_throughput(fns, images, reps=4, warmup=1)
    assert len(calls) == 3 * 5 and all(k == 5 for _, k in calls)
    for v in tp.values():
        assert len(v["all_s"]) == 4 and v["ips"] == pytest.approx(5 / np.median(v["all_s"]))
    with pytest.raises(SinfError):
        interleaved_latency(fns, torch.zeros(0, 3, 4, 4))
    with pytest.raises(SinfError):
        interleaved_throughput({}, images)


# --------------------------------------------------------------------------------------------------
# The whole benchmark on a tiny model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    exp = _tiny_experiment()
    cache = tmp_path_factory.mktemp("benchcache")
    return exp, run_benchmark(exp, None, {**QUICK, "cache_dir": str(cache)})


def budget_of(res: dict) -> float:
    return float(res["options"]["budget"])


def test_benchmark_json_has_every_contender_and_the_hardware(tiny_result):
    exp, res = tiny_result
    for name in CONTENDERS:
        for key in ("top1", "latency_ms_bs1", "throughput_ips", "flops", "params"):
            assert key in res[name], (name, key)
    for key in ("cpu", "threads", "torch", "device"):
        assert res["hardware"][key] not in (None, "")
    assert res["hardware"]["torch"] == torch.__version__
    # every contender ran BatchNorm-folded and channels-last by default, and the result says so
    assert res["hardware"]["fold_bn"] is True and res["hardware"]["channels_last"] is True
    t = res["target"]
    assert t["throughput_ratio_needed"] == res["options"]["target_ratio"] == 1.15
    if t.get("best_mode"):
        assert t["met"] == (t["top1_delta"] >= -budget_of(res) and t["throughput_ratio"] >= 1.15)
    assert set(res["sweep"]["pareto"]) == {"sinf", "exit", "cascade"}
    import json

    json.dumps(res)  # JSON-able as is
    base = res["base"]
    report = exp.report_data()
    x, y = next(iterate_batches(report, len(report)))
    with torch.no_grad():
        assert base["top1"] == pytest.approx(100.0 * float((exp.model(x).argmax(1) == y).double().mean()), abs=1e-3)
    assert base["flops"] == model_cost(exp.model).flops
    budget = res["options"]["budget"]
    for name in ("sinf", "exit", "cascade", "static"):
        r = res[name]
        if r["throughput_ips"] is None:
            continue
        # the ratio is the median of per-repetition PAIRED ratios; with one repetition it is the plain ratio
        paired = base["throughput_runs_s"][0] / r["throughput_runs_s"][0]
        assert r["throughput_ratio"] == pytest.approx(paired, rel=2e-3)
        assert r["flops_ratio"] == pytest.approx(r["flops"] / base["flops"], rel=1e-3)
        assert sum(c["n"] for c in r["per_cluster"]) == len(report)
    for m in ("sinf", "exit", "cascade"):
        op = res[m].get("operating_point")
        if op is not None:
            assert op["top1"] >= res["sweep"]["base_calib_top1"] - budget - 1e-6
            assert res[m]["exit_rate"] + res[m]["route_rate"] + res[m]["fallback_rate"] == pytest.approx(1.0)
    st = res["static"]
    if st.get("score"):
        assert st["flops"] <= st["target_flops"] or not st["reachable"]


def test_heads_are_cached_per_tap(tmp_path):
    from sinf_core.bench import fit_bench_heads

    exp = _tiny_experiment(n_train=8, n_test=6)
    opts = BenchOptions(head_epochs=1, head_fit_samples=30, cache_dir=str(tmp_path))
    logs: list[str] = []
    r1, e1, s1 = fit_bench_heads(exp, ["layer2.0"], opts, log=logs.append)
    assert s1["trained_now"] == {"exit": ["layer2.0"], "route": ["layer2.0"]}
    r2, e2, s2 = fit_bench_heads(exp, ["layer2.0", "layer2.1"], opts, log=logs.append)
    assert s2["trained_now"] == {"exit": ["layer2.1"], "route": ["layer2.1"]}  # layer2.0 came from the cache
    for a, b in ((r1, r2), (e1, e2)):
        for k, v in a["layer2.0"].state_dict().items():
            assert torch.equal(v, b["layer2.0"].state_dict()[k])
    _, _, s3 = fit_bench_heads(exp, ["layer2.1", "layer2.0"], opts, log=logs.append)
    assert s3["trained_now"] == {"exit": [], "route": []}
    # other training parameters are another cache entry
    _, _, s4 = fit_bench_heads(exp, ["layer2.0"], BenchOptions(head_epochs=2, head_fit_samples=30, cache_dir=str(tmp_path)))
    assert s4["trained_now"]["exit"] == ["layer2.0"]


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_options_and_empty_splits_raise_clear_errors(tmp_path):
    exp = _tiny_experiment(n_train=4, n_test=2)
    with pytest.raises(SinfError, match="budget"):
        run_benchmark(exp, None, {"budget": -0.5})
    with pytest.raises(SinfError, match="budget"):
        BenchOptions(budget=math.nan).validate()
    with pytest.raises(SinfError, match="gammas"):
        BenchOptions(gammas=(0.5, 1.5)).validate()
    with pytest.raises(SinfError, match="unknown benchmark option"):
        BenchOptions.from_dict({"budgett": 1})
    with pytest.raises(SinfError, match="filter score"):
        BenchOptions(score="nope").validate()
    with pytest.raises(SinfError, match="schedule"):
        BenchOptions(schedules=((0.1, 1.0),)).validate()
    with pytest.raises(SinfError, match="fill must be one of"):
        BenchOptions(fill="median").validate()
    with pytest.raises(SinfError, match="bn_samples"):
        BenchOptions(bn_samples=1).validate()
    for bad in (0, -1.3, math.inf, "fast"):
        with pytest.raises(SinfError, match="target throughput ratio"):
            BenchOptions(target_ratio=bad).validate()
    for bad in (-1.0, math.inf, True):
        with pytest.raises(SinfError, match="budget_z"):
            BenchOptions(budget_z=bad).validate()
    for bad in (-0.5, 2.0, True):
        with pytest.raises(SinfError, match="head_distill"):
            BenchOptions(head_distill=bad).validate()
    # how the contenders run is the runtime's: a mapping's runtime fields are taken apart, not options
    from sinf_core.bench.options import runtime_overrides

    assert BenchOptions.from_dict({"channels_last": False, "batch_size": 8}) == BenchOptions()
    assert runtime_overrides({"channels_last": False, "batch_size": 8, "budget": 1.0, "threads": None}) == \
        {"channels_last": False, "batch_size": 8}
    empty = np.zeros(0, dtype=np.int64)
    s = exp.splits
    no_report = Experiment(exp.model_name, exp.model, exp.train, exp.test,
                           Splits(s.protocol, s.fit, s.calib, empty, s.calib_source), exp.runtime)
    with pytest.raises(SinfError, match="report split is empty"):
        run_benchmark(no_report, None, {**QUICK, "cache_dir": str(tmp_path)})
    no_calib = Experiment(exp.model_name, exp.model, exp.train, exp.test,
                          Splits(s.protocol, s.fit, empty, s.report, s.calib_source), exp.runtime)
    with pytest.raises(SinfError, match="calibration split is empty"):
        run_benchmark(no_calib, None, {**QUICK, "cache_dir": str(tmp_path)})


def test_cli_rejects_a_negative_budget_before_loading_anything(capsys, tmp_path):
    from sinf_core.cli import main

    assert main(["bench", "no_such_model", "--budget", "-1"]) == 2
    assert "budget" in capsys.readouterr().err
    # `--reproduce` with no result there, or a file that is not one, before any work
    assert main(["bench", "no_such_model", "--reproduce", str(tmp_path / "none.json")]) == 2
    assert "cannot read a benchmark result there" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"format": "sinf-bench-runtime"}')
    assert main(["bench", "no_such_model", "--reproduce", str(tmp_path / "other.json")]) == 2
    assert "takes the JSON result of `sinf bench`" in capsys.readouterr().err
    # `sinf build --bench-options`: a typo, a non-object and bad JSON are refused before any work
    assert main(["build", "no_such_model", "--bench-options", '{"tapz": ["a"]}']) == 2
    assert "unknown benchmark option(s) ['tapz']" in capsys.readouterr().err
    assert main(["build", "no_such_model", "--bench-options", "[1]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert main(["build", "no_such_model", "--bench-options", "{taps"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The bench step of `sinf build`
# --------------------------------------------------------------------------------------------------


def _register_tiny_small(tmp_path, monkeypatch) -> None:
    """A second tiny network in the registry, 'tiny_small', as the cheaper network of a chain."""
    from safetensors.torch import save_file

    import sinf_core.models.registry as registry
    from sinf_core.models.registry import MODELS, ModelEntry, Weights

    save_file(make_tiny_resnet(seed=3).state_dict(), str(tmp_path / "tiny_small.safetensors"))
    monkeypatch.setattr(registry, "ASSETS_DIR", tmp_path)
    monkeypatch.setitem(MODELS, "tiny_small", ModelEntry("tiny_small", lambda: make_tiny_resnet(seed=3), dataset="tiny",
                                                         protocol="pretrained", weights=Weights(file="tiny_small.safetensors")))


def test_build_writes_bench_json_and_caches_it(tmp_path, monkeypatch):
    import sinf_core.clusters
    from sinf_core.pipeline import BuildSettings, build_bundle

    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path / "cache"))
    # The UMAP maps are not what this test is about and cost minutes of JIT on a busy machine.
    monkeypatch.setattr(sinf_core.clusters, "cluster_maps", lambda stats, random_state=0: {"classes": np.zeros((6, 2))})
    exp = _tiny_experiment()
    settings = BuildSettings(
        methods=("l1", "random"), r_L_grid=(0.5,), k=3, stats_feature_sample=30,
        router={"epochs": 1, "batch_size": 32, "taps": ["layer2.0", "layer2.1"]}, bench=True,
        bench_options={**{k: v for k, v in QUICK.items() if k not in ("taps", "score")}, "chain": ["tiny_small"]},
    )
    _register_tiny_small(tmp_path, monkeypatch)
    b = build_bundle(exp, tmp_path / "b", settings)
    bench = b.json("bench.json")
    assert bench["taps"] == ["layer2.0", "layer2.1"]  # the bundle router's taps
    assert bench["heads"]["route_from_bundle"] == ["layer2.0", "layer2.1"]
    assert bench["options"]["score"] == "l1"  # dcs is not among the bundle's methods
    for name in CONTENDERS:
        assert "top1" in bench[name]
    log: list[str] = []
    build_bundle(exp, tmp_path / "b", settings, log=log.append)
    assert any(line.startswith("bench: cached") for line in log), log
    # `sinf report` renders that bench.json into docs files
    from sinf_core.cli import main

    import json

    assert main(["report", "tiny_resnet", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "bench_tiny_resnet.md").read_text()
    assert json.loads((tmp_path / "docs" / "bench_tiny_resnet.json").read_text()) == bench
    for name in CONTENDERS:
        assert f"| {name} |" in md
    use = b.json("bn.json")["use"]  # decided on calibration by the build; the benchmark follows it
    assert bench["options"]["bn_samples"] == (256 if use else 0)
    assert ("BatchNorm statistics re-estimated on 256 fit images per cluster" in md) == use
    from sinf_core.bench import resolve_bn_samples

    assert resolve_bn_samples(b, None) == (256 if use else 0) and resolve_bn_samples(b, 32) == 32
    assert resolve_bn_samples(None, None) == 256
    # run again from the result (`sinf bench --reproduce`): its options, its chosen points pinned, the heads
    # the bundle stores (a fresh head cache: nothing may be trained again); every point and accuracy the same
    from sinf_core.bench.reproduce import compare, options_from

    again_opts = {**options_from(bench), "cache_dir": str(tmp_path / "fresh_cache")}
    assert again_opts["pinned"]["exit"]["tap"] == bench["exit"]["operating_point"]["tap"]
    again = run_benchmark(exp, b, again_opts)
    assert again["heads"]["trained_now"] == {"exit": [], "route": []}
    assert again["heads"]["stored_in_bundle"]["exit"] == bench["taps"]
    cmp = compare(bench, again)
    assert cmp["reproduced"], cmp
    assert {m for m in cmp["contenders"]} >= {"base", "static"}
    worse = json.loads(json.dumps(bench))
    worse["exit"]["top1"] = (worse["exit"]["top1"] or 0) + 1.0
    assert not compare(worse, again)["reproduced"] and not compare(worse, again)["contenders"]["exit"]["same"]
    off_grid = {**again_opts, "pinned": {"exit": {**again_opts["pinned"]["exit"], "tau": 0.123}}}
    with pytest.raises(SinfError, match="not among this run's"):
        run_benchmark(exp, b, off_grid)
    # the same operating points on ONNX Runtime, beside the PyTorch float32 base as the reference
    from sinf_core.runtime_bench import format_runtime_table, run_runtime_benchmark

    rt = run_runtime_benchmark(exp, b, "onnxruntime", "fp32", work_dir=tmp_path / "rt", reps=2, latency_calls=3,
                               reference_rows=False, budget=100.0)
    assert rt["options"]["budget"] == 100.0  # the thresholds chosen again within the budget asked for
    assert rt["backend"] == "onnxruntime" and rt["precision"] == "fp32" and rt["model"] == "tiny_resnet"
    ref = rt["reference"]
    assert {"top1", "throughput_ips", "latency_ms_bs1", "flops", "params"} <= set(ref)
    assert rt["base"]["top1"] == ref["top1"] == bench["base"]["top1"]  # float32 on another runtime: same answers
    assert rt["base"]["flops"] == bench["base"]["flops"]
    assert rt["bundle_bench"] == b.step_key("bench")
    if (bench.get("static") or {}).get("kept"):  # the static network rebuilt and exported: the same answers
        assert rt["static"]["top1"] == bench["static"]["top1"] and rt["static"]["throughput_ratio_vs_reference"] > 0
        assert rt["static"]["kept"] == bench["static"]["kept"]
    for name in ("base", "sinf", "exit", "cascade", "static"):
        assert {"top1", "throughput_ips", "latency_ms_bs1", "flops", "params"} <= set(rt[name]), name
    for m in ("sinf", "exit", "cascade"):
        if bench[m].get("operating_point"):
            assert rt[m]["operating_point"]["tap"] == bench[m]["operating_point"]["tap"]
            assert rt[m]["throughput_ratio_vs_reference"] > 0 and "threshold_choice" in rt[m]
    # the benchmark's network selection on the runtime: the cheaper network exported too, its gate chosen
    # again on the runtime's calibration logits; its answers are the chain's, recomputed in PyTorch
    from sinf_core.models.registry import MODELS
    from sinf_core.selection import Gate, NetworkSelection, argmax_of

    sel = rt["select"]
    assert bench["select"].get("operating_point") and sel["networks"] == ["tiny_small", "tiny_resnet"]
    assert sel["gate_temperatures"][0] == pytest.approx(bench["select"]["gate_temperatures"][0], rel=1e-3)
    assert sel["throughput_ratio"] > 0 and sel["latency_ms_bs1"] > 0 and "threshold_choice" in sel
    small = MODELS["tiny_small"].build().eval()
    chain = NetworkSelection([small], [Gate(sel["gate_temperatures"][0], sel["operating_point"]["thresholds"][0])],
                             argmax_of(exp.model.eval()))
    x, y = next(iterate_batches(exp.report_data(), len(exp.report_data())))
    got = chain.run(x)
    assert sel["top1"] == pytest.approx(100.0 * float((got.pred == y).double().mean()), abs=1e-3)
    assert sel["answered"] == pytest.approx(got.shares() + [0.0] * (2 - len(got.shares())), abs=1e-4)
    assert sel["flops"] == pytest.approx(model_cost(small).flops + sel["answered"][1] * bench["base"]["flops"], rel=1e-4)
    table = format_runtime_table(rt)
    assert "reference (torch fp32)" in table and "\nselect " in table
    with pytest.raises(SinfError, match="without --backend"):
        run_runtime_benchmark(exp, b, "torch", "fp32")
    with pytest.raises(SinfError, match="int8"):
        run_runtime_benchmark(exp, b, "torch", "int8")
    with pytest.raises(SinfError, match="build the bundle with its benchmark"):
        run_runtime_benchmark(exp, None, "onnxruntime", "fp32")
    with pytest.raises(SinfError, match="accuracy budget"):
        run_runtime_benchmark(exp, b, "onnxruntime", "fp32", budget=-1.0)


def test_cli_timing_flags_reach_the_options():
    from sinf_core.cli import build_parser
    from sinf_core.commands.bench import _options

    from sinf_core.runtime import Runtime, runtime_from_args

    plain = build_parser().parse_args(["bench", "m"])
    default = BenchOptions.from_dict(_options(plain))
    assert default.fold_bn and default.target_ratio == 1.15 and default.head_distill == 0.9
    rt = runtime_from_args(plain)
    assert (rt.channels_last, rt.bf16, rt.batch_size, rt.threads) == (Runtime.channels_last, Runtime.bf16,
                                                                     Runtime.batch_size, None)
    args = build_parser().parse_args(["bench", "m", "--no-fold-bn", "--no-channels-last", "--target-ratio", "1.3",
                                      "--head-distill", "0", "--batch-size", "64", "--threads", "1", "--bf16"])
    opts = BenchOptions.from_dict(_options(args)).validate()
    assert not opts.fold_bn and opts.target_ratio == 1.3 and opts.head_distill == 0
    rt = runtime_from_args(args)
    assert (rt.channels_last, rt.bf16, rt.batch_size, rt.threads) == (False, True, 64, 1)


def test_network_selection_contender(tmp_path, monkeypatch):
    """``chain``: a cheaper network first; its gate chosen on calibration within the guarded budget, the
    result's report top-1, answered shares and FLOPs equal the chain recomputed by hand."""
    from sinf_core.models.registry import MODELS
    from sinf_core.selection import Gate, NetworkSelection, argmax_of

    _register_tiny_small(tmp_path, monkeypatch)
    exp = _tiny_experiment()
    opts = {**QUICK, "cache_dir": str(tmp_path), "chain": ["tiny_small"], "budget": 100.0, "budget_z": 0.0}
    res = run_benchmark(exp, None, opts)
    sel = res["select"]
    for key in ("top1", "latency_ms_bs1", "throughput_ips", "flops", "params", "throughput_ratio", "operating_point"):
        assert sel.get(key) is not None, key
    assert sel["networks"] == ["tiny_small", "tiny_resnet"]
    op = sel["operating_point"]
    small = MODELS["tiny_small"].build().eval()
    chain = NetworkSelection([small], [Gate(sel["gate_temperatures"][0], op["thresholds"][0])], argmax_of(exp.model))
    report = exp.report_data()
    x, y = next(iterate_batches(report, len(report)))
    got = chain.run(x)
    assert sel["top1"] == pytest.approx(100.0 * float((got.pred == y).double().mean()), abs=1e-3)
    shares = got.shares() + [0.0] * (2 - len(got.shares()))
    assert sel["answered"] == pytest.approx(shares, abs=1e-4)
    f_small, f_base = model_cost(small).flops, model_cost(exp.model).flops
    assert sel["flops"] == pytest.approx(f_small + shares[1] * f_base, rel=1e-4)
    assert sel["params"] == model_cost(small).params + model_cost(exp.model).params
    assert op["top1"] >= res["sweep"]["base_calib_top1"] - 100.0
    assert "select" in res["sweep"]["screen"]
    # the combinations: the last network runs a mode at that mode's own chosen point, the gate chosen for the pair
    combos = [m for m in ("sinf", "exit", "cascade") if res[m].get("operating_point") and f"select+{m}" in res]
    assert combos, "no combination was chosen with a 100-point budget"
    for m in combos:
        c = res[f"select+{m}"]
        assert c["networks"] == ["tiny_small", f"tiny_resnet ({m})"]
        assert c["last_operating_point"] == res[m]["operating_point"]
        assert sum(c["answered"]) == pytest.approx(1.0, abs=1e-3) and c["params"] == model_cost(small).params + res[m]["params"]
        assert c["flops"] >= f_small and c["throughput_ratio"] > 0 and c["latency_ms_bs1"] > 0
        if c["answered"][1] == 0:  # the small network answered everything: it alone ran
            assert c["flops"] == pytest.approx(f_small, rel=1e-6)
    text = format_table(res)
    assert all(f"select+{m}" in text for m in combos)
    # the chain is checked before anything runs
    with pytest.raises(SinfError, match="itself"):
        run_benchmark(exp, None, {**opts, "chain": ["tiny_resnet"]})
    with pytest.raises(SinfError, match="registry model names"):
        BenchOptions.from_dict({"chain": "tiny_small"}).validate()


def test_a_benchmark_with_select_renders_in_the_report(tmp_path, monkeypatch):
    """The report (validation, table, operating points, figures, Markdown, HTML, CSV) takes a benchmark
    that has the 'select' contender, and names its chain and gate."""
    from sinf_core import report

    _register_tiny_small(tmp_path, monkeypatch)
    res = run_benchmark(_tiny_experiment(), None, {**QUICK, "cache_dir": str(tmp_path), "chain": ["tiny_small"],
                                                   "budget": 100.0, "budget_z": 0.0})
    import json

    bench = report.load_bench(json.loads(json.dumps(res)))
    assert "select" in [r["mode"] for r in report.bench_table(bench)]
    op = next(o for o in report.operating_points(bench) if o["mode"] == "select")
    assert op["networks"] == ["tiny_small", "tiny_resnet"] and len(op["thresholds"]) == 1
    md = report.to_markdown(bench)
    assert "tiny_small -> tiny_resnet, gate thresholds" in md
    assert "select" in report.to_html(bench, "t", "s")
    assert "select" in report.to_csv(bench)
    assert len(report.figures(bench)) >= 3


def test_benchmark_on_data_driven_clusters(tmp_path):
    """``clusters='ward:K'``: the benchmark runs on K Ward clusters of the fit split's class prototypes (the
    same assignment ``clusters.cluster_classes`` gives), its route heads and per-cluster results are for
    those K clusters, and a bad value is a clear error before anything runs."""
    from sinf_core.clusters import cluster_classes
    from sinf_core.stats import cached_stats

    exp = _tiny_experiment()
    res = run_benchmark(exp, None, {**QUICK, "cache_dir": str(tmp_path), "clusters": "ward:2", "budget": 100.0})
    info = res["clusters"]
    assert info["method"] == "ward" and info["k"] == 2 and sum(info["sizes"]) == exp.hierarchy.num_classes
    stats, _, _ = cached_stats(exp.model_name, exp.model, exp.train, "fit", indices=exp.splits.fit,
                               rt=exp.runtime, root=str(tmp_path))
    want = cluster_classes("ward", exp.train.class_names, 2, fit_stats=stats)
    assert info["classes"] == want.to_json()
    assert len(res["base"]["per_cluster"]) == 2
    assert res["options"]["clusters"] == "ward:2"
    plain = BenchOptions().to_json()
    assert "clusters" not in plain  # the default is not recorded: keys of earlier results stay the same
    for bad in ("ward", "ward:1", "kmeans:4", "ward:x"):
        with pytest.raises(SinfError, match="clusters is 'hierarchy'"):
            BenchOptions.from_dict({"clusters": bad}).validate()
