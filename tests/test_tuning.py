"""sinf_core.tuning and sinf_core.timing: SINF Studio's fast path equals the slow, independent computations
(evaluate_cluster_subgraphs, the engine, the benchmark's routed predictions), and the timing primitives pair
and summarise what they measure."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core.runtime import Runtime
from sinf_core import timing, tuning
from sinf_core.bench import routed_predictions
from sinf_core.data import iterate_batches
from sinf_core.engine import SemanticInference
from sinf_core.errors import SinfError
from sinf_core.subgraph import build_subgraph, evaluate_cluster_subgraphs, make_cluster_specs
from test_bench import _random_heads, _random_scores

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def test_quantized_features_are_within_half_a_step_per_channel():
    g = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(50, 4, 3, 3, generator=g)) * torch.tensor([1.0, 10.0, 0.01, 0.0]).view(1, 4, 1, 1)
    q = tuning.quantize_features(h)
    assert q["codes"].dtype == torch.uint8 and q["codes"].shape == h.shape
    back = tuning.dequantize_features(q["codes"], q["low"], q["step"])
    per_channel = (back - h).abs().amax(dim=(0, 2, 3))
    assert torch.all(per_channel <= q["step"] / 2 + 1e-6)
    assert float(per_channel[3]) == 0.0  # a constant channel comes back exactly
    with pytest.raises(SinfError, match="N >= 1"):
        tuning.quantize_features(torch.zeros(0, 4, 3, 3))


@pytest.mark.parametrize("make,tap", [(make_tiny_resnet, "layer2.0"), (make_tiny_vgg, "features.7")])
def test_calibration_outputs_equal_the_model_and_heads(make, tap):
    model = make().eval()
    ds = make_tiny_dataset(n_per_class=8, seed=3)
    x, y = next(iterate_batches(ds, len(ds)))
    route, exit_head = _random_heads(model, tap, x, seed=1)
    out = tuning.compute_calibration_outputs(model, ds, tap, ds.hierarchy, route, exit_head, rt=Runtime(device="cpu", batch_size=7))
    with torch.no_grad():
        logits = model(x)
        h = model.forward_stem(x, tap)
        rp, ep = route.proba(h), exit_head.proba(h)
    assert torch.allclose(out.features, h, atol=1e-4)
    assert torch.equal(out.base_pred, logits.argmax(1))
    own = [ds.hierarchy.members(ds.hierarchy.cluster_of_class[int(c)]) for c in y]
    assert out.base_cluster_pred.tolist() == [cls[int(logits[i, cls].argmax())] for i, cls in enumerate(own)]
    assert torch.allclose(out.route_conf, rp.max(1).values, atol=1e-5) and torch.equal(out.route_pred, rp.argmax(1))
    assert torch.allclose(out.exit_conf, ep.max(1).values, atol=1e-5) and torch.equal(out.exit_pred, ep.argmax(1))
    back = tuning.CalibrationOutputs.from_tensors(tap, out.to_tensors())
    assert torch.equal(back.labels, out.labels) and torch.equal(back.route_pred, out.route_pred)
    assert (back.features - out.features).abs().max() <= tuning.quantize_features(out.features)["step"].max()


def _tiny_outputs(ds_seed: int, head_seed: int, batch_size: int = 250):
    """A tiny ResNet, its data, random heads and the calibration outputs at layer2.0, with the features of
    the unfolded stem (what the slow references run on too)."""
    model = make_tiny_resnet().eval()
    tap = "layer2.0"
    ds = make_tiny_dataset(n_per_class=10, seed=ds_seed)
    x, y = next(iterate_batches(ds, len(ds)))
    route, exit_head = _random_heads(model, tap, x, seed=head_seed)
    out = tuning.compute_calibration_outputs(model, ds, tap, ds.hierarchy, route, exit_head, rt=Runtime(device="cpu", batch_size=batch_size))
    with torch.no_grad():
        out.features = model.forward_stem(x, tap)
    return model, tap, ds, x, y, route, exit_head, out


def test_evaluate_schedule_equals_the_oracle_evaluation_and_the_routed_predictions():
    model, tap, ds, x, _, route, exit_head, out = _tiny_outputs(5, 2, batch_size=16)
    scores = _random_scores(model, seed=3)
    specs = make_cluster_specs(model, "tiny", tap, scores, ds.hierarchy, 0.2, 0.7, overrides={1: (0.0, 0.3)})
    costs = tuning.CostCache(model, (3, 32, 32))
    ev = tuning.evaluate_schedule(model, specs, out, ds.hierarchy, costs, 0.2, 0.7, rt=Runtime(device="cpu", batch_size=9, channels_last=False))
    ref = evaluate_cluster_subgraphs(model, specs, ds, ds.hierarchy, baseline=True)
    for a, b in zip(ev["clusters"], ref["clusters"]):
        assert (a["cluster"], a["n"], a["flops"], a["params"], a["flops_with_stem"]) == \
               (b["cluster"], b["n"], b["flops"], b["params"], b["flops_with_stem"])
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
        assert a["base_accuracy"] == pytest.approx(b["base_accuracy"], abs=1e-9)
    subs = {m: build_subgraph(model, s).eval() for m, s in specs.items()}
    expected = routed_predictions(subs, out.features, out.route_pred, Runtime(device="cpu", batch_size=5))
    assert torch.equal(ev["schedule"].pred, expected)
    assert ev["mean"]["accuracy"] == pytest.approx(ref["mean"]["accuracy"])
    # subgraphs handed in (as make_cluster_specs(..., built=) fills them) give the same evaluation
    built: dict = {}
    again = make_cluster_specs(model, "tiny", tap, scores, ds.hierarchy, 0.2, 0.7, overrides={1: (0.0, 0.3)}, built=built)
    assert again == specs
    ev2 = tuning.evaluate_schedule(model, specs, out, ds.hierarchy, costs, 0.2, 0.7, rt=Runtime(device="cpu", batch_size=9, channels_last=False),
                                   built=built)
    assert ev2["clusters"] == ev["clusters"] and torch.equal(ev2["schedule"].pred, ev["schedule"].pred)


def test_threshold_curves_follow_the_engine():
    model, tap, ds, x, y, route, exit_head, out = _tiny_outputs(6, 4)
    specs = make_cluster_specs(model, "tiny", tap, _random_scores(model, seed=5), ds.hierarchy, 0.1, 0.5)
    costs = tuning.CostCache(model, (3, 32, 32))
    ev = tuning.evaluate_schedule(model, specs, out, ds.hierarchy, costs, 0.1, 0.5, Runtime(device="cpu", channels_last=False))
    subs = [build_subgraph(model, specs[m]) for m in range(3)]
    for mode, gamma, tau in (("sinf", 0.5, None), ("cascade", 0.4, 0.3), ("exit", None, 0.2), ("sinf", 1.0, None),
                             ("cascade", 0.33, 0.57)):  # off the grid: the current setting is computed exactly
        pts = tuning.threshold_curves(out, costs, route, exit_head, ev["schedule"], gamma or 1.0, tau or 1.0)
        p = tuning.point_at(pts, mode, gamma, tau)
        assert (p["gamma"], p["tau"]) == (gamma, tau)
        eng = SemanticInference(model, route if mode != "exit" else None, subs if mode != "exit" else None,
                                exit_head if mode != "sinf" else None, tap=tap, mode=mode,
                                gamma=1.0 if gamma is None else gamma, tau=1.0 if tau is None else tau)
        res = eng.run(x)
        assert p["top1"] == pytest.approx(100.0 * float((res.pred == y).double().mean()), abs=1e-9), (mode, gamma, tau)
        c = res.counts()
        assert (p["exit_rate"], p["route_rate"]) == (pytest.approx(c["exit"] / len(y)), pytest.approx(c["route"] / len(y)))
    pts = tuning.threshold_curves(out, costs, route, exit_head, ev["schedule"], 1.0, 1.0)
    p = tuning.point_at(pts, "sinf", 1.0, None)
    assert p["fallback_rate"] == 1.0 and p["top1"] == pytest.approx(out.base_top1)
    assert len({q["gamma"] for q in pts if q["mode"] == "sinf"}) == tuning.CURVE_STEPS


def test_heads_survive_the_studio_file_format():
    model = make_tiny_resnet().eval()
    ds = make_tiny_dataset(n_per_class=4, seed=1)
    x, _ = next(iterate_batches(ds, len(ds)))
    route, exit_head = _random_heads(model, "layer2.0", x)
    tensors, shapes = tuning.heads_to_tensors({"route": {"layer2.0": route}, "exit": {"layer2.0": exit_head}})
    back = tuning.heads_from_tensors(tensors, shapes, "studio_heads.safetensors")
    h = model.forward_stem(x, "layer2.0")
    with torch.no_grad():
        assert torch.equal(back["route"]["layer2.0"].proba(h), route.proba(h))
        assert torch.equal(back["exit"]["layer2.0"].proba(h), exit_head.proba(h))
    bad = {k: v for k, v in tensors.items() if not k.startswith("exit::")}
    with pytest.raises(SinfError, match="studio_heads.safetensors does not hold valid heads"):
        tuning.heads_from_tensors(bad, shapes, "studio_heads.safetensors")


def test_chosen_points_read_the_benchmarks_operating_points():
    bench = {"sinf": {"operating_point": {"mode": "sinf", "tap": "a", "gamma": 0.8}}, "exit": {"top1": 1.0},
             "cascade": None}
    assert tuning.chosen_points(bench) == {"sinf": {"mode": "sinf", "tap": "a", "gamma": 0.8}}


# ------------------------------------------------------------------------------------ timing
def test_paired_stream_pairs_each_batch_and_rotates_the_order(monkeypatch):
    clock = [0.0]
    calls = []
    cost = {"base": 2.0, "fast": 1.0}

    def fake_timed(device):
        return clock[0]

    def make(name):
        def run(x):
            calls.append(name)
            clock[0] += cost[name] * x.shape[0]

        return run

    monkeypatch.setattr(timing, "timed", fake_timed)
    batches = [torch.zeros(3, 1), torch.zeros(1, 1), torch.zeros(2, 1)]
    out = timing.paired_stream({"base": make("base"), "fast": make("fast")}, batches, "base", rounds=2, warmup=1)
    assert calls[2:] == ["base", "fast", "fast", "base", "base", "fast", "fast", "base", "base", "fast", "fast", "base"]
    assert out["base"]["seconds"] == [6.0, 2.0, 4.0] * 2 and out["fast"]["seconds"] == [3.0, 1.0, 2.0] * 2
    assert out["fast"]["ratio"]["median"] == 2.0 and not out["fast"]["ratio"]["noisy"]
    assert out["fast"]["ips"] == pytest.approx(12 / 12.0) and out["base"]["ips"] == pytest.approx(12 / 24.0)
    with pytest.raises(SinfError, match="reference"):
        timing.paired_stream({"a": make("base")}, batches, "base")


def test_spread_marks_wide_or_short_series_as_noisy():
    s = timing.spread([1.0, 1.02, 0.98, 1.01, 0.99])
    assert s["median"] == 1.0 and s["q25"] == 0.99 and s["q75"] == 1.01 and not s["noisy"]
    assert timing.spread([1.0, 2.0, 0.5, 1.5])["noisy"]
    assert timing.spread([1.0, 1.0])["noisy"]
    with pytest.raises(SinfError):
        timing.spread([])
