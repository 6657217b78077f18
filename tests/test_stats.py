from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_bottleneck, make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core.runtime import Runtime
from sinf_core.errors import SinfError
from sinf_core.stats import (ActivationStats, cached_stats, collect_stats, load_stats, model_fingerprint, save_stats,
                             stats_cache_key)

@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny tensors: one intra-op thread is as fast, and far faster on a loaded machine (no waiting for a
    descheduled second thread at every op). Real-data tests keep all threads."""
    if request.node.get_closest_marker("realdata"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


MAKERS = [make_tiny_resnet, make_tiny_bottleneck, make_tiny_vgg]


def manual_capture(model, ds):
    """Independent reference: plain forward with our own hooks on each prunable BN and the classifier.
    Returns per-sample a_l, zero fraction, penultimate features and logits (float64)."""
    a, z, handles = {}, {}, []
    pen = []
    for layer in model.prunable_layers():
        def hook(_m, _i, out, name=layer.name):
            act = torch.clamp(out, min=0)  # relu(bn)
            a.setdefault(name, []).append(act.mean(dim=(2, 3)).double())
            z.setdefault(name, []).append((act == 0).double().mean(dim=(2, 3)))
        handles.append(layer.bn.register_forward_hook(hook))
    handles.append(model.classifier_layer().register_forward_hook(lambda _m, i, _o: pen.append(i[0].double())))
    x = (ds.images.float() / 255 - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 7]) for i in range(0, len(x), 7)])
    for h in handles:
        h.remove()
    return ({k: torch.cat(v) for k, v in a.items()}, {k: torch.cat(v) for k, v in z.items()}, torch.cat(pen),
            logits.double())


def all_close(s1: ActivationStats, s2: ActivationStats, atol: float) -> float:
    t1, t2 = s1.to_tensors(), s2.to_tensors()
    assert t1.keys() == t2.keys()
    worst = 0.0
    for k in t1:
        worst = max(worst, float((t1[k].double() - t2[k].double()).abs().max()) if t1[k].numel() else 0.0)
    assert worst <= atol, worst
    return worst


@pytest.mark.parametrize("make", MAKERS)
def test_merge_of_two_halves_equals_one_pass(make):
    model, ds = make(), make_tiny_dataset(n_per_class=15)
    n = len(ds)
    sample = np.array([3, 17, 40, 41, 88])
    full = collect_stats(model, ds, rt=Runtime(device="cpu", batch_size=16), feature_sample=sample)
    # halves made of the same batches as the one pass: the accumulation itself is exact in float64
    h1 = collect_stats(model, ds, np.arange(48), rt=Runtime(device="cpu", batch_size=16), feature_sample=sample)
    h2 = collect_stats(model, ds, np.arange(48, n), rt=Runtime(device="cpu", batch_size=16), feature_sample=sample)
    merged = h1.merge(h2)
    all_close(full, merged, 1e-10)
    assert merged.total == n and torch.equal(merged.sample_seen, torch.ones(len(sample), dtype=torch.float64))
    all_close(h2.merge(h1), merged, 1e-10)  # symmetric


def test_merge_of_arbitrary_parts_matches_to_float32_rounding():
    """Shuffled parts with other batch sizes: per-image activations may differ in the last float32 bit
    (kernels pick other blockings per batch size), the sums agree to float32 precision."""
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=15)
    full = collect_stats(model, ds, rt=Runtime(device="cpu", batch_size=16))
    perm = np.random.default_rng(1).permutation(len(ds))
    parts = [collect_stats(model, ds, p, rt=Runtime(device="cpu", batch_size=b)) for p, b in ((perm[:37], 10), (perm[37:70], 13), (perm[70:], 7))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    all_close(full, merged, 1e-5)
    assert torch.equal(merged.count, full.count) and torch.equal(merged.confusion, full.confusion)


@pytest.mark.parametrize("make", MAKERS)
def test_class_means_match_manual_forward(make):
    model, ds = make(), make_tiny_dataset(n_per_class=12)
    st = collect_stats(model, ds, rt=Runtime(device="cpu", batch_size=20), feature_sample=np.array([0, 5, 30]))
    a, z, pen, logits = manual_capture(model, ds)
    y = ds.labels.numpy()
    assert st.layers == [l.name for l in model.prunable_layers()]
    assert st.count.tolist() == np.bincount(y, minlength=6).tolist()
    for name in st.layers:
        ref = np.stack([a[name].numpy()[y == c].mean(0) for c in range(6)])
        np.testing.assert_allclose(st.class_mean(name).numpy(), ref, rtol=1e-5, atol=1e-6)
        refsq = np.stack([(a[name].numpy()[y == c] ** 2).sum(0) for c in range(6)])
        np.testing.assert_allclose(st.sumsq[name].numpy(), refsq, rtol=1e-5, atol=1e-6)
        refz = np.stack([z[name].numpy()[y == c].mean(0) for c in range(6)])
        np.testing.assert_allclose(st.class_zero_fraction(name).numpy(), refz, atol=1e-6)
        # group statistics pool samples (weighted), here clusters {2, 3}
        g = np.isin(y, [2, 3])
        np.testing.assert_allclose(st.group_mean(name, [2, 3]).numpy(), a[name].numpy()[g].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.group_zero_fraction(name, [2, 3]).numpy(), z[name].numpy()[g].mean(0), atol=1e-6)
        np.testing.assert_allclose(st.group_var(name, [2, 3]).numpy(), a[name].numpy()[g].var(0), rtol=1e-4, atol=1e-6)
    ref_proto = np.stack([pen.numpy()[y == c].mean(0) for c in range(6)])
    np.testing.assert_allclose(st.class_prototypes().numpy(), ref_proto, rtol=1e-5, atol=1e-5)
    pred = logits.argmax(1).numpy()
    conf = np.zeros((6, 6))
    np.add.at(conf, (y, pred), 1)
    np.testing.assert_array_equal(st.confusion.numpy(), conf)
    np.testing.assert_allclose(st.prob_sum.sum(1).numpy(), st.count.numpy(), rtol=1e-6)
    pos, lab, feats = st.sample()
    assert pos.tolist() == [0, 5, 30] and lab.tolist() == y[[0, 5, 30]].tolist()
    np.testing.assert_allclose(feats.numpy(), pen.numpy()[[0, 5, 30]], rtol=1e-5, atol=1e-5)


def test_zero_fraction_of_constant_channels():
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=5)
    layer = model.prunable_layers()[2]
    with torch.no_grad():  # channel 0: BN output -1 everywhere (always zero after ReLU); channel 1: +2.5
        layer.bn.weight[0], layer.bn.bias[0] = 0.0, -1.0
        layer.bn.weight[1], layer.bn.bias[1] = 0.0, 2.5
    st = collect_stats(model, ds, rt=Runtime(device="cpu", batch_size=8))
    zf, mean = st.class_zero_fraction(layer.name), st.class_mean(layer.name)
    assert torch.all(zf[:, 0] == 1.0) and torch.all(mean[:, 0] == 0.0)
    assert torch.all(zf[:, 1] == 0.0) and torch.allclose(mean[:, 1], torch.full((6,), 2.5, dtype=torch.float64))
    assert torch.allclose(st.class_var(layer.name)[:, 1], torch.zeros(6, dtype=torch.float64), atol=1e-9)
    others = zf[:, 2:]
    assert torch.all((others >= 0) & (others <= 1)) and others.max() < 1.0


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_exception():
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=5)
    before = _hook_counts(model)

    def boom(n):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        collect_stats(model, ds, rt=Runtime(device="cpu", batch_size=8), on_batch=boom)
    assert _hook_counts(model) == before == 0
    # a model that fails inside the forward pass (mismatched image size for the VGG head)
    vgg = make_tiny_vgg()
    bad = make_tiny_dataset(n_per_class=2, size=16)
    with pytest.raises(RuntimeError):
        collect_stats(vgg, bad, rt=Runtime(device="cpu", batch_size=4))
    assert _hook_counts(vgg) == 0


def test_layer_subset_and_unknown_layer():
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=4)
    names = [l.name for l in model.prunable_layers()]
    st = collect_stats(model, ds, layers=[names[3], names[1]])
    full = collect_stats(model, ds)
    assert st.layers == [names[3], names[1]]
    assert torch.allclose(st.sum[names[1]], full.sum[names[1]], atol=1e-10)
    with pytest.raises(SinfError, match="no prunable layer"):
        collect_stats(model, ds, layers=["nope"])
    with pytest.raises(SinfError, match="no statistics for layer"):
        st.class_mean(names[0])


def test_group_errors_and_unseen_classes():
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=4)
    st = collect_stats(model, ds, indices=np.flatnonzero(ds.labels.numpy() < 3))
    name = st.layers[0]
    assert torch.isnan(st.class_mean(name)[4]).all() and not torch.isnan(st.class_mean(name)[:3]).any()
    with pytest.raises(SinfError, match="no samples"):
        st.group_mean(name, [4, 5])
    with pytest.raises(SinfError, match="outside"):
        st.group_mean(name, [9])
    # the group over seen + unseen classes is the group over the seen ones
    assert torch.allclose(st.group_mean(name, [1, 2, 5]), st.group_mean(name, [1, 2]))


def test_bf16_close_to_float32():
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=6)
    f32 = collect_stats(model, ds)
    b16 = collect_stats(model, ds, rt=Runtime(device="cpu", bf16=True))
    for name in f32.layers:
        ref = f32.class_mean(name)
        assert torch.allclose(b16.class_mean(name), ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))


def test_save_load_roundtrip_and_bad_files(tmp_path):
    model, ds = make_tiny_bottleneck(), make_tiny_dataset(n_per_class=4)
    st = collect_stats(model, ds, feature_sample=5)
    path = save_stats(tmp_path / "s.safetensors", st, {"model": "tiny"})
    back, meta = load_stats(path)
    assert meta["model"] == "tiny" and meta["layers"] == st.layers
    all_close(st, back, 0.0)
    assert back.layers == st.layers  # order restored
    # also from_tensors without an explicit layer list keeps the forward order
    assert ActivationStats.from_tensors(st.to_tensors()).layers == st.layers
    path.write_bytes(b"garbage")
    with pytest.raises(SinfError, match="cannot read statistics"):
        load_stats(path)
    with pytest.raises(SinfError, match="missing"):
        load_stats(tmp_path / "nothing.safetensors")
    t = st.to_tensors()
    del t[f"zero/{st.layers[1]}"]
    with pytest.raises(SinfError, match="incomplete"):
        ActivationStats.from_tensors(t)


def test_cache_reuses_and_keys_on_weights(tmp_path):
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=4)
    calls = []
    s1, p1, hit1 = cached_stats("tiny", model, ds, "fit", rt=Runtime(device="cpu", batch_size=8), feature_sample=4, root=tmp_path,
                                on_batch=calls.append)
    s2, p2, hit2 = cached_stats("tiny", model, ds, "fit", rt=Runtime(device="cpu", batch_size=8), feature_sample=4, root=tmp_path,
                                on_batch=calls.append)
    assert (hit1, hit2) == (False, True) and p1 == p2 and sum(calls) == len(ds)
    all_close(s1, s2, 0.0)
    other = make_tiny_resnet(seed=1)
    assert model_fingerprint(other) != model_fingerprint(model)
    assert stats_cache_key("tiny", other, ds, "fit", None, False, 4) != stats_cache_key("tiny", model, ds, "fit", None, False, 4)
    assert stats_cache_key("tiny", model, ds, "fit", np.arange(10), False, 4) != stats_cache_key("tiny", model, ds, "fit", None, False, 4)
    # a corrupted entry is recomputed, not trusted
    p1.write_bytes(b"xx")
    s3, _, hit3 = cached_stats("tiny", model, ds, "fit", rt=Runtime(device="cpu", batch_size=8), feature_sample=4, root=tmp_path)
    assert not hit3
    all_close(s1, s3, 0.0)


# ------------------------------------------------------------------ command line
def tiny_experiment(monkeypatch, *modules):
    """Route the commands' ``open_from_args`` to a tiny model + data (heldout protocol splits)."""
    import importlib

    from sinf_core.data import make_splits
    from sinf_core.experiment import Experiment

    train, test = make_tiny_dataset(n_per_class=12, seed=0), make_tiny_dataset(n_per_class=6, seed=1)
    exp = Experiment("tiny", make_tiny_resnet(), train, test,
                     make_splits(train.labels.numpy(), test.labels.numpy(), "heldout"), Runtime(device="cpu"))
    for name in modules:
        monkeypatch.setattr(importlib.import_module(f"sinf_core.commands.{name}"), "open_from_args", lambda args: exp)
    return exp


