"""GraphModel: torchvision / timm CNNs (and a plain-module CIFAR ResNet, checked against the hand-written
CIFAR path as an oracle) split into units, pruned physically, filled and counted."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from conftest import _randomise_bn, make_tiny_resnet
from sinf_core.cost import count_flops, count_params
from sinf_core.errors import SinfError
from sinf_core.models.graph import GraphModel
from sinf_core.subgraph import SubgraphSpec, build_subgraph, estimate_bn_stats, tail_batchnorms

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


class PlainCifarResNet(nn.Module):
    """The layers of a CIFAR ResNet under their own names, with an ordinary forward (no unit list)."""

    def __init__(self, cifar):
        super().__init__()
        for name, child in cifar.named_children():
            self.add_module(name, child)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tv_resnet18(seed=0):
    torch.manual_seed(seed)
    return _randomise_bn(torchvision.models.resnet18(num_classes=6), seed)


def tv_mobilenet_v2(seed=0):
    torch.manual_seed(seed)
    return _randomise_bn(torchvision.models.mobilenet_v2(num_classes=6, width_mult=0.5), seed)


def timm_resnet10t(seed=0):
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return _randomise_bn(timm.create_model("resnet10t", pretrained=False, num_classes=6), seed)


def plain_cifar_resnet(seed=0):
    return PlainCifarResNet(make_tiny_resnet(seed))


NETS = {"tv_resnet18": tv_resnet18, "tv_mobilenet_v2": tv_mobilenet_v2, "timm_resnet10t": timm_resnet10t,
        "plain_cifar_resnet": plain_cifar_resnet}


def taps(model):
    names = model.unit_names()
    return [None, names[0], names[len(names) // 2], names[-1]]


def random_keep(model, tap, seed):
    g = torch.Generator().manual_seed(seed)
    t = -1 if tap is None else model.unit_index(tap)
    keep = {}
    for layer in model.prunable_layers():
        if layer.unit > t:
            k = int(torch.randint(1, layer.channels, (1,), generator=g))
            keep[layer.name] = sorted(torch.randperm(layer.channels, generator=g)[:k].tolist())
    return keep


def reader_input_replaced(model, keep, values):
    """Reference by another route: on the base model, the removed channels of each pruned layer are
    replaced, where its reader reads them, by ``values[name][c]`` (0: plain removal)."""
    handles = []
    for layer in model.prunable_layers():
        if layer.name not in keep:
            continue
        removed = torch.ones(layer.channels, dtype=torch.bool)
        removed[keep[layer.name]] = False
        const = torch.as_tensor(values.get(layer.name, [0.0] * layer.channels), dtype=torch.float32)

        def pre(mod, inp, removed=removed, const=const, linear=isinstance(layer.reader, nn.Linear), c=layer.channels):
            x = inp[0]
            if linear:
                x = x.view(x.shape[0], c, -1)
                return (torch.where(removed.view(1, -1, 1), const.view(1, -1, 1), x).flatten(1),)
            return (torch.where(removed.view(1, -1, 1, 1), const.view(1, -1, 1, 1), x),)
        handles.append(layer.reader.register_forward_pre_hook(pre))
    return handles


@pytest.mark.parametrize("kind", list(NETS))
def test_units_share_the_modules_and_keep_the_keys(kind):
    base = NETS[kind]()
    m = GraphModel(base).eval()
    assert list(m.state_dict()) == list(base.state_dict())
    assert m.num_classes == 6 and m.prunable_layers()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = base(x)
        assert torch.equal(m(x), ref)
        for tap in taps(m)[1:]:
            h = m.forward_stem(x, tap)
            assert h.dim() == 4
            assert torch.allclose(m.forward_tail(h, tap), ref, atol=1e-6)
    # a checkpoint of the plain module loads into the wrapper and back
    m.load_state_dict(copy.deepcopy(base.state_dict()), strict=True)


@pytest.mark.parametrize("kind", list(NETS))
def test_keep_all_equals_base_and_dropped_channels_equal_masked_reference(kind):
    m = GraphModel(NETS[kind](seed=1)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        for tap in taps(m):
            h = x if tap is None else m.forward_stem(x, tap)
            t = -1 if tap is None else m.unit_index(tap)
            full = {l.name: list(range(l.channels))[::-1] for l in m.prunable_layers() if l.unit > t}
            assert (build_subgraph(m, SubgraphSpec(kind, tap, full, None))(h) - ref).abs().max() < 1e-5, tap
            keep = random_keep(m, tap, seed=2)
            sub = build_subgraph(m, SubgraphSpec(kind, tap, keep, None))
            got = sub(h)
            handles = reader_input_replaced(m, keep, {})
            try:
                masked = m(x)
            finally:
                for hd in handles:
                    hd.remove()
            assert (got - masked).abs().max() < 1e-4, (tap, float((got - masked).abs().max()))


def _reader_constant(model, layer, fill):
    """What ``layer``'s reader sees on each channel when A_l holds ``fill``, read off the base model itself:
    a BatchNorm output hook sets the channels (the activation then passes values in [0, 2) unchanged on
    every activation these models use), a large image keeps the border away, the reader's input is read at
    the centre."""
    seen = {}
    hb = layer.bn.register_forward_hook(
        lambda _m, _i, out: torch.as_tensor(fill).view(1, -1, 1, 1).expand_as(out).contiguous())
    hr = layer.reader.register_forward_pre_hook(lambda _m, inp: seen.setdefault("x", inp[0]))
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 256, 256))
    finally:
        hb.remove()
        hr.remove()
    x = seen["x"]
    if x.dim() == 2:
        return x.view(layer.channels, -1)[:, 0].tolist()
    return x[0, :, x.shape[2] // 2, x.shape[3] // 2].tolist()


@pytest.mark.parametrize("kind", ["tv_resnet18", "tv_mobilenet_v2", "timm_resnet10t"])
def test_mean_fill_equals_constant_reference(kind):
    """Removed channels act as constants at their reader (pushed through depthwise convs and pools first);
    the reference replaces the reader's input by those constants and adds their response away from the
    border (as the fold does) by masking with zeros and adding a convolution of the constant map."""
    m = GraphModel(NETS[kind](seed=3)).eval()
    tap = taps(m)[1]
    keep = random_keep(m, tap, seed=4)
    g = torch.Generator().manual_seed(5)
    layers = {l.name: l for l in m.prunable_layers()}
    fill = {n: (torch.rand(layers[n].channels, generator=g) * 2).tolist() for n in keep}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = m.forward_stem(x, tap)
        got = build_subgraph(m, SubgraphSpec(kind, tap, keep, None, fill))(h)
        seen = {name: torch.tensor(_reader_constant(m, layers[name], fill[name])) for name in keep}  # before any hook
        handles = reader_input_replaced(m, keep, {})
        for name in keep:
            layer = layers[name]
            const = seen[name]
            removed = torch.ones(layer.channels, dtype=torch.bool)
            removed[keep[name]] = False
            const = const * removed
            reader = layer.reader
            if isinstance(reader, nn.Linear):
                shift = nn.functional.linear(const.repeat_interleave(reader.in_features // layer.channels), reader.weight)
                view = shift
            else:
                k = reader.kernel_size[0]
                out = nn.functional.conv2d(const.view(1, -1, 1, 1).expand(1, layer.channels, 3 * k, 3 * k), reader.weight)
                view = out[0, :, out.shape[2] // 2, out.shape[3] // 2].view(1, -1, 1, 1)
            handles.append(reader.register_forward_hook(lambda _m, _i, out, v=view: out + v))
        try:
            ref = m(x)
        finally:
            for hd in handles:
                hd.remove()
        plain = build_subgraph(m, SubgraphSpec(kind, tap, keep, None))(h)
    assert (got - ref).abs().max() < 1e-3 * max(1.0, float(ref.abs().max())), float((got - ref).abs().max())
    assert not torch.allclose(got, plain, atol=1e-3)


def _expected_params(model, tap, keep):
    """Tail parameters after slicing, counted from each layer's kept channel counts and its kernel's
    shape (not from the sliced modules)."""
    t = -1 if tap is None else model.unit_index(tap)
    mods = [u for _, u in model.units()[t + 1:]] + [model.head_module()]
    out_kept, in_kept = {}, {}
    for layer in model.prunable_layers():
        if layer.name in keep:
            n = len(keep[layer.name])
            out_kept[id(layer.conv)] = out_kept[id(layer.bn)] = n
            for step in layer.through:
                if isinstance(step, (nn.Conv2d, nn.BatchNorm2d)):
                    out_kept[id(step)] = in_kept[id(step)] = n
            in_kept[id(layer.reader)] = n * (layer.reader.in_features // layer.channels
                                            if isinstance(layer.reader, nn.Linear) else 1)
    seen, total = set(), 0
    for unit in mods:
        for mod in unit.modules():
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            if isinstance(mod, nn.Conv2d):
                o, i = out_kept.get(id(mod), mod.out_channels), in_kept.get(id(mod), mod.in_channels)
                groups = o if mod.groups > 1 else 1
                total += o * (i // groups) * mod.kernel_size[0] * mod.kernel_size[1] + (o if mod.bias is not None else 0)
            elif isinstance(mod, nn.BatchNorm2d):
                total += 2 * out_kept.get(id(mod), mod.num_features)
            elif isinstance(mod, nn.Linear):
                o, i = mod.out_features, in_kept.get(id(mod), mod.in_features)
                total += o * i + (o if mod.bias is not None else 0)
            else:
                total += sum(p.numel() for p in mod.parameters(recurse=False))
    return total


def _macs_by_hooks(module, h):
    """2 x multiply-accumulates of every conv and linear layer, from their output shapes."""
    total = [0]

    def hook(mod, _inp, out):
        if isinstance(mod, nn.Conv2d):
            total[0] += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total[0] += out.numel() * mod.in_features
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(h)
    for hd in handles:
        hd.remove()
    return 2 * total[0]


@pytest.mark.parametrize("kind", list(NETS))
def test_parameter_and_flop_counts_match_an_independent_count(kind):
    m = GraphModel(NETS[kind](seed=6)).eval()
    tap = taps(m)[1]
    keep = random_keep(m, tap, seed=7)
    sub = build_subgraph(m, SubgraphSpec(kind, tap, keep, None))
    assert count_params(sub) == _expected_params(m, tap, keep)
    h = m.forward_stem(torch.randn(1, 3, 32, 32), tap)
    assert count_flops(sub, h) == _macs_by_hooks(sub, h)
    assert count_flops(sub, h) < count_flops(lambda v: m.forward_tail(v, tap), h)


def test_plain_cifar_resnet_matches_the_hand_written_family():
    """The oracle: the same layers found by the graph as by the CIFAR ResNet's own lists, and the same
    subgraph (zero and mean fill, BatchNorm re-estimation) from the same spec."""
    cifar = make_tiny_resnet(seed=8)
    graph = GraphModel(PlainCifarResNet(copy.deepcopy(cifar))).eval()
    assert graph.unit_names() == ["conv1"] + cifar.unit_names()[1:]
    mine = [(l.name, l.unit, l.channels) for l in graph.prunable_layers()]
    assert mine == [(l.name, l.unit, l.channels) for l in cifar.prunable_layers()]
    tap_c, tap_g = cifar.unit_names()[2], graph.unit_names()[2]
    keep = random_keep(cifar, tap_c, seed=9)
    layers = {l.name: l for l in cifar.prunable_layers()}
    fill = {n: (torch.rand(layers[n].channels) * 2).tolist() for n in keep}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        h = cifar.forward_stem(x, tap_c)
        assert torch.equal(h, graph.forward_stem(x, tap_g))
        for f in ({}, fill):
            a = build_subgraph(cifar, SubgraphSpec("c", tap_c, keep, [0, 3], f))(h)
            b = build_subgraph(graph, SubgraphSpec("c", tap_g, keep, [0, 3], f))(h)
            assert torch.allclose(a, b, atol=1e-6)
    assert sorted(n for n, _ in tail_batchnorms(cifar, tap_c)) == sorted(n for n, _ in tail_batchnorms(graph, tap_g))
    sa = estimate_bn_stats(cifar, SubgraphSpec("c", tap_c, keep, None), h, batch_size=4)
    sb = estimate_bn_stats(graph, SubgraphSpec("c", tap_g, keep, None), h, batch_size=4)
    assert sa.bn.keys() == sb.bn.keys()
    for k in sa.bn:
        assert torch.allclose(torch.tensor(sa.bn[k]["mean"]), torch.tensor(sb.bn[k]["mean"]), atol=1e-5)


def test_depthwise_chain_reestimates_its_batchnorms():
    """A mobilenet expansion conv is sliced through its depthwise conv: that conv's BatchNorm gets the
    kept channels' statistics too."""
    m = GraphModel(tv_mobilenet_v2(seed=10)).eval()
    tap = taps(m)[1]
    keep = random_keep(m, tap, seed=11)
    h = m.forward_stem(torch.randn(8, 3, 32, 32), tap)
    spec = estimate_bn_stats(m, SubgraphSpec("m", tap, keep, None), h, batch_size=8)
    sub = build_subgraph(m, spec)
    deep = [l for l in m.prunable_layers() if l.name in keep and any(isinstance(s, nn.Conv2d) for s in l.through)]
    assert deep
    names = {id(b): n for n, b in m.named_modules()}
    for layer in deep:
        dw_bn = [s for s in layer.through if isinstance(s, nn.BatchNorm2d)][0]
        assert len(spec.bn[names[id(dw_bn)]]["mean"]) == len(keep[layer.name])
    assert sub(h).shape == (8, 6)


