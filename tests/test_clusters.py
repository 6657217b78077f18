import numpy as np
import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet
from sinf_core.runtime import Runtime
from sinf_core.clusters import (adjusted_rand, canonical_labels, class_prototypes, cluster_classes, confusion_affinity,
                                majority_match, spectral_assignment, umap_map, ward_assignment)
from sinf_core.data import Hierarchy
from sinf_core.errors import SinfError
from test_stats import one_thread  # noqa: F401  (autouse fixture)
from sinf_core.stats import ActivationStats, collect_stats

F64 = torch.float64


def planted(n_clusters=5, per=4, dim=24, seed=0):
    """Class prototypes around well separated cluster centres, classes listed in shuffled order."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(n_clusters), per))
    centres = rng.normal(size=(n_clusters, dim)) * 3
    protos = centres[truth] + 0.3 * rng.normal(size=(len(truth), dim))
    return truth, protos


def stats_with(protos=None, confusion=None, k=None):
    k = k or len(protos if protos is not None else confusion)
    count = torch.full((k,), 10.0, dtype=F64)
    z = torch.zeros(k, 2, dtype=F64)
    pen = None if protos is None else torch.as_tensor(protos, dtype=F64) * 10
    conf = None if confusion is None else torch.as_tensor(confusion, dtype=F64)
    return ActivationStats(["L"], k, count, {"L": z}, {"L": z}, {"L": z}, penultimate_sum=pen, confusion=conf,
                           prob_sum=conf)


def test_ward_recovers_planted_clusters():
    truth, protos = planted()
    names = [f"c{i}" for i in range(len(truth))]
    h = cluster_classes("ward", names, k=5, fit_stats=stats_with(protos))
    assert h.num_clusters == 5 and adjusted_rand(h, truth) == 1.0
    assert adjusted_rand(ward_assignment(class_prototypes(stats_with(protos)), 5), truth) == 1.0
    # the prototypes are L2-normalised: scaling a class's features does not move it
    scaled = protos * np.linspace(0.5, 4, len(protos))[:, None]
    assert adjusted_rand(cluster_classes("ward", names, 5, fit_stats=stats_with(scaled)), truth) == 1.0


def test_spectral_recovers_planted_confusion_blocks():
    rng = np.random.default_rng(1)
    truth = rng.permutation(np.repeat(np.arange(4), 5))
    n = len(truth)
    conf = rng.integers(0, 2, size=(n, n)).astype(float)  # sparse noise between any classes
    same = truth[:, None] == truth[None, :]
    conf[same] += rng.integers(4, 9, size=same.sum())
    np.fill_diagonal(conf, 40)
    names = [f"c{i}" for i in range(n)]
    h = cluster_classes("spectral", names, k=4, calib_stats=stats_with(confusion=conf))
    assert adjusted_rand(h, truth) == 1.0
    hs = cluster_classes("spectral", names, k=4, calib_stats=stats_with(confusion=conf), soft=True)
    assert adjusted_rand(hs, truth) == 1.0
    a = confusion_affinity(conf)
    for assign in ("kmeans", "discretize"):
        assert adjusted_rand(spectral_assignment(a, 4, 0, assign), truth) == 1.0
    # cluster_qr (the default) does not depend on the seed; k-means gives the same answer for the same seed
    assert np.array_equal(spectral_assignment(a, 4, 0), spectral_assignment(a, 4, 5))
    assert np.array_equal(spectral_assignment(a, 4, 3, "kmeans"), spectral_assignment(a, 4, 3, "kmeans"))
    with pytest.raises(SinfError, match="unknown label assignment"):
        spectral_assignment(a, 4, 0, "magic")


def test_confusion_affinity_by_hand():
    conf = np.array([[8, 2, 0], [1, 3, 0], [0, 5, 5]], dtype=float)
    a = confusion_affinity(conf)
    rates = conf / conf.sum(1, keepdims=True)  # [[.8,.2,0],[.25,.75,0],[0,.5,.5]]
    assert np.allclose(a, [[0, (0.2 + 0.25) / 2, 0], [(0.2 + 0.25) / 2, 0, 0.25], [0, 0.25, 0]])
    assert np.allclose(a, a.T) and np.allclose(np.diag(a), 0) and rates.sum() == 3
    with pytest.raises(SinfError, match="no samples"):
        confusion_affinity(np.array([[1.0, 0], [0, 0]]))
    with pytest.raises(SinfError, match="square"):
        confusion_affinity(np.ones((2, 3)))


def test_hierarchy_method_and_errors():
    ds = make_tiny_dataset(n_per_class=2)
    h = ds.hierarchy
    assert cluster_classes("hierarchy", h.class_names, hierarchy=h) is h
    assert adjusted_rand(h, h) == 1.0
    relabelled = Hierarchy(h.class_names, ("x", "y", "z"), tuple((np.array(h.cluster_of_class) + 1) % 3))
    assert adjusted_rand(h, relabelled) == 1.0
    with pytest.raises(SinfError, match="unknown clustering method"):
        cluster_classes("kmeans", h.class_names)
    with pytest.raises(SinfError, match="between 1 and"):
        ward_assignment(np.eye(6), 7)
    with pytest.raises(SinfError, match="needs"):
        cluster_classes("ward", h.class_names, 3)
    assert canonical_labels([5, 5, 2, 9, 2]).tolist() == [0, 0, 1, 2, 1]


def test_ward_on_real_stats_pass_covers_every_class():
    """End to end on a tiny model: stats -> prototypes -> K clusters, every class in exactly one."""
    model, ds = make_tiny_resnet(), make_tiny_dataset(n_per_class=6)
    st = collect_stats(model, ds, rt=Runtime(device="cpu", batch_size=12))
    h = cluster_classes("ward", ds.class_names, k=3, fit_stats=st)
    assert sorted(c for m in range(3) for c in h.members(m)) == list(range(6))
    rows = majority_match(h, ds.hierarchy)
    assert len(rows) == 3 and all(0 < r["purity"] <= 1 for r in rows)
    with pytest.raises(SinfError, match="no samples"):
        class_prototypes(collect_stats(model, ds, np.arange(12)))


def test_umap_map_reproducible_and_separates():
    truth, protos = planted(n_clusters=3, per=8, dim=16)
    e1 = umap_map(protos, random_state=0, n_neighbors=5)
    e2 = umap_map(protos, random_state=0, n_neighbors=5)
    assert e1.shape == (24, 2) and np.array_equal(e1, e2)
    # every point's nearest neighbour in the map is from its own planted cluster
    d = ((e1[:, None] - e1[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (truth[d.argmin(1)] == truth).all()
    with pytest.raises(SinfError, match="at least 3"):
        umap_map(protos[:2])


@pytest.mark.realdata
def test_resnet56_data_driven_clusters_agree_with_superclasses(real_env):
    """Ward on prototypes from 20 train images per class, and spectral on the confusion matrix of 20
    calibration images per class: both well above chance agreement (ARI 0) with the 20 superclasses.
    (With all of fit / calibration: Ward 0.50, spectral 0.39, docs/foundation.md.)"""
    from sinf_core.data.splits import stratified_split
    from sinf_core.experiment import open_experiment

    exp = open_experiment("cifar100_resnet56", runtime="cpu")
    _, fit_idx = stratified_split(exp.train.labels.numpy(), 0.04, seed=0)
    fit = collect_stats(exp.model, exp.train, fit_idx, rt=Runtime(device="cpu", batch_size=250))
    ward = cluster_classes("ward", exp.hierarchy.class_names, 20, fit_stats=fit)
    assert adjusted_rand(ward, exp.hierarchy) > 0.3
    calib_data = exp.calib_data()
    _, calib_idx = stratified_split(calib_data.labels.numpy(), 0.4, seed=0)  # 20 of the 50 per class
    calib = collect_stats(exp.model, calib_data, calib_idx, rt=Runtime(device="cpu", batch_size=250))
    spec = cluster_classes("spectral", exp.hierarchy.class_names, 20, calib_stats=calib)
    assert adjusted_rand(spec, exp.hierarchy) > 0.2


def test_clusters_command_ward_out_file(monkeypatch, capsys, tmp_path):
    import json

    from test_stats import run_cli, tiny_experiment

    exp = tiny_experiment(monkeypatch, "clusters")
    out_file = tmp_path / "h.json"
    out = run_cli(capsys, "clusters", "tiny", "--method", "ward", "--k", "3", "--json", "--cache-dir", str(tmp_path),
                  "--out", str(out_file))
    ref = cluster_classes("ward", exp.hierarchy.class_names, 3, fit_stats=collect_stats(exp.model, exp.train, exp.splits.fit))
    loaded = Hierarchy.from_json(json.loads(out_file.read_text()), exp.hierarchy.class_names)
    assert adjusted_rand(loaded, ref) == 1.0
    assert out["results"]["ward"]["ari_vs_hierarchy"] == pytest.approx(adjusted_rand(ref, exp.hierarchy), abs=1e-4)
    both = run_cli(capsys, "clusters", "tiny", "--method", "all", "--k", "3", "--json", "--cache-dir", str(tmp_path))
    assert set(both["results"]) == {"hierarchy", "ward", "spectral", "spectral_soft"}
    assert both["results"]["hierarchy"]["ari_vs_hierarchy"] == 1.0
    from sinf_core.cli import main

    assert main(["clusters", "tiny", "--method", "ward", "--k", "7", "--cache-dir", str(tmp_path)]) == 2
    assert "at most the number of classes" in capsys.readouterr().err
