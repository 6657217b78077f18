"""The first unit after the tap, kept across a run of configurations (``FirstUnitReuse``): the same
BatchNorm statistics and the same predictions as computing everything again, and a unit that changed
(or other inputs) is always run again."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core import tuning
from sinf_core.runtime import Runtime
from sinf_core.subgraph import BatchNormSamples, FirstUnitReuse, build_subgraph, make_cluster_specs
from test_bench import _random_scores
from test_tuning import _tiny_outputs


def _specs(model, tap, scores, hier, r_M, r_L, samples=None):
    return make_cluster_specs(model, "tiny", tap, scores, hier, r_M, r_L, bn_samples=samples)


@pytest.mark.parametrize("make, tap", [(make_tiny_vgg, "features.4"), (make_tiny_resnet, "layer2.0")])
def test_batchnorm_pass_reuses_an_unchanged_first_unit_and_gives_the_same_statistics(make, tap):
    model = make().eval()
    data = make_tiny_dataset(n_per_class=12, seed=4)
    hier = data.hierarchy
    scores = _random_scores(model, seed=7)
    samples = BatchNormSamples(model, data, per_cluster=9, rt=Runtime(device="cpu", batch_size=4))
    first = _specs(model, tap, scores, hier, 0.25, 0.5, samples)
    assert samples.reuse.hits == 0 and samples.reuse.misses == hier.num_clusters
    for r_M, r_L, reused in ((0.25, 0.9, True), (0.6, 0.9, False), (0.6, 0.4, True)):
        hits = samples.reuse.hits
        got = _specs(model, tap, scores, hier, r_M, r_L, samples)
        fresh = _specs(model, tap, scores, hier, r_M, r_L,
                       BatchNormSamples(model, data, per_cluster=9, rt=Runtime(device="cpu", batch_size=4)))
        assert got == fresh  # kept indices and every re-estimated statistic, exactly
        assert (samples.reuse.hits - hits == hier.num_clusters) is reused, (r_M, r_L)
    assert got != first


def test_evaluate_schedule_reuses_first_units_and_gives_the_same_evaluation():
    model, tap, ds, *_, out = _tiny_outputs(5, 2, batch_size=16)
    scores = _random_scores(model, seed=3)
    costs = tuning.CostCache(model, (3, 32, 32))
    rt = Runtime(device="cpu", batch_size=7)
    reuse = FirstUnitReuse()
    # (r_M, r_L, overrides, clusters whose first unit is reused): r_L moved keeps all three; an override of
    # cluster 1 keeps the other two; r_M moved to 0.5 keeps only cluster 1's (it had r_M 0.5 already)
    for r_M, r_L, overrides, expect in ((0.25, 0.5, None, 0), (0.25, 0.9, None, 3), (0.25, 0.9, {1: (0.5, 0.5)}, 2),
                                        (0.5, 0.9, None, 1)):
        specs = make_cluster_specs(model, "tiny", tap, scores, ds.hierarchy, r_M, r_L, overrides=overrides)
        hits = reuse.hits
        got = tuning.evaluate_schedule(model, specs, out, ds.hierarchy, costs, r_M, r_L, rt, reuse=reuse)
        ref = tuning.evaluate_schedule(model, specs, out, ds.hierarchy, costs, r_M, r_L, rt)
        assert got["clusters"] == ref["clusters"] and torch.equal(got["schedule"].pred, ref["schedule"].pred)
        assert reuse.hits - hits == expect, (r_M, r_L, overrides)


def test_reuse_runs_the_unit_again_for_other_inputs_and_keeps_nothing_past_its_budget():
    model = make_tiny_vgg().eval()
    sub = build_subgraph(model, _specs(model, "features.4", _random_scores(model, seed=1), make_tiny_dataset(4).hierarchy,
                                       0.25, 0.5)[0])
    h = torch.randn(6, sub.units[0][0].in_channels, 8, 8)
    calls = []

    def run(unit):
        calls.append(1)
        return [unit(h)], "stats"

    reuse = FirstUnitReuse()
    with torch.no_grad():
        a, _ = reuse.outputs("k", sub.units[0], (h, 6), run)
        b, extra = reuse.outputs("k", sub.units[0], (h.clone(), 6), run)  # equal values: reused
        assert len(calls) == 1 and extra == "stats" and torch.equal(a[0], b[0])
        reuse.outputs("k", sub.units[0], (h + 1, 6), run)  # other inputs
        reuse.outputs("k", sub.units[0], (h + 1, 3), run)  # other batches
        sub.units[0][0].weight.data[0, 0, 0, 0] += 1.0  # the unit changed in place
        reuse.outputs("k", sub.units[0], (h + 1, 3), run)
        assert len(calls) == 4
        small = FirstUnitReuse(max_bytes=16)  # the unit's output is larger than this
        small.outputs("k", sub.units[0], (h, 6), run)
        small.outputs("k", sub.units[0], (h, 6), run)
        assert len(calls) == 6 and small.hits == 0
