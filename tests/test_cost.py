"""Parameter and FLOP counts against an independent analytic count (2 x MACs per conv / linear)."""

import pytest
import torch
from torch import nn

from conftest import _randomise_bn, make_tiny_bottleneck, make_tiny_resnet, make_tiny_vgg
from sinf_core.cost import count_flops, count_params, model_cost, module_cost, stem_cost, stem_output, tail_cost
from sinf_core.models import build_model
from sinf_core.models.resnet_cifar import Bottleneck
from sinf_core.models.vgg_cifar import CifarVGG
from sinf_core.subgraph import SubgraphSpec, build_subgraph


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


# ---------------------------------------------------------------- analytic counts (no torch involved)

def conv_p(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def conv_f(cin, cout, k, s_out):
    return 2 * cin * cout * k * k * s_out * s_out


def bn_p(c):
    return 2 * c


def resnet_units(layers, widths, bottleneck, num_classes, kept=None, classes_out=None, size=32):
    """[(unit name, params, flops)] for every unit, plus (params, flops) of the head."""
    kept = kept or {}
    w0 = widths[0]
    units = [("stem", conv_p(3, w0, 3) + bn_p(w0), conv_f(3, w0, 3, size))]
    cin, s = w0, size
    for i, (n, w) in enumerate(zip(layers, widths)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            s_out = s // stride
            name = f"layer{i + 1}.{j}"
            if bottleneck:
                cout = 4 * w
                k1, k2 = kept.get(f"{name}.conv1", w), kept.get(f"{name}.conv2", w)
                p = conv_p(cin, k1, 1) + bn_p(k1) + conv_p(k1, k2, 3) + bn_p(k2) + conv_p(k2, cout, 1) + bn_p(cout)
                f = conv_f(cin, k1, 1, s) + conv_f(k1, k2, 3, s_out) + conv_f(k2, cout, 1, s_out)
            else:
                cout = w
                k = kept.get(f"{name}.conv1", w)
                p = conv_p(cin, k, 3) + bn_p(k) + conv_p(k, w, 3) + bn_p(w)
                f = conv_f(cin, k, 3, s_out) + conv_f(k, w, 3, s_out)
            if stride != 1 or cin != cout:
                p += conv_p(cin, cout, 1) + bn_p(cout)
                f += conv_f(cin, cout, 1, s_out)
            units.append((name, p, f))
            cin, s = cout, s_out
    n_out = num_classes if classes_out is None else classes_out
    return units, (cin * n_out + n_out, 2 * cin * n_out)


def vgg_units(cfg, num_classes, kept=None, classes_out=None, size=32, hidden=512):
    kept = kept or {}
    units, cin, s, idx = [], 3, size, 0
    for pos, v in enumerate(cfg):
        if v == "M":
            idx += 1
            continue
        name = f"features.{idx}"
        cout = kept.get(name, v)
        units.append((name, conv_p(cin, cout, 3, bias=True) + bn_p(cout), conv_f(cin, cout, 3, s)))
        if pos + 1 < len(cfg) and cfg[pos + 1] == "M":
            s //= 2
        cin, idx = cout, idx + 3
    n_out = num_classes if classes_out is None else classes_out
    feat = cin * s * s
    params = feat * hidden + hidden + hidden * hidden + hidden + hidden * n_out + n_out
    return units, (params, 2 * (feat * hidden + hidden * hidden + hidden * n_out))


TINY_VGG_CFG = [4, "M", 8, 8, "M", 8, "M", 8, "M", 8, "M"]
SPATIAL_VGG_CFG = [4, "M", 6, 8, "M"]


def make_vgg_spatial(seed=0):
    torch.manual_seed(seed)
    m = CifarVGG(SPATIAL_VGG_CFG, num_classes=6)
    m.classifier[0] = nn.Linear(8 * 8 * 8, 512)
    return _randomise_bn(m, seed)


CASES = {
    "resnet": (make_tiny_resnet, lambda **kw: resnet_units([2, 2, 2], [4, 8, 8], False, 6, **kw)),
    "bottleneck": (make_tiny_bottleneck, lambda **kw: resnet_units([1, 2], [4, 8], True, 6, **kw)),
    "vgg": (make_tiny_vgg, lambda **kw: vgg_units(TINY_VGG_CFG, 6, **kw)),
    "vgg_spatial": (make_vgg_spatial, lambda **kw: vgg_units(SPATIAL_VGG_CFG, 6, **kw)),
}


def split_cost(units, head, t):
    """(stem params, stem flops), (tail params, tail flops) when the stem is units 0..t."""
    stem = (sum(p for _, p, _ in units[: t + 1]), sum(f for _, _, f in units[: t + 1]))
    tail = (sum(p for _, p, _ in units[t + 1 :]) + head[0], sum(f for _, _, f in units[t + 1 :]) + head[1])
    return stem, tail


# ---------------------------------------------------------------- tests

def test_single_layers_match_formula():
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1)
    x = torch.randn(1, 5, 16, 16)
    assert count_flops(conv, x) == 2 * 5 * 7 * 9 * 8 * 8
    assert count_flops(conv, torch.randn(4, 5, 16, 16)) == 4 * 2 * 5 * 7 * 9 * 8 * 8  # whole batch
    assert count_params(conv) == 5 * 7 * 9 + 7
    lin = nn.Linear(10, 3)
    assert count_flops(lin, torch.randn(1, 10)) == 2 * 10 * 3
    assert count_params(lin) == 33
    # element-wise work is free; a shared parameter is counted once
    assert count_flops(nn.Sequential(nn.BatchNorm2d(5).eval(), nn.ReLU(), nn.MaxPool2d(2)), x) == 0
    shared = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(shared) == 33 and count_params([lin, shared]) == 33


@pytest.mark.parametrize("kind", list(CASES))
def test_model_stem_tail_costs_match_analytic(kind):
    make, analytic = CASES[kind]
    m = make()
    units, head = analytic()
    assert [u for u, _, _ in units] == m.unit_names()
    total = model_cost(m)
    assert total.params == sum(p for _, p, _ in units) + head[0] == count_params(m)
    assert total.flops == sum(f for _, _, f in units) + head[1]
    for t, tap in enumerate(m.unit_names()):
        (sp, sf), (tp, tf) = split_cost(units, head, t)
        assert stem_cost(m, tap).to_json() == {"params": sp, "flops": sf}, tap
        assert tail_cost(m, tap).to_json() == {"params": tp, "flops": tf}, tap
    assert stem_cost(m, None).to_json() == {"params": 0, "flops": 0}
    assert tail_cost(m, None) == total


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("restricted", [False, True])
def test_subgraph_costs_match_analytic(kind, restricted):
    make, analytic = CASES[kind]
    m = make()
    g = torch.Generator().manual_seed(1)
    classes = [0, 3, 4] if restricted else None
    for t, tap in enumerate([None] + m.unit_names()[:-1]):
        ti = t - 1  # unit index of the tap (-1 for None)
        keep = {}
        for l in m.prunable_layers():
            if l.unit > ti:
                k = int(torch.randint(1, l.channels + 1, (1,), generator=g))
                keep[l.name] = sorted(torch.randperm(l.channels, generator=g)[:k].tolist())
        sub = build_subgraph(m, SubgraphSpec("tiny", tap, keep, classes))
        units, head = analytic(kept={k: len(v) for k, v in keep.items()}, classes_out=None if classes is None else 3)
        _, (tp, tf) = split_cost(units, head, ti)
        got = module_cost(sub, stem_output(m, tap))
        assert (got.params, got.flops) == (tp, tf), (kind, tap)


def test_resnet56_and_resnet50_match_analytic():
    m = build_model("cifar100_resnet56")
    units, head = resnet_units([9, 9, 9], [16, 32, 64], False, 100)
    c = model_cost(m)
    assert c.params == 861_620 == sum(p for _, p, _ in units) + head[0]
    assert c.flops == sum(f for _, _, f in units) + head[1]
    assert round(c.flops / 2e6, 2) == 125.75  # MACs: the 125.75 M usually quoted for ResNet-56
    m50 = build_model("cifar100_resnet50")
    assert isinstance(m50.layer1[0], Bottleneck)
    units, head = resnet_units([3, 4, 6, 3], [64, 128, 256, 512], True, 100)
    c = model_cost(m50)
    assert (c.params, c.flops) == (sum(p for _, p, _ in units) + head[0], sum(f for _, _, f in units) + head[1])