def run_cli(capsys, *argv) -> dict:
    import json

    from sinf_core.cli import main

    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_command_caches_and_times(monkeypatch, capsys, tmp_path):
    exp = tiny_experiment(monkeypatch, "stats")
    out = run_cli(capsys, "stats", "tiny", "--json", "--cache-dir", str(tmp_path), "--batch-size", "16")
    assert out["samples"] == len(exp.splits.fit) and not out["cached"] and len(out["layers"]) == 6
    st, meta = load_stats(out["cache"])
    assert meta["split"] == "fit" and meta["feature_sample"] == 2000
    ref = collect_stats(exp.model, exp.train, exp.splits.fit, rt=Runtime(device="cpu", batch_size=16))
    for name in ref.layers:
        assert torch.allclose(st.class_mean(name), ref.class_mean(name), atol=1e-6)
    zero = ref.group_zero_fraction(ref.layers[2], list(range(6)))
    assert out["layers"][2]["zero_fraction"] == pytest.approx(float(zero.mean()), abs=1e-4)
    again = run_cli(capsys, "stats", "tiny", "--json", "--cache-dir", str(tmp_path))
    assert again["cached"] and again["cache"] == out["cache"]
    timed_out = run_cli(capsys, "stats", "tiny", "--json", "--split", "test", "--time", "--cache-dir", str(tmp_path),
                        "--batch-size", "8")
    t = timed_out["timing"]
    assert t["images"] == len(exp.test) and t["forward_s"] > 0 and t["ratio"] == pytest.approx(
        t["stats_s"] / t["forward_s"], rel=0.01)
    timed_stats, _ = load_stats(timed_out["cache"])  # the timed chunks merged = the statistics of the split
    all_close(timed_stats, collect_stats(exp.model, exp.test, rt=Runtime(device="cpu", batch_size=8)), 1e-5)


def test_stats_command_expands_a_home_folder_in_the_cache_dir(monkeypatch, capsys, tmp_path):
    # the timed pass writes its cache entry itself: it used Path(--cache-dir) as given, so "~/c" made a folder "~"
    tiny_experiment(monkeypatch, "stats")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = run_cli(capsys, "stats", "tiny", "--json", "--split", "test", "--time", "--cache-dir", "~/c",
                  "--batch-size", "8")
    assert Path(out["cache"]).parent == tmp_path / "home" / "c" / "stats" and Path(out["cache"]).is_file()
    assert not (tmp_path / "~").exists()
    again = run_cli(capsys, "stats", "tiny", "--json", "--split", "test", "--cache-dir", "~/c")
    assert again["cached"] and again["cache"] == out["cache"]  # the cached path reads the same folder