def test_untraceable_and_unsupported_models_are_refused():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                x = self.conv(x)
            return self.fc(x.mean((2, 3)))

    with pytest.raises(SinfError, match="cannot be traced by torch.fx"):
        GraphModel(Dynamic())
    with pytest.raises(SinfError, match="no convolution"):
        GraphModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)))
    with pytest.raises(SinfError, match="does not run on inputs of shape"):
        GraphModel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("kind", ["tv_resnet18", "tv_mobilenet_v2", "timm_resnet10t"])
def test_slicing_agrees_with_torch_pruning(kind):
    """An independent implementation of dependency-aware channel removal: Torch-Pruning's DependencyGraph
    prunes the same output channels of a copy of the whole model (its groups follow each conv through
    BatchNorms and depthwise convs to the reader); the logits must be ours with zero fill."""
    tp = pytest.importorskip("torch_pruning")
    base = NETS[kind](seed=12)
    m = GraphModel(copy.deepcopy(base)).eval()
    keep = random_keep(m, None, seed=13)
    pruned = copy.deepcopy(base).eval()
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=torch.randn(1, 3, 32, 32))
    named = dict(pruned.named_modules())
    for name, idx in keep.items():
        drop = sorted(set(range(named[name].out_channels)) - set(idx))
        graph.get_pruning_group(named[name], tp.prune_conv_out_channels, idxs=drop).prune()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = build_subgraph(m, SubgraphSpec(kind, None, keep, None))(x)
        assert (got - pruned(x)).abs().max() < 1e-4
    assert count_params(build_subgraph(m, SubgraphSpec(kind, None, keep, None))) == count_params(pruned)
