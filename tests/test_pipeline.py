import json

import numpy as np
import pytest

from conftest import make_tiny_dataset, make_tiny_resnet
from sinf_core.runtime import Runtime
from sinf_core.bundle import Bundle
from sinf_core.data import make_splits
from sinf_core.experiment import Experiment
from sinf_core.pipeline import BuildSettings, build_bundle, load_scores

QUICK = BuildSettings(
    methods=("dcs", "l1", "random"), r_L_grid=(0.3, 0.7), k=3, stats_feature_sample=30,
    router={"epochs": 1, "batch_size": 32, "taps": ["layer2.0", "layer2.1"]}, bench=False,
)


def tiny_experiment() -> Experiment:
    train, test = make_tiny_dataset(n_per_class=20, seed=0), make_tiny_dataset(n_per_class=10, seed=1)
    splits = make_splits(train.labels.numpy(), test.labels.numpy(), "pretrained")
    import torch

    return Experiment("tiny_resnet", make_tiny_resnet(), train, test, splits, Runtime(device="cpu", batch_size=32))


def test_build_writes_the_contract_and_caches(tmp_path):
    exp = tiny_experiment()
    b = build_bundle(exp, tmp_path / "b", QUICK)
    for f in ("data.json", "stats.safetensors", "clusters.json", "overlap.json", "router.json", "exit.json",
              "scores_dcs.safetensors", "grid.json"):
        assert (tmp_path / "b" / f).is_file(), f
    grid = b.json("grid.json")
    assert len(grid["rows"]) == 3 * 2 * 2
    # BatchNorm re-estimation is decided on calibration (oracle accuracy over the r_L grid, with vs without)
    bn = b.json("bn.json")
    assert len(bn["calib_on"]) == len(bn["calib_off"]) == len(QUICK.r_L_grid) and bn["score"] == "dcs"
    assert bn["use"] == (np.mean(bn["calib_on"]) > np.mean(bn["calib_off"]))
    assert grid["bn_samples"] == (QUICK.bn_samples if bn["use"] else 0)
    off = [r["mean_acc"] for r in grid["rows"] if r["method"] == "dcs" and r["split"] == "calib"]
    assert off == pytest.approx(bn["calib_on"] if bn["use"] else bn["calib_off"])  # the grid follows the decision
    assert {r["split"] for r in grid["rows"]} == {"calib", "report"}
    # more pruning -> fewer FLOPs, for every method
    for m in QUICK.methods:
        f = {r["r_L"]: np.mean(r["flops"]) for r in grid["rows"] if r["method"] == m and r["split"] == "calib"}
        assert f[0.7] < f[0.3]
    scores = load_scores(b, "dcs")
    assert set(scores) == {0, 1, 2}
    # a second run recomputes nothing
    log = []
    build_bundle(exp, tmp_path / "b", QUICK, log=log.append)
    assert not any(" computed in " in line for line in log), log
    assert Bundle.open(tmp_path / "b", model="tiny_resnet").has("grid")


def test_stem_cache_gives_identical_evaluation():
    from sinf_core.subgraph import SubgraphSpec, evaluate_cluster_subgraphs

    exp = tiny_experiment()
    model = exp.model
    specs = {m: SubgraphSpec("tiny", "layer2.0", {"layer3.0.conv1": [0, 2, 5], "layer3.1.conv1": [1]},
                             exp.hierarchy.members(m)) for m in range(3)}
    plain = evaluate_cluster_subgraphs(model, specs, exp.test, rt=Runtime(device="cpu", batch_size=7))
    cache: dict = {}
    first = evaluate_cluster_subgraphs(model, specs, exp.test, rt=Runtime(device="cpu", batch_size=7), stem_cache=cache)
    again = evaluate_cluster_subgraphs(model, specs, exp.test, rt=Runtime(device="cpu", batch_size=7), stem_cache=cache)
    assert "layer2.0" in cache and cache["layer2.0"].shape[0] == len(exp.test)
    for res in (first, again):
        assert [r["accuracy"] for r in res["clusters"]] == [r["accuracy"] for r in plain["clusters"]]


def test_compare_scores_table():
    from sinf_core.comparison import compare_scores, comparison_markdown

    rows = []
    for m, accs in {"dcs": [80, 60], "l1": [78, 62], "random": [70, 40]}.items():
        for r, a in zip((0.3, 0.7), accs):
            for split, shift in (("calib", 1.0), ("report", 0.0)):
                rows.append({"tap": "t", "method": m, "r_M": 0.05, "r_L": r, "split": split, "mean_acc": a + shift})
    cmp = compare_scores({"tap": "t", "rows": rows}, "t")
    assert cmp["rows"][0]["best_baseline"] == "l1" and cmp["rows"][0]["dcs_minus_best"] == 2.0
    assert cmp["rows"][1]["dcs_minus_best"] == -2.0
    assert cmp["ranking"][-1] == "random"
    md = comparison_markdown(cmp, "x")
    assert "| 0.3 |" in md and "+2.00" in md and "-2.00" in md


def test_dcs_variant_is_chosen_on_calibration_not_report():
    from sinf_core.comparison import compare_scores

    # dcs_lda wins on calibration, plain dcs on report: the comparison must use dcs_lda
    table = {"dcs": {"calib": [70, 50], "report": [90, 90]},
             "dcs_lda": {"calib": [75, 55], "report": [60, 60]},
             "l1": {"calib": [60, 40], "report": [65, 50]}}
    rows = [{"tap": "t", "method": m, "r_M": 0.05, "r_L": r, "split": split, "mean_acc": a}
            for m, per in table.items() for split, accs in per.items() for r, a in zip((0.3, 0.7), accs)]
    cmp = compare_scores({"tap": "t", "rows": rows}, "t")
    assert cmp["dcs_variant"] == "dcs_lda"
    assert cmp["dcs_variant_calib_means"] == {"dcs": 60.0, "dcs_lda": 65.0}
    assert [row["dcs_minus_best"] for row in cmp["rows"]] == [-5.0, 10.0]
