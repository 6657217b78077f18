"""The routed inference engine: exactness against the base model, grouping, pooling and validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import make_tiny_bottleneck, make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core.data import iterate_batches
from sinf_core.engine import EXIT, FALLBACK, MODE_NAMES, ROUTE, SemanticInference
from sinf_core.errors import SinfError
from sinf_core.runtime import Runtime
from sinf_core.router import RouteHead

MAKERS = {"resnet": make_tiny_resnet, "bottleneck": make_tiny_bottleneck, "vgg": make_tiny_vgg}
TAPS = {"resnet": "layer2.0", "bottleneck": "layer1.0", "vgg": "features.7"}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


class FullTail(nn.Module):
    """Stand-in subgraph: the base model's unpruned tail (keeps every channel, full head)."""

    def __init__(self, model, tap: str):
        super().__init__()
        self.model, self.tap = model, tap

    def forward(self, h):
        return self.model.forward_tail(h, self.tap)


class RestrictedTail(nn.Module):
    """Stand-in subgraph with a restricted head: the full tail, logits outside ``classes`` = -inf."""

    def __init__(self, model, tap: str, classes: list[int]):
        super().__init__()
        self.model, self.tap, self.classes = model, tap, torch.as_tensor(classes)

    def forward(self, h):
        z = self.model.forward_tail(h, self.tap)
        out = torch.full_like(z, float("-inf"))
        out[:, self.classes] = z[:, self.classes]
        return out


def _heads(model, tap: str, seed: int = 1, t_route: float = 1.0, t_exit: float = 1.0):
    """Random route (3 clusters) and exit (6 classes) heads at ``tap``, in eval mode."""
    x = torch.zeros(1, 3, 32, 32)
    c = model.forward_stem(x, tap).shape[1]
    torch.manual_seed(seed)
    router, exit_head = RouteHead(c, 3, hidden=8).eval(), RouteHead(c, 6, hidden=8).eval()
    router.temperature.fill_(t_route)
    exit_head.temperature.fill_(t_exit)
    return router, exit_head


def _center(model, tap, heads, x) -> None:
    """Shift each head's output biases so that every output wins for some inputs of ``x``."""
    with torch.no_grad():
        h = model.forward_stem(x, tap)
        for head in heads:
            z = head(h)
            head.fc.bias.sub_(z.mean(0))
            head.fc.weight.mul_(1.0 / z.std(0).mean())
            head.fc.bias.mul_(1.0 / z.std(0).mean())


def _thresholds(model, tap, router, exit_head, x, q_route=0.4, q_exit=0.7) -> tuple[float, float]:
    """gamma / tau at quantiles of the heads' confidences, so every path is exercised."""
    with torch.no_grad():
        h = model.forward_stem(x, tap)
        rc = torch.softmax(router(h) / router.temperature, 1).amax(1)
        ec = torch.softmax(exit_head(h) / exit_head.temperature, 1).amax(1)
    return float(rc.quantile(q_route)), float(ec.quantile(q_exit))


def _images(n_per_class: int = 6, seed: int = 3):
    ds = make_tiny_dataset(n_per_class=n_per_class, seed=seed)
    x, y = next(iterate_batches(ds, len(ds)))
    return ds, x, y


