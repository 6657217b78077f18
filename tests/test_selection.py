"""Network selection: the sweep's arithmetic against a per-sample loop, and the served chain against the
sweep's decisions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sinf_core.errors import SinfError
from sinf_core.selection import Gate, NetworkSelection, Stage, argmax_of, fit_gate, sweep_chain


def _stages(n=300, k=10, links=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    stages = []
    for i in range(links + 1):
        right = torch.rand(n, generator=g) < 0.5 + 0.15 * i
        pred = torch.where(right, labels, (labels + 1) % k)
        conf = torch.where(right, 0.5 + 0.5 * torch.rand(n, generator=g), torch.rand(n, generator=g))
        stages.append(Stage(f"net{i}", pred, float(10 ** (i + 1)), conf if i < links else None))
    return labels, stages


def _reference(labels, stages, ts):
    """One sample at a time: who answers, what it costs."""
    ok, flops, who = 0, 0.0, []
    for i in range(len(labels)):
        for k, s in enumerate(stages):
            f = s.flops if not torch.is_tensor(s.flops) else float(s.flops[i])
            flops += f
            if k == len(stages) - 1 or (ts[k] < 1.0 and float(s.conf[i]) >= ts[k]):
                ok += int(s.pred[i] == labels[i])
                who.append(k)
                break
    n = len(labels)
    return 100.0 * ok / n, flops / n, [who.count(k) / n for k in range(len(stages))]


@pytest.mark.parametrize("links", [1, 2])
def test_sweep_matches_a_per_sample_loop(links):
    labels, stages = _stages(links=links, seed=links)
    if links == 2:  # the last network's cost per input, as a routed engine's
        stages[-1].flops = torch.linspace(50.0, 150.0, len(labels), dtype=torch.float64)
    grid = [0.0, 0.3, 0.55, 0.8, 1.0]
    points = sweep_chain(labels, stages[-1].pred, stages, grid)
    assert len(points) == len(grid) ** links
    for p in points[:: max(1, len(points) // 7)]:
        top1, flops, answered = _reference(labels, stages, p["thresholds"])
        assert p["top1"] == pytest.approx(top1)
        assert p["flops"] == pytest.approx(flops)
        assert p["answered"] == pytest.approx(answered)
        assert p["networks"] == [s.name for s in stages]
    # never accept: the last network alone, at the cost of every network; accept all: the first alone
    never = next(p for p in points if all(t == 1.0 for t in p["thresholds"]))
    assert never["top1"] == pytest.approx(100.0 * float((stages[-1].pred == labels).double().mean()))
    assert never["top1_se"] == 0.0
    first = next(p for p in points if p["thresholds"][0] == 0.0)
    assert first["answered"][0] == 1.0 and first["flops"] == pytest.approx(stages[0].flops)


def test_sweep_and_gate_errors():
    labels, stages = _stages()
    with pytest.raises(SinfError, match="at least two networks"):
        sweep_chain(labels, labels, stages[:1])
    with pytest.raises(SinfError, match="needs a gate confidence"):
        sweep_chain(labels, labels, [Stage("a", labels, 1.0), stages[1]])
    with pytest.raises(SinfError, match="predictions for"):
        sweep_chain(labels, labels, [stages[0], Stage("b", labels[:5], 1.0)])
    for bad in (0.0, -1.0):
        with pytest.raises(SinfError, match="temperature"):
            Gate(temperature=bad)
    for bad in (-0.1, 1.5):
        with pytest.raises(SinfError, match="threshold"):
            Gate(threshold=bad)
    with pytest.raises(SinfError, match="one gate per gated network"):
        NetworkSelection([nn.Identity()], [], argmax_of(nn.Identity()))


def _net(seed, k=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, k)).eval()


@pytest.mark.parametrize("links", [1, 2])
def test_served_chain_matches_the_sweep(links):
    """The chain run batch by batch (unsure inputs only go on) gives the sweep's predictions and shares."""
    torch.manual_seed(7)
    x = torch.randn(97, 3, 8, 8)
    nets = [_net(i) for i in range(links + 1)]
    with torch.no_grad():
        logits = [m(x) for m in nets]
    labels = logits[-1].argmax(1)
    gates = [fit_gate(logits[i], labels) for i in range(links)]
    for i, g in enumerate(gates):  # thresholds that split the inputs: the median confidence
        g.threshold = float(g.confidence(logits[i])[0].median())
    stages = []
    for i, lg in enumerate(logits):
        conf, pred = gates[i].confidence(lg) if i < links else (None, lg.argmax(1))
        stages.append(Stage(f"n{i}", pred, 1.0 + i, conf))
    want_ts = [g.threshold for g in gates]
    point = next(p for p in sweep_chain(labels, labels, stages, sorted(set(want_ts))) if p["thresholds"] == want_ts)
    chain = NetworkSelection(nets[:-1], gates, argmax_of(nets[-1]))
    for bs in (None, 10):
        res = chain.run_pool(x, bs)
        want = torch.full((len(x),), -1)
        remaining = torch.ones(len(x), dtype=torch.bool)
        for i, s in enumerate(stages):
            take = remaining if i == links else remaining & gates[i].accepts(s.conf)
            want[take] = s.pred[take]
            remaining &= ~take
        assert torch.equal(res.pred, want)
        assert res.shares() == pytest.approx(point["answered"][: len(res.shares())])
        assert 100.0 * float((res.pred == labels).double().mean()) == pytest.approx(point["top1"])
    assert 0 < point["answered"][0] < 1  # the gate really splits this batch


def test_fit_gate_calibrates():
    """A temperature fitted on over-confident logits lowers their confidence (NLL decreases)."""
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (400,))
    logits = torch.randn(400, 5) * 8  # confident and mostly wrong
    g = fit_gate(logits, labels)
    assert g.temperature > 1.0
    assert float(g.confidence(logits)[0].mean()) < float(Gate().confidence(logits)[0].mean())
