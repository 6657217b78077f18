import itertools

import numpy as np
import pytest
import torch

from sinf_core.runtime import Runtime
from sinf_core.data import Hierarchy
from sinf_core.errors import SinfError
from test_stats import one_thread  # noqa: F401  (autouse fixture)
from sinf_core.overlap import (chance_jaccard, class_sets, cluster_means, cluster_sets, filter_overlap, jaccard,
                               pair_means, top_q_count, top_q_sets)
from sinf_core.stats import ActivationStats

F64 = torch.float64


def hand_stats() -> tuple[ActivationStats, Hierarchy]:
    """4 classes in 2 clusters, one layer of 5 channels, q = 40 % -> 2 channels per set.
    Top-2 channels: class0 {0, 1}, class1 {0, 2}, class2 {3, 4}, class3 {2, 4}."""
    means = torch.tensor([
        [9.0, 8.0, 1.0, 0.0, 0.5],
        [7.0, 0.1, 6.0, 0.2, 0.3],
        [0.0, 0.1, 0.2, 5.0, 4.0],
        [0.0, 1.0, 3.0, 0.5, 2.0],
    ], dtype=F64)
    count = torch.tensor([2.0, 6.0, 4.0, 4.0], dtype=F64)
    s = means * count[:, None]
    st = ActivationStats(["L"], 4, count, {"L": s}, {"L": s * 0}, {"L": s * 0})
    h = Hierarchy(("a", "b", "c", "d"), ("A", "B"), (0, 0, 1, 1))
    return st, h


def test_hand_computed_jaccard_and_profile():
    st, h = hand_stats()
    sets = class_sets(st, "L", q=40)
    expect = [{0, 1}, {0, 2}, {3, 4}, {2, 4}]
    assert [set(np.flatnonzero(r).tolist()) for r in sets.numpy()] == expect
    j = jaccard(sets)
    ref = torch.tensor([[1, 1 / 3, 0, 0], [1 / 3, 1, 0, 1 / 3], [0, 0, 1, 1 / 3], [0, 1 / 3, 1 / 3, 1]], dtype=F64)
    assert torch.allclose(j, ref)
    within, between = pair_means(j, torch.tensor([0, 0, 1, 1]))
    assert within == pytest.approx(1 / 3) and between == pytest.approx(1 / 12)
    # cluster means are sample-weighted: A = (2*c0 + 6*c1)/8, B = (c2 + c3)/2
    cm = cluster_means(st, h, "L")
    assert torch.allclose(cm[0], torch.tensor([7.5, 2.075, 4.75, 0.15, 0.35], dtype=F64))
    assert torch.allclose(cm[1], torch.tensor([0.0, 0.55, 1.6, 2.75, 3.0], dtype=F64))
    csets = cluster_sets(st, h, "L", q=40)
    assert [set(np.flatnonzero(r).tolist()) for r in csets.numpy()] == [{0, 2}, {3, 4}]
    rep = filter_overlap(st, h, q=40)
    row = rep.profile[0]
    assert row["layer"] == "L" and row["k"] == 2 and row["channels"] == 5
    assert row["within"] == pytest.approx(1 / 3, abs=1e-4) and row["between"] == pytest.approx(1 / 12, abs=1e-4)
    assert row["cluster_offdiag"] == 0.0
    assert torch.allclose(rep.cluster_jaccard["L"], torch.eye(2, dtype=F64))
    js = rep.to_json(include_class_matrices=True)
    assert js["depth_profile"][0]["gap"] == pytest.approx(1 / 4, abs=1e-4)
    assert js["class_jaccard"]["L"][1][3] == pytest.approx(0.3333, abs=1e-4)


def test_jaccard_matches_python_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 23, generator=g) < 0.3
    b = torch.rand(5, 23, generator=g) < 0.6
    j = jaccard(a, b)
    for i in range(7):
        for k in range(5):
            sa, sb = set(np.flatnonzero(a[i].numpy())), set(np.flatnonzero(b[k].numpy()))
            ref = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
            assert j[i, k].item() == pytest.approx(ref)