@pytest.mark.parametrize("arch", list(MAKERS))
def test_full_tails_reproduce_the_base_model(arch):
    model = MAKERS[arch]()
    tap = TAPS[arch]
    router, _ = _heads(model, tap)
    _, x, _ = _images()
    eng = SemanticInference(model, router, [FullTail(model, tap) for _ in range(3)], tap=tap, gamma=0.0,
                            keep_logits=True)
    res = eng.run(x)
    with torch.no_grad():
        base = model(x)
    assert (res.mode_per_sample == ROUTE).all()  # gamma = 0: everything is routed
    assert torch.equal(res.pred, base.argmax(1))
    torch.testing.assert_close(res.logits, base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", list(MAKERS))
def test_keep_all_subgraphs_reproduce_the_base_model(arch):
    from sinf_core.subgraph import SubgraphSpec, build_subgraph

    model = MAKERS[arch]()
    tap = TAPS[arch]
    t = model.unit_index(tap)
    keep = {l.name: list(range(l.channels)) for l in model.prunable_layers() if l.unit > t}
    subs = [build_subgraph(model, SubgraphSpec("tiny", tap, keep, None)) for _ in range(3)]
    router, _ = _heads(model, tap)
    _, x, _ = _images()
    res = SemanticInference(model, router, subs, tap=tap, gamma=0.0, keep_logits=True).run(x)
    with torch.no_grad():
        base = model(x)
    assert torch.equal(res.pred, base.argmax(1))
    torch.testing.assert_close(res.logits, base, rtol=1e-5, atol=1e-5)


def test_gamma_one_tau_one_falls_back_even_at_confidence_one():
    model = make_tiny_resnet()
    tap = TAPS["resnet"]
    router, exit_head = _heads(model, tap)
    # Make both heads certain: softmax rounds to exactly 1.0 in float32.
    with torch.no_grad():
        router.fc.bias.copy_(torch.tensor([1e4, 0.0, 0.0]))
        exit_head.fc.bias.copy_(torch.tensor([1e4, 0, 0, 0, 0, 0.0]))
    _, x, _ = _images()
    subs = [RestrictedTail(model, tap, [c]) for c in (0, 2, 4)]  # wrong on purpose: must never run
    eng = SemanticInference(model, router, subs, exit_head, tap=tap, mode="cascade", gamma=1.0, tau=1.0,
                            keep_logits=True)
    res = eng.run(x)
    assert (res.route_conf == 1.0).all() and (res.exit_conf == 1.0).all()
    assert (res.mode_per_sample == FALLBACK).all() and res.fallback.all()
    with torch.no_grad():
        base = model(x)
    assert torch.equal(res.pred, base.argmax(1))
    torch.testing.assert_close(res.logits, base, rtol=1e-5, atol=1e-5)
    # The same confident heads do answer once the thresholds are below 1.
    res2 = eng.set_thresholds(gamma=0.999, tau=0.999).run(x)
    assert (res2.mode_per_sample == EXIT).all() and (res2.pred == 0).all()


def _expected(model, tap, router, exit_head, subs, x, gamma, tau, mode):
    """Independent per-sample computation of what the engine must output."""
    with torch.no_grad():
        h = model.forward_stem(x, tap)
        base = model(x)
        rp = torch.softmax(router(h) / router.temperature, 1)
        ep = torch.softmax(exit_head(h) / exit_head.temperature, 1)
        preds, modes, routes = [], [], []
        for i in range(len(x)):
            rc, rm = float(rp[i].max()), int(rp[i].argmax())
            ec, ecls = float(ep[i].max()), int(ep[i].argmax())
            if mode in ("exit", "cascade") and tau < 1 and ec >= tau:
                preds.append(ecls), modes.append(EXIT), routes.append(-1)
                continue
            r = rm if mode in ("sinf", "cascade") else -1
            routes.append(r)
            if mode in ("sinf", "cascade") and gamma < 1 and rc >= gamma and subs[rm] is not None:
                preds.append(int(subs[rm](h[i : i + 1]).argmax(1))), modes.append(ROUTE)
            else:
                preds.append(int(base[i].argmax())), modes.append(FALLBACK)
    return torch.tensor(preds), torch.tensor(modes, dtype=torch.int8), torch.tensor(routes), rp, ep


@pytest.mark.parametrize("mode", ["sinf", "exit", "cascade"])
def test_decisions_match_an_independent_per_sample_computation(mode):
    model = make_tiny_resnet()
    tap = TAPS["resnet"]
    router, exit_head = _heads(model, tap, seed=5, t_route=0.3, t_exit=0.5)
    subs = [RestrictedTail(model, tap, [0, 1]), None, RestrictedTail(model, tap, [4, 5])]
    _, x, _ = _images(n_per_class=8)
    _center(model, tap, [router, exit_head], x)
    gamma, tau = _thresholds(model, tap, router, exit_head, x)
    eng = SemanticInference(model, router, subs, exit_head, tap=tap, mode=mode, gamma=gamma, tau=tau)
    res = eng.run(x)
    pred, modes, routes, rp, ep = _expected(model, tap, router, exit_head, subs, x, gamma, tau, mode)
    counts = res.counts()
    # The setting must exercise every path of the mode, or the test proves little.
    assert all(counts[k] > 0 for k in {"sinf": ("route", "fallback"), "exit": ("exit", "fallback"),
                                         "cascade": ("exit", "route", "fallback")}[mode]), counts
    assert torch.equal(res.mode_per_sample, modes)
    assert torch.equal(res.pred, pred)
    assert torch.equal(res.route, routes)
    ran_router = routes >= 0
    torch.testing.assert_close(res.route_conf[ran_router], rp.max(1).values[ran_router])
    assert torch.isnan(res.route_conf[~ran_router]).all()
    if mode == "sinf":
        assert torch.isnan(res.exit_conf).all()
    else:
        torch.testing.assert_close(res.exit_conf, ep.max(1).values)
    assert res.modes() == [MODE_NAMES[int(m)] for m in modes]


def _cascade_engine(arch: str, seed: int, n_per_class: int, normalise: bool = False):
    """A cascade engine (keep_logits) on the tiny ``arch`` model with three two-class tails and thresholds
    that send the images down every path; with ``normalise``, the data set's mean / std for uint8 input.
    Returns (engine, data set, images)."""
    model = MAKERS[arch]()
    tap = TAPS[arch]
    router, exit_head = _heads(model, tap, seed=seed, t_route=0.3, t_exit=0.4)
    subs = [RestrictedTail(model, tap, m) for m in ([0, 1], [2, 3], [4, 5])]
    ds, x, _ = _images(n_per_class=n_per_class)
    _center(model, tap, [router, exit_head], x)
    gamma, tau = _thresholds(model, tap, router, exit_head, x)
    norm = {"mean": ds.mean, "std": ds.std} if normalise else {}
    eng = SemanticInference(model, router, subs, exit_head, tap=tap, mode="cascade", gamma=gamma, tau=tau,
                            keep_logits=True, **norm)
    return eng, ds, x


def test_shuffled_batch_gives_the_same_per_sample_outputs():
    eng, _, x = _cascade_engine("vgg", seed=2, n_per_class=8)
    a = eng.run(x)
    assert all(v > 0 for v in a.counts().values()), a.counts()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    b = eng.run(x[perm])
    assert torch.equal(b.pred, a.pred[perm])
    assert torch.equal(b.route, a.route[perm])
    assert torch.equal(b.mode_per_sample, a.mode_per_sample[perm])
    torch.testing.assert_close(b.route_conf, a.route_conf[perm], equal_nan=True)
    torch.testing.assert_close(b.exit_conf, a.exit_conf[perm], equal_nan=True)
    torch.testing.assert_close(b.logits, a.logits[perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 16, 1000])
def test_run_pool_equals_per_batch_runs(batch_size):
    eng, ds, x = _cascade_engine("bottleneck", seed=4, n_per_class=7, normalise=True)
    pooled = eng.run_pool(x, batch_size)
    assert all(v > 0 for v in pooled.counts().values()), pooled.counts()
    parts = [eng.run(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
    assert torch.equal(pooled.pred, torch.cat([p.pred for p in parts]))
    assert torch.equal(pooled.mode_per_sample, torch.cat([p.mode_per_sample for p in parts]))
    assert torch.equal(pooled.route, torch.cat([p.route for p in parts]))
    torch.testing.assert_close(pooled.logits, torch.cat([p.logits for p in parts]), rtol=1e-5, atol=1e-5)
    # uint8 images are normalised with the engine's mean / std: same outputs as the float path.
    from_uint8 = eng.run_pool(ds.images, batch_size)
    assert torch.equal(from_uint8.pred, pooled.pred)


def test_batch_of_one_and_missing_subgraph_falls_back():
    model = make_tiny_resnet()
    tap = TAPS["resnet"]
    router, _ = _heads(model, tap)
    _, x, _ = _images()
    eng = SemanticInference(model, router, {0: FullTail(model, tap)}, tap=tap, gamma=0.0)
    res = eng.run(x)
    with torch.no_grad():
        base = model(x).argmax(1)
    assert torch.equal(res.mode_per_sample == ROUTE, res.route == 0)  # clusters 1, 2 have no subgraph
    assert torch.equal(res.pred, base)
    one = eng.run(x[:1])
    assert one.pred.shape == (1,) and int(one.pred) == int(base[0])
    assert torch.equal(eng.predict(x[3:4]), base[3:4])


def test_everything_exits_at_tau_zero():
    model = make_tiny_resnet()
    tap = TAPS["resnet"]
    router, exit_head = _heads(model, tap)
    _, x, _ = _images()
    res = SemanticInference(model, router, [FullTail(model, tap)] * 3, exit_head, tap=tap, mode="cascade",
                            tau=0.0).run(x)
    assert (res.mode_per_sample == EXIT).all() and (res.route == -1).all() and torch.isnan(res.route_conf).all()
    with torch.no_grad():
        assert torch.equal(res.pred, exit_head(model.forward_stem(x, tap)).argmax(1))


def test_bf16_and_channels_last_run():
    model = make_tiny_resnet()
    tap = TAPS["resnet"]
    router, _ = _heads(model, tap)
    _, x, _ = _images()
    with torch.no_grad():
        base = model(x)
    cl = SemanticInference(model, router, [FullTail(model, tap)] * 3, tap=tap, gamma=0.0, rt=Runtime(device="cpu", channels_last=True),
                           keep_logits=True).run(x)
    torch.testing.assert_close(cl.logits, base, rtol=1e-4, atol=1e-4)
    bf = SemanticInference(model, router, [FullTail(model, tap)] * 3, tap=tap, gamma=0.0, rt=Runtime(device="cpu", bf16=True),
                           keep_logits=True).run(x)
    assert bf.logits.dtype == torch.float32
    assert (bf.pred == base.argmax(1)).float().mean() > 0.8


def test_bad_inputs_raise_clear_errors():
    model = make_tiny_resnet()
    tap = TAPS["resnet"]
    router, exit_head = _heads(model, tap)
    subs = [FullTail(model, tap)] * 3
    eng = SemanticInference(model, router, subs, tap=tap)
    with pytest.raises(SinfError, match="empty batch"):
        eng.run(torch.zeros(0, 3, 32, 32))
    with pytest.raises(SinfError, match=r"\[N, 3, 32, 32\].*\[2, 3, 16, 16\]"):
        eng.run(torch.zeros(2, 3, 16, 16))
    with pytest.raises(SinfError, match=r"\[N, 3, 32, 32\].*\[2, 1, 32, 32\]"):
        eng.run(torch.zeros(2, 1, 32, 32))
    with pytest.raises(SinfError, match="unsqueeze"):
        eng.run(torch.zeros(3, 32, 32))
    with pytest.raises(SinfError, match="mean and std"):
        eng.run(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(SinfError, match="batch size"):
        eng.run_pool(torch.zeros(2, 3, 32, 32), 0)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(SinfError, match="gamma"):
            SemanticInference(model, router, subs, tap=tap, gamma=bad)
        with pytest.raises(SinfError, match="tau"):
            SemanticInference(model, router, subs, exit_head, tap=tap, mode="cascade", tau=bad)
        with pytest.raises(SinfError, match="gamma"):
            eng.set_thresholds(gamma=bad)
    with pytest.raises(SinfError, match="mode"):
        SemanticInference(model, router, subs, tap=tap, mode="fast")
    with pytest.raises(SinfError, match="needs an exit head"):
        SemanticInference(model, router, subs, tap=tap, mode="cascade")
    with pytest.raises(SinfError, match="needs a router"):
        SemanticInference(model, None, subs, tap=tap, mode="sinf")
    with pytest.raises(SinfError, match="tap"):
        SemanticInference(model, router, subs)
    with pytest.raises(SinfError, match="cluster 5"):
        SemanticInference(model, router, {5: subs[0]}, tap=tap)


@pytest.mark.realdata
def test_resnet56_keep_all_subgraphs_reproduce_the_base_model(real_env):
    """Public ResNet-56, 20 keep-all subgraphs at layer3.4 built by build_subgraph, a random router
    centred to spread routes: every routed or fallen-back prediction equals the base model's."""
    from sinf_core.data import load_dataset
    from sinf_core.models import load_model
    from sinf_core.subgraph import SubgraphSpec, build_subgraph

    model = load_model("cifar100_resnet56", progress=False).eval()
    test = load_dataset("cifar100", "test", None, False)
    x, _ = next(iterate_batches(test, 128))
    tap = "layer3.4"
    torch.manual_seed(0)
    router = RouteHead(64, 20).eval()
    _center(model, tap, [router], x)
    subs = [build_subgraph(model, SubgraphSpec("cifar100_resnet56", tap, {}, None)) for _ in range(20)]
    with torch.no_grad():
        gamma = float(torch.softmax(router(model.forward_stem(x, tap)), 1).amax(1).median())
        base = model(x)
    eng = SemanticInference(model, router, subs, tap=tap, gamma=gamma, keep_logits=True)
    res = eng.run_pool(x, 48)
    assert res.counts()["route"] > 30 and res.counts()["fallback"] > 30
    assert len(torch.unique(res.route)) > 5
    assert torch.equal(res.pred, base.argmax(1))
    torch.testing.assert_close(res.logits, base, rtol=1e-4, atol=1e-4)
