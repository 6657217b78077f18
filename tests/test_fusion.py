"""BatchNorm folding: the folded copy computes the same function, keeps the module tree, and leaves the
original alone; what cannot be folded is left unfolded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_tiny_bottleneck, make_tiny_resnet, make_tiny_vgg
from sinf_core.engine import SemanticInference
from sinf_core.fusion import conv_bn_pairs, fold_batchnorm, prepare_for_inference
from sinf_core.router import RouteHead
from sinf_core.subgraph import SubgraphSpec, build_subgraph

MAKERS = {"resnet": make_tiny_resnet, "bottleneck": make_tiny_bottleneck, "vgg": make_tiny_vgg}

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _reachable_batchnorms(model) -> int:
    """BatchNorms a forward pass can reach: the module tree and the model's unit containers."""
    mods = {id(m): m for m in model.modules()}
    for _, unit in model.units():
        mods.update({id(m): m for m in unit.modules()})
    return sum(isinstance(m, nn.BatchNorm2d) for m in mods.values())


@pytest.mark.parametrize("kind", list(MAKERS))
def test_folded_model_matches_and_original_is_untouched(kind):
    m = MAKERS[kind]()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n_bn = _batchnorms(m)
    folded, n, why = fold_batchnorm(m)
    assert why is None and n == n_bn > 0  # every BatchNorm of these models follows a conv
    assert _reachable_batchnorms(folded) == 0
    assert folded.unit_names() == m.unit_names()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(folded(x), ref, atol=1e-4, rtol=1e-4)
        for tap in m.unit_names()[:-1]:  # stem and tail separately, as the engine runs them
            h_ref, h = m.forward_stem(x, tap), folded.forward_stem(x, tap)
            assert torch.allclose(h, h_ref, atol=1e-4, rtol=1e-4), tap
            assert torch.allclose(folded.forward_tail(h, tap), ref, atol=1e-4, rtol=1e-4), tap
    assert _batchnorms(m) == n_bn
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("kind", list(MAKERS))
def test_folded_subgraph_and_head_match(kind):
    m = MAKERS[kind]()
    tap = m.unit_names()[1]
    t = m.unit_index(tap)
    keep = {l.name: list(range(0, l.channels, 2)) for l in m.prunable_layers() if l.unit > t}
    sub = build_subgraph(m, SubgraphSpec("tiny", tap, keep, [0, 3]))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = m.forward_stem(x, tap)
        fsub, n, why = fold_batchnorm(sub)
        assert why is None and n == _batchnorms(sub) > 0 and _batchnorms(fsub) == 0
        ref, got = sub(h), fsub(h)
        assert torch.equal(torch.isneginf(ref), torch.isneginf(got))
        assert torch.allclose(got[:, [0, 3]], ref[:, [0, 3]], atol=1e-4, rtol=1e-4)
        head = RouteHead(h.shape[1], 3, hidden=5).eval()
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
        head.temperature.fill_(1.7)
        fhead, n, _ = fold_batchnorm(head)
        assert n == 1 and isinstance(fhead, RouteHead) and isinstance(fhead.bn, nn.Identity)
        assert float(fhead.temperature) == pytest.approx(1.7) and fhead.in_channels == head.in_channels
        assert torch.allclose(fhead.proba(h), head.proba(h), atol=1e-5)


def test_batchnorm_not_fed_only_by_a_conv_is_kept():
    class Shared(nn.Module):  # the conv output also feeds the residual sum: folding would change it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.bn2 = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(x)

    mod = Shared().eval()
    mod.bn.running_mean.fill_(0.5)
    assert conv_bn_pairs(mod) == []
    folded, n, why = fold_batchnorm(mod)
    assert n == 0 and why is None and _batchnorms(folded) == 2
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(folded(x), mod(x))


def test_modules_called_twice_are_not_folded():
    class Reused(nn.Module):  # one BatchNorm after two convs, and one conv before two BatchNorms
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
            self.c, self.bn2, self.bn3 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.a(x)) + self.bn(self.b(x)) + self.bn2(self.c(x)) + self.bn3(self.c(x))

    mod = Reused().eval()
    for bn in (mod.bn, mod.bn2, mod.bn3):
        bn.running_mean.uniform_(-1, 1)
    assert conv_bn_pairs(mod) == []
    folded, n, _ = fold_batchnorm(mod)
    x = torch.randn(2, 3, 4, 4)
    assert n == 0 and torch.allclose(folded(x), mod(x))


def test_untraceable_module_comes_back_unfolded_with_the_reason():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    mod = DataDependent().eval()
    folded, n, why = fold_batchnorm(mod)
    assert n == 0 and why and "TraceError" in why
    assert folded is not mod and isinstance(folded.bn, nn.BatchNorm2d)


def test_engine_with_folding_matches_the_unfolded_engine():
    m = make_tiny_vgg()
    tap = "features.7"
    x = torch.randn(16, 3, 32, 32)
    c = m.forward_stem(x[:1], tap).shape[1]
    torch.manual_seed(3)
    router, exit_head = RouteHead(c, 3, hidden=8).eval(), RouteHead(c, 6, hidden=8).eval()
    t = m.unit_index(tap)
    subs = [build_subgraph(m, SubgraphSpec("tiny", tap, {l.name: list(range(l.channels - 1)) for l in
                                                         m.prunable_layers() if l.unit > t}, None)) for _ in range(3)]
    kw = dict(tap=tap, mode="cascade", gamma=0.0, tau=0.5, keep_logits=True)
    plain = SemanticInference(m, router, subs, exit_head, **kw).run(x)
    eng = SemanticInference(m, router, subs, exit_head, fold_batchnorm=True, **kw)
    folded = eng.run(x)
    assert _batchnorms(eng.model) == 0 and all(_batchnorms(s) == 0 for s in eng.subgraphs)
    assert _batchnorms(m) > 0 and _batchnorms(subs[0]) > 0  # the caller's modules are left as they were
    assert torch.equal(plain.mode_per_sample, folded.mode_per_sample)
    assert torch.allclose(plain.logits, folded.logits, atol=1e-4, rtol=1e-4)


def test_prepare_for_inference_never_changes_the_callers_module():
    # it used to convert in place when not folding (the benchmark thereby changed a bundle router's heads)
    m = make_tiny_vgg().train()
    w = m.features[0].weight
    ready = prepare_for_inference(m, channels_last=True)
    assert ready is not m and not ready.training and m.training  # readied on a copy
    assert m.features[0].weight is w and not w.is_contiguous(memory_format=torch.channels_last)
    assert ready.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert prepare_for_inference(ready, channels_last=True) is ready  # already ready: shared, not copied
    assert prepare_for_inference(ready, channels_last=True, device="cpu") is ready
    assert prepare_for_inference(m.eval()) is m  # nothing to do
    folded = prepare_for_inference(m, fold_bn=True, channels_last=True)
    assert folded is not m and _batchnorms(folded) == 0 and _batchnorms(m) > 0
    assert folded.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ready(x), m.eval()(x), atol=1e-5)