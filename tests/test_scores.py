"""Filter scores: each against an independent computation on a tiny case, plus the contract and the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_dataset, make_tiny_resnet
from sinf_core.data import Hierarchy, ImageDataset, iterate_batches
from sinf_core.errors import SinfError
from sinf_core.hooks import activations
from sinf_core.models.vgg_cifar import CifarVGG
from sinf_core.scores import SCORES, compute_all_scores, compute_scores, ranking
from sinf_core.scores.base import normalise_max
from sinf_core.scores.feature_maps import map_rank, nuclear_norm_drop, sample_indices

FAST = {"max_per_class": 6}


# ------------------------------------------------------------------ hand-made cases
def probe_model() -> CifarVGG:
    """One conv layer whose 3 channels copy the input's R, G, B (BN = identity): A = relu(x) = x."""
    m = CifarVGG([3, "M"], num_classes=4)  # only the stem runs in these tests
    conv, bn = m.features[0], m.features[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):
            conv.weight[c, c, 1, 1] = 1.0
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.eps = 0.0
    return m.eval()


def separable_dataset(n: int = 30, seed: int = 0, rank_one: bool = False) -> ImageDataset:
    """4 classes, clusters {0, 1} and {2, 3}. Every channel level is uniform in [50, 200] for every
    class, except: red alone separates classes 0 / 1 (low / high), green alone separates 2 / 3."""
    g = torch.Generator().manual_seed(seed)
    imgs, labels = [], []
    rows = torch.linspace(0.2, 1.0, 32).view(1, 32, 1)
    for c in range(4):
        for _ in range(n):
            v = 50 + 150 * torch.rand(3, generator=g)
            lo, hi = 40 + 30 * torch.rand(1, generator=g), 180 + 30 * torch.rand(1, generator=g)
            if c in (0, 1):
                v[0] = lo if c == 0 else hi
            else:
                v[1] = lo if c == 2 else hi
            if rank_one:  # every channel map = level * (row profile), constant along each row: rank 1
                img = v.view(3, 1, 1) * rows.expand(3, 32, 32)
            else:
                img = v.view(3, 1, 1) + 10 * torch.rand(3, 32, 32, generator=g)
            imgs.append(img.round().clamp(0, 255).to(torch.uint8))
            labels.append(c)
    hier = Hierarchy(("a", "b", "c", "d"), ("k0", "k1"), (0, 0, 1, 1))
    return ImageDataset("sep", torch.stack(imgs), torch.as_tensor(labels), hier, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def dead_channel_resnet(layer: str = "layer2.0.conv1", channel: int = 3):
    m = make_tiny_resnet()
    bn = m.prunable_layer(layer).bn
    with torch.no_grad():
        bn.weight[channel] = 0.0
        bn.bias[channel] = -1.0  # z = -1 everywhere: A = relu(z) = 0 for every input
    return m


def layer_maps(model, data, rows, layer_name: str, pre_relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent path: (maps [N, C, H, W], labels [N]) of one layer over ``rows``, by a plain hook."""
    layer = model.prunable_layer(layer_name)
    got = []
    h = layer.bn.register_forward_hook(lambda _m, _i, out: got.append(out.detach().clone() if pre_relu
                                                                        else torch.relu(out).detach().clone()))
    try:
        with torch.no_grad():
            for x, _ in iterate_batches(data, 64, rows):
                model.forward_stem(x, layer.unit)
    finally:
        h.remove()
    return torch.cat(got), data.labels[torch.as_tensor(rows)]


# ------------------------------------------------------------------ contract
def test_every_score_gives_one_value_per_channel_for_every_layer_and_cluster(tiny_model, tiny_dataset):
    out = compute_all_scores(list(SCORES), tiny_model, None, tiny_dataset, options=FAST)
    layers = tiny_model.prunable_layers()
    assert set(out) == set(SCORES)
    for method, table in out.items():
        assert set(table) == {0, 1, 2}, method
        for t, scores in table.items():
            assert list(scores) == [l.name for l in layers], method
            for l in layers:
                v = scores[l.name]
                assert v.shape == (l.channels,) and v.dtype == torch.float32, (method, l.name)
                assert torch.isfinite(v).all(), (method, l.name)


def test_single_cluster_equals_batched_and_none_means_all_classes(tiny_dataset):
    m = make_tiny_resnet()
    methods = ["dcs", "mean_act", "hrank", "chip", "tvs", "taylor", "random"]
    allc = compute_all_scores(methods, m, None, tiny_dataset, options=FAST, targets=[0, 1, 2, None])
    for meth in methods:
        one = compute_scores(meth, m, None, tiny_dataset, None, 1, options=FAST)
        for name, v in one.items():
            torch.testing.assert_close(v, allc[meth][1][name], rtol=1e-4, atol=1e-5, msg=f"{meth} {name}")
    # unconditioned mean activation = the sample-weighted mean over all clusters (equal counts here)
    for name in allc["mean_act"][None]:
        mean3 = sum(allc["mean_act"][t][name] for t in range(3)) / 3
        torch.testing.assert_close(allc["mean_act"][None][name], mean3, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_clear_errors(tiny_dataset):
    m = make_tiny_resnet()
    with pytest.raises(SinfError, match="unknown filter score"):
        compute_scores("fisher", m, None, tiny_dataset, cluster=0)
    with pytest.raises(SinfError, match="no prunable layer named"):
        compute_scores("l1", m, ["layer9.conv1"], tiny_dataset, cluster=0)
    with pytest.raises(SinfError, match="out of range"):
        compute_scores("l1", m, None, tiny_dataset, cluster=7)
    with pytest.raises(SinfError, match="unknown score option"):
        compute_scores("dcs", m, None, tiny_dataset, cluster=0, options={"pp": 2})
    with pytest.raises(SinfError, match="probe"):
        compute_scores("dcs", m, None, tiny_dataset, cluster=0, options={"probe": "svm"})
    with pytest.raises(SinfError, match="must be a number"):
        compute_scores("dcs", m, None, tiny_dataset, cluster=0, options={"C": "strong"})
    # a cluster with no samples in the data: data-dependent scores refuse, weight scores still work
    part = tiny_dataset.subset(np.flatnonzero(tiny_dataset.labels.numpy() < 4))
    with pytest.raises(SinfError, match="no samples"):
        compute_scores("mean_act", m, None, part, cluster=2)
    with pytest.raises(SinfError, match="no samples"):
        compute_scores("dcs", m, None, part, cluster=2)
    assert compute_scores("l1", m, None, part, cluster=2)["layer1.0.conv1"].shape == (4,)


# ------------------------------------------------------------------ weight scores and random
def test_l1_and_bn_gamma_equal_a_manual_computation(tiny_model, tiny_dataset):
    l1 = compute_scores("l1", tiny_model, None, tiny_dataset, cluster=0)
    g = compute_scores("bn_gamma", tiny_model, None, tiny_dataset, cluster=2)
    for layer in tiny_model.prunable_layers():
        w = layer.conv.weight.detach()
        manual = [sum(abs(float(v)) for v in w[c].flatten()) for c in range(w.shape[0])]
        assert np.allclose(l1[layer.name].numpy(), manual, rtol=1e-5)
        assert np.allclose(g[layer.name].numpy(), [abs(float(v)) for v in layer.bn.weight.detach()])


def test_random_is_deterministic_per_seed(tiny_dataset):
    m = make_tiny_resnet()
    a = compute_all_scores(["random"], m, None, tiny_dataset, options={"seed": 3})["random"]
    b = compute_all_scores(["random"], m, None, tiny_dataset, options={"seed": 3})["random"]
    c = compute_all_scores(["random"], m, None, tiny_dataset, options={"seed": 4})["random"]
    name = "layer2.1.conv1"
    assert torch.equal(a[1][name], b[1][name])
    assert not torch.equal(a[1][name], c[1][name])
    assert not torch.equal(a[0][name], a[1][name])  # clusters draw independently


# ------------------------------------------------------------------ activation scores
def test_constant_zero_channel_ranks_last_for_mean_act_apoz_and_dcs(tiny_dataset):
    m = dead_channel_resnet()
    out = compute_all_scores(["mean_act", "apoz", "dcs"], m, None, tiny_dataset, options=FAST)
    for meth in ("mean_act", "apoz", "dcs"):
        for t in range(3):
            v = out[meth][t]["layer2.0.conv1"]
            assert float(v[3]) == 0.0, meth
            others = torch.cat([v[:3], v[4:]])
            assert float(others.min()) > 0.0, meth
            assert int(ranking(v)[-1]) == 3, meth


def test_mean_act_and_apoz_match_hooks_and_the_statistics_pass(tiny_dataset):
    from sinf_core.stats import collect_stats

    m = make_tiny_resnet()
    rows = sample_indices(tiny_dataset.labels.numpy(), range(6), None)
    ours = compute_all_scores(["mean_act", "apoz"], m, None, tiny_dataset, options={"max_per_class": 0})
    stats = collect_stats(m, tiny_dataset, rows)
    theirs = compute_all_scores(["mean_act", "apoz"], m, None, tiny_dataset, stats=stats)
    for name in ["layer1.0.conv1", "layer3.1.conv1"]:
        maps, labels = layer_maps(m, tiny_dataset, rows, name)
        for t in range(3):
            sel = torch.isin(labels, torch.as_tensor(tiny_dataset.hierarchy.members(t)))
            direct_mean = maps[sel].mean(dim=(2, 3)).mean(0)
            direct_apoz = 1.0 - (maps[sel] == 0).float().mean(dim=(2, 3)).mean(0)
            for src in (ours, theirs):
                torch.testing.assert_close(src["mean_act"][t][name], direct_mean, rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(src["apoz"][t][name], direct_apoz, rtol=1e-4, atol=1e-6)


def test_std_and_dcs_std_match_a_direct_computation(tiny_dataset):
    """std: the spread of a_l over the cluster's images (streamed reducers and the statistics pass
    alike); dcs_std: rank(DCS, LDA probe) x rank(std), both scaled to [0, 1]."""
    from sinf_core.scores.dcs import rank01
    from sinf_core.stats import collect_stats

    m = make_tiny_resnet()
    rows = sample_indices(tiny_dataset.labels.numpy(), range(6), None)
    opts = {"max_per_class": 0}
    ours = compute_all_scores(["std", "dcs_std", "dcs_lda"], m, None, tiny_dataset, options=opts)
    theirs = compute_all_scores(["std"], m, None, tiny_dataset, stats=collect_stats(m, tiny_dataset, rows))
    for name in ["layer1.0.conv1", "layer3.1.conv1"]:
        maps, labels = layer_maps(m, tiny_dataset, rows, name)
        for t in range(3):
            sel = torch.isin(labels, torch.as_tensor(tiny_dataset.hierarchy.members(t)))
            direct = maps[sel].mean(dim=(2, 3)).double().std(0, unbiased=False).float()
            for src in (ours, theirs):
                torch.testing.assert_close(src["std"][t][name], direct, rtol=1e-3, atol=1e-5)
            expect = rank01(ours["dcs_lda"][t][name]) * rank01(direct)
            torch.testing.assert_close(ours["dcs_std"][t][name], expect)
    dead = compute_all_scores(["std", "dcs_std"], dead_channel_resnet(), None, tiny_dataset, options=FAST)
    for meth in ("std", "dcs_std"):  # a constant channel has no spread: it ranks last
        for t in range(3):
            v = dead[meth][t]["layer2.0.conv1"]
            assert float(v[3]) == 0.0 and int(ranking(v)[-1]) == 3, meth


def test_dcs_ranks_the_one_separating_channel_first_per_cluster():
    data, m = separable_dataset(), probe_model()
    for probe in ("logreg", "lda"):
        out = compute_all_scores(["dcs"], m, None, data, options={"probe": probe})["dcs"]
        r0, r1 = out[0]["features.0"], out[1]["features.0"]
        assert int(ranking(r0)[0]) == 0 and float(r0[0]) == 1.0, (probe, r0)  # red separates classes 0 / 1
        assert int(ranking(r1)[0]) == 1 and float(r1[1]) == 1.0, (probe, r1)  # green separates classes 2 / 3
        assert float(r0[1:].max()) < 0.5 and float(r1[[0, 2]].max()) < 0.5, (probe, r0, r1)


def test_dcs_block_norms_equal_a_direct_probe_fit():
    from sklearn.linear_model import LogisticRegression

    data, m = separable_dataset(n=12), probe_model()
    rows = sample_indices(data.labels.numpy(), [0, 1], None)
    maps, labels = layer_maps(m, data, rows, "features.0")
    x = F.adaptive_avg_pool2d(maps, 2).flatten(1).double().numpy()
    x = (x - x.mean(0)) / x.std(0)
    w = LogisticRegression(C=0.5, max_iter=1000, tol=1e-8).fit(x, labels.numpy()).coef_  # [1, 3 * 4]
    direct = torch.as_tensor(np.linalg.norm(w.reshape(1, 3, 4), axis=(0, 2)), dtype=torch.float32)
    ours = compute_scores("dcs", m, None, data, cluster=0, options={"C": 0.5, "max_iter": 1000, "tol": 1e-8})
    torch.testing.assert_close(ours["features.0"], direct / direct.max(), rtol=1e-3, atol=1e-4)


def test_single_class_cluster_falls_back_to_mean_activation():
    data = make_tiny_dataset(n_per_class=8)
    hier = Hierarchy(data.class_names, ("k0", "k1", "solo"), (0, 0, 1, 1, 1, 2))
    data = data.with_hierarchy(hier)
    m = make_tiny_resnet()
    out = compute_all_scores(["dcs", "tvs", "mean_act"], m, None, data, options=FAST)
    for name, mean in out["mean_act"][2].items():
        torch.testing.assert_close(out["dcs"][2][name], normalise_max(mean), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["tvs"][2][name], normalise_max(mean), rtol=1e-5, atol=1e-6)


def test_tvs_equals_min_pairwise_distance_of_class_mean_maps():
    data, m = separable_dataset(n=10), probe_model()
    out = compute_all_scores(["tvs"], m, None, data, targets=[0, 1, None])["tvs"]
    assert int(ranking(out[0]["features.0"])[0]) == 0 and int(ranking(out[1]["features.0"])[0]) == 1
    rows = sample_indices(data.labels.numpy(), range(4), None)
    maps, labels = layer_maps(m, data, rows, "features.0", pre_relu=True)
    mu = torch.stack([maps[labels == c].double().mean(0).flatten(1) for c in range(4)])  # [4, C, HW]
    for t, classes in ((0, [0, 1]), (None, [0, 1, 2, 3])):
        d = torch.stack([(mu[i] - mu[j]).norm(dim=1) for i in classes for j in classes if i < j]).min(0).values
        torch.testing.assert_close(out[t]["features.0"], (d / d.max()).float(), rtol=1e-4, atol=1e-5)


def test_tvs_bhattacharyya_against_a_direct_gaussian_formula():
    data, m = separable_dataset(n=10), probe_model()
    out = compute_scores("tvs", m, None, data, cluster=0, options={"tvs_measure": "bhattacharyya"})["features.0"]
    rows = sample_indices(data.labels.numpy(), [0, 1], None)
    maps, labels = layer_maps(m, data, rows, "features.0", pre_relu=True)
    x0, x1 = maps[labels == 0].double().flatten(2), maps[labels == 1].double().flatten(2)  # [n, C, D]
    d = x0.shape[-1]
    v0 = ((x0 - x0.mean(0)) ** 2).mean(dim=(0, 2))  # per-position variance, averaged over positions
    v1 = ((x1 - x1.mean(0)) ** 2).mean(dim=(0, 2))
    d2 = ((x0.mean(0) - x1.mean(0)) ** 2).sum(-1)
    db = d2 / (4 * (v0 + v1)) - 0.5 * d * torch.log(2 * (v0 * v1).sqrt() / (v0 + v1))
    torch.testing.assert_close(out, (db / db.max()).float(), rtol=1e-4, atol=1e-5)
    assert int(ranking(out)[0]) == 0


def test_hrank_of_rank_one_maps_is_one():
    z = torch.randn(2, 3, 8, 8)
    u, v = torch.randn(8, 3), torch.randn(3, 8)
    z[0, 0] = torch.outer(u[:, 0], v[0]).abs()  # rank 1 (non-negative, so relu keeps it)
    z[0, 1] = u.abs() @ v.abs()  # a sum of 3 non-negative outer products: rank 3
    r = map_rank(z)
    assert r[0, 0] == 1 and r[0, 1] == 3
    data, m = separable_dataset(n=4, rank_one=True), probe_model()
    out = compute_all_scores(["hrank"], m, None, data)["hrank"]
    for t in (0, 1):
        assert torch.equal(out[t]["features.0"], torch.ones(3))


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (3, 12, 2, 2)])  # map larger / smaller than the channel count
def test_chip_against_a_direct_nuclear_norm_loop(tiny_dataset, shape):
    z = torch.randn(*shape)
    a = torch.relu(z)
    n_, c_ = shape[:2]
    direct = torch.zeros(n_, c_)
    for n in range(n_):
        full = torch.linalg.matrix_norm(a[n].flatten(1).double(), "nuc")
        for c in range(c_):
            b = a[n].flatten(1).double().clone()
            b[c] = 0
            direct[n, c] = float(full - torch.linalg.matrix_norm(b, "nuc"))
    torch.testing.assert_close(nuclear_norm_drop(z), direct, rtol=1e-5, atol=1e-6)
    # end to end on a tiny network: the mean over the cluster's sampled rows
    m = make_tiny_resnet()
    got = compute_scores("chip", m, ["layer2.1.conv1"], tiny_dataset, cluster=1, options={"chip_per_class": 3})
    rows = sample_indices(tiny_dataset.labels.numpy(), tiny_dataset.hierarchy.members(1), 3)
    maps, _ = layer_maps(m, tiny_dataset, rows, "layer2.1.conv1")
    loop = []
    for s in range(len(maps)):
        mat = maps[s].flatten(1).double()
        full = torch.linalg.matrix_norm(mat, "nuc")
        row = []
        for c in range(mat.shape[0]):
            b = mat.clone()
            b[c] = 0
            row.append(float(full - torch.linalg.matrix_norm(b, "nuc")))
        loop.append(row)
    torch.testing.assert_close(got["layer2.1.conv1"], torch.tensor(loop).mean(0), rtol=1e-4, atol=1e-5)


def test_taylor_against_autograd_through_each_block(tiny_dataset):
    """Independent path: rebuild each BasicBlock by hand with A as a leaf, autograd the restricted loss."""
    m = make_tiny_resnet()
    cluster = 1
    members = tiny_dataset.hierarchy.members(cluster)
    got = compute_scores("taylor", m, None, tiny_dataset, cluster=cluster, options={"max_per_class": 5})
    rows = sample_indices(tiny_dataset.labels.numpy(), members, 5)
    x, y = next(iterate_batches(tiny_dataset, len(rows), rows))
    target = torch.as_tensor([members.index(int(c)) for c in y])
    units = m.units()
    for layer in m.prunable_layers():
        blk = units[layer.unit][1]
        with torch.no_grad():
            h = m.forward_stem(x, layer.unit - 1)
        a = torch.relu(blk.bn1(blk.conv1(h))).detach().requires_grad_(True)
        out = blk.bn2(blk.conv2(a)) + (h if blk.downsample is None else blk.downsample(h))
        logits = m.forward_tail(torch.relu(out), layer.unit)[:, members]
        loss = F.cross_entropy(logits, target, reduction="sum")
        (g,) = torch.autograd.grad(loss, a)
        direct = (a * g).mean(dim=(2, 3)).abs().mean(0).detach()
        torch.testing.assert_close(got[layer.name], direct, rtol=1e-4, atol=1e-7, msg=layer.name)


# ------------------------------------------------------------------ sampling and the cache
def test_sample_indices_are_per_class_capped_nested_and_seeded():
    labels = np.repeat(np.arange(4), 50)
    a = sample_indices(labels, [1, 3], 10, seed=0)
    b = sample_indices(labels, [1, 3], 20, seed=0)
    assert len(a) == 20 and set(labels[a]) == {1, 3} and set(a) <= set(b)
    assert np.array_equal(a, sample_indices(labels, [1, 3], 10, seed=0))
    assert not np.array_equal(a, sample_indices(labels, [1, 3], 10, seed=1))
    assert np.array_equal(sample_indices(labels, [3], 10, 0), a[labels[a] == 3])  # per class, not per call


def test_cache_stores_and_reloads_scores(tmp_path, tiny_dataset):
    from sinf_core.scores.cache import load_or_compute_scores

    m = make_tiny_resnet()
    first = load_or_compute_scores(["l1", "dcs"], m, "tiny", tiny_dataset, options=FAST, root=tmp_path)
    assert not first["l1"]["cached"] and not first["dcs"]["cached"]
    again = load_or_compute_scores(["l1", "dcs"], m, "tiny", tiny_dataset, options=FAST, root=tmp_path)
    assert again["l1"]["cached"] and again["dcs"]["cached"]
    for meth in ("l1", "dcs"):
        for t in range(3):
            for name, v in first[meth]["scores"][t].items():
                assert torch.equal(v, again[meth]["scores"][t][name])
    other = load_or_compute_scores(["l1", "dcs"], m, "tiny", tiny_dataset, options={**FAST, "p": 1}, root=tmp_path)
    assert other["l1"]["cached"] and not other["dcs"]["cached"]


@pytest.mark.realdata
def test_cli_scores_computes_then_loads_the_cache(real_env, tmp_path, capsys):
    import json

    from sinf_core.cli import main

    argv = ["scores", "cifar100_resnet20", "--methods", "l1,mean_act,dcs", "--max-per-class", "2",
            "--device", "cpu", "--cache-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(first["layers"]) == 9 and len(first["clusters"]) == 20
    assert not any(r["cached"] for r in first["methods"].values())
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert all(r["cached"] for r in second["methods"].values())
