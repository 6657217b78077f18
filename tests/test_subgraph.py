"""Retention schedule, kept indices, physically sliced subgraphs, per-cluster evaluation."""

import contextlib
import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import _randomise_bn, make_tiny_bottleneck, make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core.runtime import Runtime
from sinf_core.cost import module_cost
from sinf_core.errors import SinfError
from sinf_core.models.vgg_cifar import CifarVGG
from sinf_core.subgraph import (
    Subgraph, SubgraphSpec, build_subgraph, compare_tail_speed, evaluate_cluster_subgraphs, first_pruned_index,
    keep_indices, kept_count, load_subgraph_specs, load_subgraph_weights, make_cluster_specs, model_schedule,
    retention_schedule, save_subgraph_weights, save_subgraphs,
)

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


MAKERS = {"resnet": make_tiny_resnet, "bottleneck": make_tiny_bottleneck, "vgg": make_tiny_vgg}


def make_vgg_spatial(seed: int = 0) -> CifarVGG:
    """A VGG whose last conv map is 8x8 (two pools on 32x32): the classifier reads C*64 features."""
    torch.manual_seed(seed)
    m = CifarVGG([4, "M", 6, 8, "M"], num_classes=6)
    m.classifier[0] = nn.Linear(8 * 8 * 8, 512)
    return _randomise_bn(m, seed)


ALL_MAKERS = dict(MAKERS, vgg_spatial=make_vgg_spatial)


# ---------------------------------------------------------------- schedule

def test_retention_schedule_interpolates_and_rounds():
    names = ["a", "b", "c", "d", "e"]
    ch = [10, 10, 20, 30, 64]
    # r = 0.1, 0.2333, 0.3667, 0.5 for b..e (M = b, L = e); a is the stem.
    got = retention_schedule(names, 1, 0.1, 0.5, channels=ch)
    assert got == {"b": 9, "c": math.ceil(20 * (1 - 0.1 - 0.4 / 3)), "d": math.ceil(30 * (1 - 0.1 - 0.8 / 3)), "e": 32}
    assert got == {"b": 9, "c": 16, "d": 19, "e": 32}
    # rounded up to a multiple of 8, never above C
    assert retention_schedule(names, 1, 0.1, 0.5, multiple_of=8, channels=ch) == {"b": 10, "c": 16, "d": 24, "e": 32}
    # exact products do not round up through float error: (1 - 0.3) * 10 = 7.000000000000001
    assert kept_count(10, 0.3) == 7 and kept_count(100, 0.07) == 93
    # never fewer than one channel
    assert kept_count(4, 0.99) == 1 and kept_count(1, 0.9) == 1
    # one pruned layer gets r_L; nothing after the tap gives {}
    assert retention_schedule(names, 4, 0.1, 0.5, channels=ch) == {"e": 32}
    assert retention_schedule(names, 5, 0.1, 0.5, channels=ch) == {}
    # r = 0 keeps everything
    assert retention_schedule(names, 0, 0.0, 0.0, channels=ch) == dict(zip(names, ch))


@pytest.mark.parametrize("r_M,r_L", [(1.0, 0.5), (0.1, 1.0), (-0.01, 0.5), (0.1, float("nan")), ("x", 0.5), (0.1, 3)])
def test_retention_schedule_rejects_bad_r(r_M, r_L):
    with pytest.raises(SinfError, match=r"\[0, 1\)"):
        retention_schedule(["a", "b"], 0, r_M, r_L, channels=[4, 4])


def test_retention_schedule_bad_arguments():
    with pytest.raises(SinfError, match="channel count"):
        retention_schedule(["a", "b"], 0, 0.1, 0.5)
    with pytest.raises(SinfError, match="2 layers"):
        retention_schedule(["a", "b"], 0, 0.1, 0.5, channels=[4])
    with pytest.raises(SinfError, match="out of range"):
        retention_schedule(["a", "b"], 3, 0.1, 0.5, channels=[4, 4])
    with pytest.raises(SinfError, match="multiple_of"):
        retention_schedule(["a", "b"], 0, 0.1, 0.5, multiple_of=0, channels=[4, 4])


def test_model_schedule_starts_after_tap():
    m = make_tiny_resnet()  # units: stem, layer1.0, layer1.1, layer2.0, layer2.1, layer3.0, layer3.1
    assert first_pruned_index(m, None) == 0
    assert first_pruned_index(m, "layer2.0") == 3
    assert first_pruned_index(m, "layer3.1") == 6
    kept = model_schedule(m, "layer2.0", 0.0, 0.5)
    assert list(kept) == ["layer2.1.conv1", "layer3.0.conv1", "layer3.1.conv1"]
    assert kept == {"layer2.1.conv1": 8, "layer3.0.conv1": math.ceil(8 * 0.75), "layer3.1.conv1": 4}
    assert model_schedule(m, "layer3.1", 0.1, 0.5) == {}