def test_top_q_count_ties_and_errors():
    assert [top_q_count(c, 20) for c in (16, 32, 64, 5, 1)] == [4, 7, 13, 1, 1]
    assert top_q_count(10, 100) == 10 and top_q_count(10, 30) == 3  # no float round-up past exact
    sets = top_q_sets(torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=F64), 50)
    assert sets.tolist() == [[True, True, False, False]]  # ties to the lower index
    with pytest.raises(SinfError, match="percentage"):
        top_q_count(10, 0)
    with pytest.raises(SinfError, match="no samples"):
        top_q_sets(torch.tensor([[float("nan"), 1.0]]), 50)


def test_chance_jaccard_exact_enumeration():
    for c, k in ((4, 2), (6, 3), (7, 2)):
        subsets = [set(s) for s in itertools.combinations(range(c), k)]
        ref = np.mean([len(s & t) / len(s | t) for s in subsets for t in subsets])
        assert chance_jaccard(c, k) == pytest.approx(ref)


def test_profile_planted_structure():
    """Classes of the same cluster share a block of strong channels: within >> between."""
    rng = np.random.default_rng(0)
    k_cls, c = 12, 40
    clusters = np.repeat(np.arange(4), 3)
    means = rng.random((k_cls, c)) * 0.5
    for m in range(4):
        means[clusters == m, m * 10:(m + 1) * 10] += 2.0 + rng.random((3, 10))
    count = torch.full((k_cls,), 3.0, dtype=F64)
    s = torch.as_tensor(means) * 3
    st = ActivationStats(["L"], k_cls, count, {"L": s}, {"L": s * 0}, {"L": s * 0})
    h = Hierarchy(tuple(f"c{i}" for i in range(k_cls)), tuple(f"g{i}" for i in range(4)), tuple(clusters.tolist()))
    row = filter_overlap(st, h, q=25).profile[0]
    assert row["within"] == 1.0 and row["between"] == 0.0 and row["chance"] < 0.2


@pytest.mark.realdata
def test_resnet56_depth_profile_last_stage(real_env):
    """Stats over 20 training images per class: in the last stage, same-cluster classes share more of
    their top channels than classes of different clusters."""
    from sinf_core.experiment import open_experiment
    from sinf_core.data.splits import stratified_split
    from sinf_core.stats import collect_stats

    exp = open_experiment("cifar100_resnet56", runtime="cpu")
    _, idx = stratified_split(exp.train.labels.numpy(), 0.04, seed=0)  # 20 per class
    st = collect_stats(exp.model, exp.train, idx, rt=Runtime(device="cpu", batch_size=250))
    rep = filter_overlap(st, exp.hierarchy, q=20)
    last = [r for r in rep.profile if r["layer"].startswith("layer3.")]
    assert len(rep.profile) == 27 and len(last) == 9
    for r in last:
        assert r["within"] > r["between"], r
    assert np.mean([r["gap"] for r in last]) > 0.05


def test_overlap_command_writes_profile(monkeypatch, capsys, tmp_path):
    import json

    from test_stats import run_cli, tiny_experiment

    exp = tiny_experiment(monkeypatch, "overlap")
    out_file = tmp_path / "overlap.json"
    out = run_cli(capsys, "overlap", "tiny", "--json", "--q", "30", "--cache-dir", str(tmp_path), "--out", str(out_file))
    from sinf_core.stats import collect_stats

    ref = filter_overlap(collect_stats(exp.model, exp.train, exp.splits.fit), exp.hierarchy, 30)
    assert [r["layer"] for r in out["depth_profile"]] == ref.layers
    for got, want in zip(out["depth_profile"], ref.profile):
        assert got["within"] == pytest.approx(want["within"], abs=1e-4)
        assert got["between"] == pytest.approx(want["between"], abs=1e-4)
    saved = json.loads(out_file.read_text())
    assert saved["cluster_jaccard"][ref.layers[-1]] == [[round(v, 4) for v in row] for row in
                                                        ref.cluster_jaccard[ref.layers[-1]].tolist()]
    from sinf_core.cli import main

    assert main(["overlap", "tiny", "--q", "0", "--cache-dir", str(tmp_path)]) == 2  # clear error, no traceback
    assert "percentage" in capsys.readouterr().err