def test_keep_indices_top_k_sorted_and_stable():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0]), "b": torch.tensor([3.0, 1.0, 2.0])}
    assert keep_indices(scores, {"a": 3, "b": 1}) == {"a": [1, 2, 3], "b": [0]}
    # a tie at the cut goes to the lower index
    assert keep_indices({"a": torch.tensor([1.0, 2.0, 2.0, 2.0])}, {"a": 2}) == {"a": [1, 2]}
    with pytest.raises(SinfError, match="no scores"):
        keep_indices(scores, {"zz": 1})
    with pytest.raises(SinfError, match="cannot keep 4 of 3"):
        keep_indices(scores, {"b": 4})
    with pytest.raises(SinfError, match="cannot keep 0"):
        keep_indices(scores, {"b": 0})
    with pytest.raises(SinfError, match="NaN"):
        keep_indices({"a": torch.tensor([1.0, float("nan")])}, {"a": 1})


# ---------------------------------------------------------------- exactness

def full_keep(model, tap, reverse=True):
    """Every channel of every layer after the tap; reversed order forces the slicing code path."""
    t = -1 if tap is None else model.unit_index(tap)
    return {l.name: list(range(l.channels))[:: -1 if reverse else 1] for l in model.prunable_layers() if l.unit > t}


def random_keep(model, tap, seed):
    g = torch.Generator().manual_seed(seed)
    t = -1 if tap is None else model.unit_index(tap)
    keep = {}
    for l in model.prunable_layers():
        if l.unit > t:
            k = int(torch.randint(1, l.channels, (1,), generator=g))  # drops at least one channel
            keep[l.name] = sorted(torch.randperm(l.channels, generator=g)[:k].tolist())
    return keep


@contextlib.contextmanager
def zeroed_after_relu(model, keep):
    """Reference model: channels not in ``keep`` are zeroed at the BN output, i.e. after their ReLU."""
    handles = []
    try:
        for l in model.prunable_layers():
            if l.name in keep:
                mask = torch.zeros(l.channels)
                mask[keep[l.name]] = 1.0
                handles.append(l.bn.register_forward_hook(lambda _m, _i, out, mask=mask: out * mask.view(1, -1, 1, 1)))
        yield
    finally:
        for h in handles:
            h.remove()


def taps_of(model):
    names = model.unit_names()
    return [None, names[0], names[len(names) // 2], names[-2]]


@pytest.mark.parametrize("kind", list(ALL_MAKERS))
def test_keep_everything_reproduces_base(kind):
    m = ALL_MAKERS[kind]()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(5, 3, 32, 32)
    classes = [1, 4]
    with torch.no_grad():
        ref = m(x)
        for tap in taps_of(m):
            h = x if tap is None else m.forward_stem(x, tap)
            sub = build_subgraph(m, SubgraphSpec("tiny", tap, full_keep(m, tap), None))
            assert isinstance(sub, Subgraph) and sub.tap == tap
            full = sub(h)
            assert full.shape == ref.shape
            assert torch.allclose(full, ref, atol=1e-5), (kind, tap)
            restr = build_subgraph(m, SubgraphSpec("tiny", tap, full_keep(m, tap), classes))(h)
            assert torch.allclose(restr[:, classes], ref[:, classes], atol=1e-5)
            other = [c for c in range(6) if c not in classes]
            assert torch.isneginf(restr[:, other]).all()
            # an empty keep map (every layer kept implicitly) is the unpruned tail too
            whole = build_subgraph(m, SubgraphSpec("tiny", tap, {}, None))
            assert torch.allclose(whole(h), ref, atol=1e-5)
            # it owns every tensor: changing the subgraph in place leaves the model as it is
            base_ptrs = {t.data_ptr() for t in [*m.parameters(), *m.buffers()]}
            assert not base_ptrs & {t.data_ptr() for t in [*whole.parameters(), *whole.buffers()] if t.numel()}
            for t in whole.parameters():
                t.data.mul_(0.0)
    # pure: the base model is untouched
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", list(ALL_MAKERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_dropped_channels_equal_zeroed_reference(kind, seed):
    m = ALL_MAKERS[kind](seed=seed)
    x = torch.randn(6, 3, 32, 32)
    for tap in taps_of(m):
        keep = random_keep(m, tap, seed)
        with torch.no_grad():
            h = x if tap is None else m.forward_stem(x, tap)
            sub = build_subgraph(m, SubgraphSpec("tiny", tap, keep, None))
            sub_r = build_subgraph(m, SubgraphSpec("tiny", tap, keep, [0, 2, 5]))
            got, got_r = sub(h), sub_r(h)
            with zeroed_after_relu(m, keep):
                ref = m(x)
        assert (got - ref).abs().max() < 1e-4, (kind, tap, float((got - ref).abs().max()))
        assert torch.allclose(got_r[:, [0, 2, 5]], ref[:, [0, 2, 5]], atol=1e-4)
        # the modules really are smaller: conv out channels = kept counts, BN stats sliced
        for l in m.prunable_layers():
            if l.name in keep:
                conv = _sub_conv(sub, l.name)
                assert conv.weight.shape[0] == len(keep[l.name]) == conv.out_channels


def _reader_of(model, layer):
    """The module that reads a prunable layer's channels (written out per architecture, for the test)."""
    if isinstance(model, CifarVGG):
        layers = model.prunable_layers()
        pos = [l.name for l in layers].index(layer.name)
        return layers[pos + 1].conv if pos + 1 < len(layers) else model.classifier[0]
    block, conv = layer.name.rsplit(".", 1)
    return model.get_submodule(f"{block}.{'conv2' if conv == 'conv1' else 'conv3'}")


def _constant_response(reader, channels, fill, removed):
    """What the reader outputs (bias excluded) for an input holding fill[c] on the removed channels and
    0 elsewhere, away from any border: a real convolution of a constant map, read at its centre."""
    x = torch.zeros(channels)
    x[removed] = torch.tensor(fill)[removed]
    if isinstance(reader, nn.Linear):
        return nn.functional.linear(x.repeat_interleave(reader.in_features // channels), reader.weight)
    k = reader.kernel_size[0]
    out = nn.functional.conv2d(x.view(1, -1, 1, 1).expand(1, channels, 3 * k, 3 * k), reader.weight)
    return out[0, :, out.shape[2] // 2, out.shape[3] // 2]


@pytest.mark.parametrize("kind", list(ALL_MAKERS))
def test_mean_replacement_equals_constant_fill_reference(kind):
    """fill: removed channels act as constants, folded into the reader's bias / BN mean. Reference: the
    zeroed model plus, on each reader's output, its response to the constant map (computed by a real
    convolution, read away from the border). Also round-trips through JSON, and the zero fill is plain channel removal."""
    m = ALL_MAKERS[kind](seed=3)
    x = torch.randn(4, 3, 32, 32)
    g = torch.Generator().manual_seed(7)
    for tap in taps_of(m)[:2]:
        keep = random_keep(m, tap, 5)
        layers = {l.name: l for l in m.prunable_layers()}
        fill = {name: (torch.rand(layers[name].channels, generator=g) * 2).tolist() for name in keep}
        spec = SubgraphSpec("tiny", tap, keep, [0, 2, 5], fill)
        assert SubgraphSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
        handles = []
        with torch.no_grad():
            h = x if tap is None else m.forward_stem(x, tap)
            got = build_subgraph(m, spec)(h)
            for name, idx in keep.items():
                removed = sorted(set(range(layers[name].channels)) - set(idx))
                reader = _reader_of(m, layers[name])
                shift = _constant_response(reader, layers[name].channels, fill[name], removed)
                view = shift if isinstance(reader, nn.Linear) else shift.view(1, -1, 1, 1)
                handles.append(reader.register_forward_hook(lambda _m, _i, out, v=view: out + v))
            try:
                with zeroed_after_relu(m, keep):
                    ref = m(x)
            finally:
                for hd in handles:
                    hd.remove()
            zero = build_subgraph(m, SubgraphSpec("tiny", tap, keep, [0, 2, 5], {n: [0.0] * layers[n].channels for n in keep}))(h)
            plain = build_subgraph(m, SubgraphSpec("tiny", tap, keep, [0, 2, 5]))(h)
        # both add the constant response at every position (the fold ignores the zero-padded border,
        # and so does the reference): equal to float error
        assert (got[:, [0, 2, 5]] - ref[:, [0, 2, 5]]).abs().max() < 1e-4, (kind, tap)
        assert torch.equal(zero, plain)
        assert not torch.allclose(got[:, [0, 2, 5]], plain[:, [0, 2, 5]], atol=1e-3)


def _sub_conv(sub, layer_name):
    """The subgraph's copy of a base model's prunable conv."""
    for unit_name, unit in zip(sub.unit_names, sub.units):
        if layer_name == unit_name:  # VGG: the conv is the unit's first module
            return unit[0]
        if layer_name.startswith(unit_name + "."):
            return unit.get_submodule(layer_name[len(unit_name) + 1:])
    raise KeyError(layer_name)


def test_vgg_last_conv_slices_classifier_features():
    m = make_vgg_spatial()
    keep = {"features.7": [1, 3, 6]}  # the last conv, read by classifier.0 as 8 x (8*8) features
    sub = build_subgraph(m, SubgraphSpec("tiny", "features.4", keep, None))
    lin = sub.head[1][0]
    assert lin.in_features == 3 * 64
    w = m.classifier[0].weight.view(512, 8, 64)
    assert torch.equal(lin.weight, w[:, [1, 3, 6]].reshape(512, 3 * 64))
    bn = sub.units[0][1]
    assert torch.equal(bn.running_var, m.features[8].running_var[[1, 3, 6]])


def test_restricted_head_slices_rows():
    m = make_tiny_resnet()
    sub = build_subgraph(m, SubgraphSpec("tiny", "layer3.0", {}, [5, 0]))
    assert sub.head[2].weight.shape == (2, 8)
    assert torch.equal(sub.head[2].weight, m.fc.weight[[5, 0]])
    with torch.no_grad():
        h = m.forward_stem(torch.randn(3, 3, 32, 32), "layer3.0")
        out, ref = sub(h), m.forward_tail(h, "layer3.0")
    assert torch.allclose(out[:, [5, 0]], ref[:, [5, 0]], atol=1e-6)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_channels_last_and_bf16(kind):
    m = MAKERS[kind]()
    tap = m.unit_names()[1]
    keep = random_keep(m, tap, 3)
    sub = build_subgraph(m, SubgraphSpec("tiny", tap, keep, [0, 1])).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        h = m.forward_stem(x, tap)
        ref = sub(h)
        hc = h.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(sub(hc), ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sub(hc)
    assert out.dtype == torch.bfloat16
    assert torch.isneginf(out[:, 2:]).all()
    assert torch.allclose(out[:, :2].float(), ref[:, :2], atol=0.05 * float(ref[:, :2].abs().max()) + 0.02)


# ---------------------------------------------------------------- specs, files, errors

def test_spec_json_round_trip(tmp_path):
    m = make_tiny_bottleneck()
    specs = {
        "k0": SubgraphSpec("cifar100_resnet50", "layer1.0", random_keep(m, "layer1.0", 0), [0, 1]),
        "k1": SubgraphSpec("cifar100_resnet50", None, random_keep(m, None, 1), None),
    }
    for s in specs.values():
        assert SubgraphSpec.from_json(json.loads(json.dumps(s.to_json()))) == s
    path = save_subgraphs(tmp_path / "specs.json", specs)
    loaded = load_subgraph_specs(path)
    assert loaded == specs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = m.forward_stem(x, "layer1.0")
        assert torch.equal(build_subgraph(m, loaded["k0"])(h), build_subgraph(m, specs["k0"])(h))


def test_spec_file_errors(tmp_path):
    with pytest.raises(SinfError, match="not found"):
        load_subgraph_specs(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SinfError, match="cannot read"):
        load_subgraph_specs(bad)
    bad.write_text(json.dumps({"subgraphs": {}}))
    with pytest.raises(SinfError, match="not a SINF subgraph spec"):
        load_subgraph_specs(bad)
    bad.write_text(json.dumps({"format": "sinf-subgraph-specs", "version": 1,
                               "subgraphs": {"a": {"base_model": "m", "tap": None, "keep": {"x": [1.5]}}}}))
    with pytest.raises(SinfError, match="list of integers"):
        load_subgraph_specs(bad)
    with pytest.raises(SinfError, match="unknown fields"):
        SubgraphSpec.from_json({"base_model": "m", "tap": None, "keep": {}, "extra": 1})


def test_weights_round_trip_rebuilds_from_file(tmp_path):
    m = make_tiny_resnet(seed=0)
    spec = SubgraphSpec("tiny", "layer1.1", random_keep(m, "layer1.1", 2), [2, 3])
    sub = build_subgraph(m, spec)
    path = save_subgraph_weights(tmp_path / "k1.safetensors", sub, spec)
    # the skeleton has other weights: the tensors must come from the file
    loaded, spec2 = load_subgraph_weights(path, base=make_tiny_resnet(seed=7))
    assert spec2 == spec
    with torch.no_grad():
        h = m.forward_stem(torch.randn(3, 3, 32, 32), "layer1.1")
        assert torch.equal(loaded(h), sub(h))
    other = SubgraphSpec("tiny", "layer1.1", random_keep(m, "layer1.1", 5), [2, 3])
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(SinfError, match="cannot read"):
        load_subgraph_weights(tmp_path / "x.safetensors", base=m)
    p2 = save_subgraph_weights(tmp_path / "k2.safetensors", build_subgraph(m, other), spec)  # wrong spec
    with pytest.raises(SinfError, match="does not match"):
        load_subgraph_weights(p2, base=m)


@pytest.mark.parametrize("keep,classes,tap,match", [
    ({"layer9.conv1": [0]}, None, None, "no prunable layer named 'layer9.conv1'"),
    ({"layer1.0.conv1": [0]}, None, "layer2.0", "shared stem"),
    ({"layer3.0.conv1": [0, 8]}, None, "layer2.0", r"out of range 0..7"),
    ({"layer3.0.conv1": [-1]}, None, "layer2.0", "out of range"),
    ({"layer3.0.conv1": []}, None, "layer2.0", "keeps no channel"),
    ({"layer3.0.conv1": [1, 1]}, None, "layer2.0", "duplicated"),
    ({}, [0, 6], "layer2.0", r"classes \[6\] out of range 0..5"),
    ({}, [], "layer2.0", "no classes"),
    ({}, [1, 1], "layer2.0", "twice"),
    ({}, None, "layer7.7", "unknown tap"),
])
def test_bad_specs_raise(keep, classes, tap, match):
    m = make_tiny_resnet()
    with pytest.raises(SinfError, match=match):
        build_subgraph(m, SubgraphSpec("tiny", tap, keep, classes))


def test_spec_type_errors():
    with pytest.raises(SinfError, match="list of integers"):
        SubgraphSpec("m", None, {"a": [True]})
    with pytest.raises(SinfError, match="list of integers"):
        SubgraphSpec("m", None, {"a": 3})
    with pytest.raises(SinfError, match="registry name"):
        SubgraphSpec("", None, {})
    # numpy / tensor index lists are accepted and normalised to ints
    s = SubgraphSpec("m", None, {"a": np.array([2, 0])}, torch.tensor([1]))
    assert s.keep == {"a": [2, 0]} and s.classes == [1]


# ---------------------------------------------------------------- per-cluster evaluation

def l1_scores(model):
    return {l.name: l.conv.weight.detach().abs().sum((1, 2, 3)) for l in model.prunable_layers()}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_evaluate_cluster_subgraphs_matches_independent_count(kind):
    m = MAKERS[kind]()
    data = make_tiny_dataset(n_per_class=7)
    hier = data.hierarchy
    tap = m.unit_names()[1]
    specs = make_cluster_specs(m, "tiny", tap, {k: l1_scores(m) for k in range(3)}, hier, 0.1, 0.6,
                               overrides={2: (0.0, 0.2)})
    assert specs[2].kept_counts() != specs[0].kept_counts()
    res = evaluate_cluster_subgraphs(m, specs, data, rt=Runtime(device="cpu", batch_size=9), baseline=True)

    from sinf_core.data import iterate_batches
    x, y = next(iterate_batches(data, len(data)))
    cl = torch.as_tensor(hier.cluster_array())[y]
    with torch.no_grad():
        base = m(x)
    for row in res["clusters"]:
        k = row["index"]
        members = hier.members(k)
        sel = cl == k
        with torch.no_grad(), zeroed_after_relu(m, specs[k].keep):
            ref = m(x[sel])
        pred = torch.as_tensor(members)[ref[:, members].argmax(1)]
        assert row["n"] == int(sel.sum())
        assert row["accuracy"] == pytest.approx(100.0 * float((pred == y[sel]).float().mean()), abs=1e-3)
        bpred = torch.as_tensor(members)[base[sel][:, members].argmax(1)]
        assert row["base_accuracy"] == pytest.approx(100.0 * float((bpred == y[sel]).float().mean()), abs=1e-3)
        h1 = m.forward_stem(torch.zeros(1, 3, 32, 32), tap)
        c = module_cost(build_subgraph(m, specs[k]), h1)
        assert (row["params"], row["flops"]) == (c.params, c.flops)
        assert row["flops_with_stem"] == c.flops + res["stem"][tap]["flops"]
        assert 0 < row["flop_ratio"] < 1
    assert res["mean"]["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in res["clusters"]]))
    assert res["n"] == len(data) and res["empty_clusters"] == []


def test_cluster_specs_fill_with_cluster_mean_activation_and_bad_fill_errors():
    from sinf_core.stats import collect_stats

    m = make_tiny_resnet()
    data = make_tiny_dataset(n_per_class=5)
    hier = data.hierarchy
    stats = collect_stats(m, data, rt=Runtime(device="cpu", batch_size=8))
    tap = m.unit_names()[1]
    specs = make_cluster_specs(m, "tiny", tap, {k: l1_scores(m) for k in range(3)}, hier, 0.1, 0.6, fill_stats=stats)
    from sinf_core.data import iterate_batches
    from sinf_core.hooks import activations

    x, y = next(iterate_batches(data, len(data)))
    means: dict = {}
    sel = torch.isin(y, torch.as_tensor(hier.members(1)))
    with torch.no_grad(), activations(m, None, lambda layer, a: means.__setitem__(layer.name, a.mean((0, 2, 3)))):
        m(x[sel])
    assert set(specs[1].fill) == set(specs[1].keep)
    for name, values in specs[1].fill.items():  # the mean of A_l over the cluster's images, computed directly
        assert torch.allclose(torch.tensor(values, dtype=torch.float64), means[name].double(), atol=1e-5)
    layer = next(iter(specs[1].keep))
    n = len(specs[1].fill[layer])
    for fill, msg in (({layer: [0.0] * (n + 1)}, "values for"), ({layer: [float("nan")] * n}, "finite"),
                      ({"layer1.0.conv1": [0.0] * 4}, "does not prune")):
        with pytest.raises(SinfError, match=msg):
            build_subgraph(m, SubgraphSpec("tiny", tap, specs[1].keep, None, fill))


def test_evaluate_empty_cluster_and_names():
    m = make_tiny_resnet()
    data = make_tiny_dataset(n_per_class=4)
    data = data.subset(np.flatnonzero(data.labels.numpy() < 4))  # cluster k2 has no samples
    specs = {name: SubgraphSpec("tiny", "layer2.0", {}, data.hierarchy.members(i))
             for i, name in enumerate(data.hierarchy.cluster_names)}
    res = evaluate_cluster_subgraphs(m, specs, data, rt=Runtime(device="cpu", batch_size=5))
    rows = {r["cluster"]: r for r in res["clusters"]}
    assert rows["k2"]["n"] == 0 and rows["k2"]["accuracy"] is None
    assert res["empty_clusters"] == ["k2"]
    assert res["mean"]["accuracy"] == pytest.approx((rows["k0"]["accuracy"] + rows["k1"]["accuracy"]) / 2)
    with pytest.raises(SinfError, match="unknown cluster"):
        evaluate_cluster_subgraphs(m, {"nope": specs["k0"]}, data)
    with pytest.raises(SinfError, match="no subgraph specs"):
        evaluate_cluster_subgraphs(m, {}, data)


def test_compare_tail_speed_reports_flops_and_times():
    m = make_tiny_resnet()
    spec = SubgraphSpec("tiny", "layer1.1", keep_indices(l1_scores(m), model_schedule(m, "layer1.1", 0.05, 0.5)), [0, 1])
    res = compare_tail_speed(m, spec, torch.randn(8, 3, 32, 32), reps=3, warmup=1)
    assert res["batch"] == 8 and len(res["tail_ms_all"]) == 3
    assert res["tail_ms"] > 0 and res["subgraph_ms"] > 0
    assert res["subgraph_flops"] < res["tail_flops"]
    assert res["flop_ratio"] == pytest.approx(res["subgraph_flops"] / res["tail_flops"])
    res_cl = compare_tail_speed(m, spec, torch.randn(2, 3, 32, 32), reps=2, rt=Runtime(device="cpu", channels_last=True, bf16=True))
    res_fold = compare_tail_speed(m, spec, torch.randn(2, 3, 32, 32), reps=2, rt=Runtime(device="cpu", channels_last=True), fold_bn=True)
    assert res_fold["fold_bn"] and res_fold["flop_ratio"] == pytest.approx(res["flop_ratio"])
    assert res_cl["flop_ratio"] == pytest.approx(res["flop_ratio"])


# ---------------------------------------------------------------- real data

@pytest.mark.realdata
def test_resnet56_subgraph_is_cheaper_faster_and_exact(real_env):
    """ResNet-56, tap layer2.8, r_M 5 %, r_L 50 %, L1 scores: the sliced subgraph matches the zeroed
    reference on real images and has ~27 % fewer FLOPs; a uniform 50 % cut runs faster at batch 128."""
    from sinf_core.data import iterate_batches, load_dataset
    from sinf_core.models import load_model

    m = load_model("cifar100_resnet56")
    test = load_dataset("cifar100", "test", real_env["data"])
    x, _ = next(iterate_batches(test, 128))
    tap = "layer2.8"
    kept = model_schedule(m, tap, 0.05, 0.5)
    assert list(kept)[0] == "layer3.0.conv1" and kept["layer3.8.conv1"] == 32 and kept["layer3.0.conv1"] == 61
    spec = SubgraphSpec("cifar100_resnet56", tap, keep_indices(l1_scores(m), kept), None)
    with torch.no_grad():
        h = m.forward_stem(x[:32], tap)
        got = build_subgraph(m, spec)(h)
        with zeroed_after_relu(m, spec.keep):
            ref = m(x[:32])
    assert (got - ref).abs().max() < 1e-4
    res = compare_tail_speed(m, spec, x[:2], reps=2, warmup=1)
    assert 0.70 < res["flop_ratio"] < 0.75
    half = SubgraphSpec("cifar100_resnet56", tap, keep_indices(l1_scores(m), model_schedule(m, tap, 0.5, 0.5)), None)
    res = compare_tail_speed(m, half, x, reps=7, warmup=2)
    assert 0.49 < res["flop_ratio"] < 0.51
    assert res["time_ratio"] < 1.0, res  # measured 0.63 on one thread (ABBA-interleaved medians)


@pytest.mark.realdata
def test_resnet56_cluster_evaluation_matches_collect_logits(real_env):
    """Keep-everything restricted subgraphs reproduce the base model's within-cluster accuracy."""
    from sinf_core.data import load_dataset
    from sinf_core.evaluate import collect_logits
    from sinf_core.models import load_model

    m = load_model("cifar100_resnet56")
    test = load_dataset("cifar100", "test", real_env["data"]).subset(np.arange(600))
    hier = test.hierarchy
    specs = {k: SubgraphSpec("cifar100_resnet56", "layer3.3", {}, hier.members(k)) for k in range(hier.num_clusters)}
    res = evaluate_cluster_subgraphs(m, specs, test, rt=Runtime(device="cpu", batch_size=200), baseline=True)
    logits = collect_logits(m, test, rt=Runtime(device="cpu", batch_size=200))
    cl = hier.cluster_array()[test.labels.numpy()]
    for row in res["clusters"]:
        k, members = row["index"], hier.members(row["index"])
        sel = cl == k
        pred = np.asarray(members)[logits[sel][:, members].argmax(1).numpy()]
        acc = 100.0 * float((pred == test.labels.numpy()[sel]).mean())
        assert row["accuracy"] == pytest.approx(acc, abs=1e-3) and row["base_accuracy"] == pytest.approx(acc, abs=1e-3)
        assert row["flop_ratio"] == pytest.approx(1.0, abs=1e-3)  # only the head rows are cut


# ---------------------------------------------------------------- BatchNorm re-estimation

def _tail_stem(model, tap, n=24, seed=0):
    """Stem outputs at ``tap`` of ``n`` random images (eval mode)."""
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x if tap is None else model.eval().forward_stem(x, tap)


def _masked_bn_inputs(model, tap, keep, h):
    """Reference by another route: the base model's own tail with the removed channels zeroed after
    their ReLU and every tail BatchNorm normalising with its batch statistics; returns
    {bn name: (mean, unbiased var) of its input over h}."""
    from sinf_core.subgraph import tail_batchnorms

    ref = copy.deepcopy(model).eval()
    names = [n for n, _ in tail_batchnorms(model, tap)]
    mods = dict(ref.named_modules())
    seen, handles = {}, []
    for n in names:
        mods[n].train()

        def pre(_m, inp, n=n):
            a = inp[0].transpose(0, 1).flatten(1)
            seen[n] = (a.mean(1), a.var(1, unbiased=True))
        handles.append(mods[n].register_forward_pre_hook(pre))
    with torch.no_grad(), zeroed_after_relu(ref, keep):
        ref.forward_tail(h, tap) if tap is not None else ref(h)
    for hd in handles:
        hd.remove()
    return seen


@pytest.mark.parametrize("kind", list(MAKERS))
def test_bn_reestimation_matches_masked_reference(kind):
    """mean = base + (pruned - unpruned), var = base * pruned / unpruned, the pruned statistics taken
    from a masked copy of the base model (not from a sliced subgraph)."""
    from sinf_core.subgraph import estimate_bn_stats, tail_batchnorms

    m = MAKERS[kind]()
    tap = taps_of(m)[1]
    keep = random_keep(m, tap, seed=3)
    h = _tail_stem(m, tap)
    spec = estimate_bn_stats(m, SubgraphSpec("tiny", tap, keep, None), h, batch_size=len(h))
    pruned, full = _masked_bn_inputs(m, tap, keep, h), _masked_bn_inputs(m, tap, {}, h)
    layer_of = {id(l.bn): l.name for l in m.prunable_layers()}
    bns = tail_batchnorms(m, tap)
    assert set(spec.bn) == {n for n, _ in bns} and bns
    for name, bn in bns:
        idx = torch.as_tensor(sorted(keep[layer_of[id(bn)]])) if layer_of.get(id(bn)) in keep else torch.arange(bn.num_features)
        mp, vp = (t[idx] for t in pruned[name])
        mu, vu = (t[idx] for t in full[name])
        want_mean = bn.running_mean[idx] + mp - mu
        want_var = bn.running_var[idx] * vp / vu
        assert torch.allclose(torch.tensor(spec.bn[name]["mean"]), want_mean, atol=1e-4), name
        assert torch.allclose(torch.tensor(spec.bn[name]["var"]), want_var, rtol=1e-3, atol=1e-5), name
    # the subgraph runs with exactly these statistics, and the spec survives JSON
    sub = build_subgraph(m, spec)
    got = [b for b in sub.units.modules() if isinstance(b, nn.BatchNorm2d)]
    for (name, _), b in zip(bns, got):
        assert torch.allclose(b.running_mean, torch.tensor(spec.bn[name]["mean"]))
    assert SubgraphSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize("kind", list(MAKERS))
def test_bn_reestimation_changes_nothing_when_nothing_is_removed(kind):
    from sinf_core.subgraph import estimate_bn_stats

    m = MAKERS[kind]()
    tap = taps_of(m)[1]
    h = _tail_stem(m, tap)
    plain = SubgraphSpec("tiny", tap, full_keep(m, tap), None)
    spec = estimate_bn_stats(m, plain, h, batch_size=7)
    with torch.no_grad():
        assert torch.allclose(build_subgraph(m, spec)(h), build_subgraph(m, plain)(h), atol=1e-4)


def test_bn_stats_errors_and_samples():
    from sinf_core.subgraph import BatchNormSamples, check_bn_samples, estimate_bn_stats, tail_batchnorm_sizes

    m = make_tiny_vgg()
    tap = taps_of(m)[1]
    keep = random_keep(m, tap, seed=1)
    good = estimate_bn_stats(m, SubgraphSpec("tiny", tap, keep, None), _tail_stem(m, tap))
    name = next(iter(good.bn))
    n = tail_batchnorm_sizes(m, good)[name]
    for bad, msg in (({"nope": {"mean": [0.0], "var": [1.0]}}, "not a BatchNorm after the tap"),
                     ({name: {"mean": [0.0] * (n + 1), "var": [1.0] * (n + 1)}}, "channels the subgraph keeps")):
        with pytest.raises(SinfError, match=msg):
            build_subgraph(m, SubgraphSpec("tiny", tap, keep, None, {}, bad))
    for bad, msg in (({name: {"mean": [0.0]}}, "must be"), ({name: {"mean": [0.0], "var": [-1.0]}}, "var >= 0"),
                     ({name: {"mean": [0.0, 1.0], "var": [1.0]}}, "one value per channel")):
        with pytest.raises(SinfError, match=msg):
            SubgraphSpec("tiny", tap, keep, None, {}, bad)
    with pytest.raises(SinfError, match="at least 2 samples"):
        estimate_bn_stats(m, SubgraphSpec("tiny", tap, keep, None), _tail_stem(m, tap, n=1))
    for n_bad in (-1, 1, 2.5, True):
        with pytest.raises(SinfError, match="bn_samples"):
            check_bn_samples(n_bad)
    data = make_tiny_dataset(n_per_class=5)
    samples = BatchNormSamples(m, data, per_cluster=4)
    hier = data.hierarchy
    assert samples.features(tap, 1).shape[0] == 4 and samples.features(tap).shape[0] == 4 * hier.num_clusters
    cl = hier.cluster_array()[data.labels.numpy()]
    assert all((cl[samples.indices[k]] == k).all() for k in range(hier.num_clusters))
    specs = make_cluster_specs(m, "tiny", tap, {k: l1_scores(m) for k in range(3)}, hier, 0.3, 0.6, bn_samples=samples)
    assert all(s.bn for s in specs.values()) and specs[0].bn != specs[1].bn
    # built once on the way (the statistics pass's own module): the same subgraph as building the spec
    built: dict = {}
    again = make_cluster_specs(m, "tiny", tap, {k: l1_scores(m) for k in range(3)}, hier, 0.3, 0.6, bn_samples=samples,
                               built=built)
    assert again == specs and set(built) == set(specs)
    x = samples.features(tap)
    with torch.no_grad():
        for k, sub in built.items():
            assert not sub.training
            ref = build_subgraph(m, specs[k])
            assert torch.equal(sub(x), ref(x)), k
            assert {n: v for n, v in sub.state_dict().items()}.keys() == ref.state_dict().keys()
            assert all(torch.equal(v, ref.state_dict()[n]) for n, v in sub.state_dict().items()), k
            assert [b.momentum for b in sub.modules() if isinstance(b, nn.BatchNorm2d)] == \
                   [b.momentum for b in ref.modules() if isinstance(b, nn.BatchNorm2d)]
    with pytest.raises(SinfError, match="out of range"):
        samples.features(tap, 7)


@pytest.mark.realdata
def test_vgg16_bn_reestimation_recovers_pruned_accuracy(real_env):
    """The project's VGG16-BN (w0.5), tap features.20, r 25 % -> 70 %, L1 scores, 3 clusters: with the
    base model's BatchNorm statistics the subgraphs lose most of their accuracy (no skip connection,
    six pruned layers in a row); re-estimated on 128 fit images per cluster they recover much of it
    (measured: unpruned 73.6 %, base statistics 32.1 %, re-estimated 44.7 %)."""
    from sinf_core.experiment import open_experiment
    from sinf_core.subgraph import BatchNormSamples

    exp = open_experiment("cifar100_vgg16_bn_sinf")
    m, hier = exp.model.eval(), exp.hierarchy
    scores = {k: l1_scores(m) for k in range(3)}
    plain = make_cluster_specs(m, "cifar100_vgg16_bn_sinf", "features.20", scores, hier, 0.25, 0.7)
    bn = make_cluster_specs(m, "cifar100_vgg16_bn_sinf", "features.20", scores, hier, 0.25, 0.7,
                            bn_samples=BatchNormSamples(m, exp.fit_data(), hier, per_cluster=128))
    calib = exp.calib_data()
    full = {k: SubgraphSpec("cifar100_vgg16_bn_sinf", "features.20", {}, hier.members(k)) for k in range(3)}
    acc = {name: evaluate_cluster_subgraphs(m, s, calib, hier)["mean"]["accuracy"]
           for name, s in (("full", full), ("plain", plain), ("bn", bn))}
    assert acc["full"] > acc["bn"] > acc["plain"] + 10, acc
