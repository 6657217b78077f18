"""`sinf build` and `sinf bench` end to end on models SINF never hand-wrote: torchvision resnet18 and
mobilenet_v2 and a timm resnet, named by their usual specs, on a tiny synthetic image folder."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli as _run
from conftest import write_colour_folder

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

CLUSTERS = {"warm": ["red", "orange"], "cool": ["blue", "teal"], "grey": ["black", "white"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,test}/<6 classes>/*.png with hierarchy.json: 3 clusters of 2 colour classes."""
    return write_colour_folder(tmp_path_factory.mktemp("anycnn") / "colours", CLUSTERS)


def _checkpoint(spec, tmp_path):
    """A plain library state dict for 6 classes (random weights, BatchNorm statistics made non-trivial)."""
    if spec.startswith("timm:"):
        timm = pytest.importorskip("timm")
        net = timm.create_model(spec.split(":", 1)[1], pretrained=False, num_classes=6)
    else:
        import torchvision

        net = torchvision.models.get_model(spec.split(":", 1)[1], weights=None, num_classes=6)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


QUICK_BENCH = {"schedules": [[0.1, 0.5]], "multiple_of": None, "static_scores": ["l1"], "head_epochs": 1,
               "head_fit_samples": 60, "pool": 16, "screen_pool": 16, "batch_size": 16, "throughput_reps": 1,
               "screen_reps": 1, "latency_calls": 3, "latency_warmup": 1, "candidates_per_mode": 1}


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "torchvision:mobilenet_v2", "timm:resnet10t"])
def test_build_and_bench_complete_on_a_library_model(spec, folder, tmp_path, monkeypatch):
    import sinf_core.clusters

    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path / "cache"))
    # UMAP's maps are not what this test is about and cost minutes of JIT on a busy machine
    monkeypatch.setattr(sinf_core.clusters, "cluster_maps", lambda stats, random_state=0: {"classes": np.zeros((6, 2))})
    ckpt = _checkpoint(spec, tmp_path)
    bundle = tmp_path / "bundle"
    common = ["--dataset", str(folder), "--checkpoint", str(ckpt), "--device", "cpu"]
    code, out, err = _run(["build", spec, *common, "--out", str(bundle), "--methods", "l1,dcs", "--r-l-grid", "0.5",
                           "--bench-options", json.dumps(QUICK_BENCH), "--json"])
    assert code == 0, err[-2000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"] == f"{spec}@6"
    bench = json.loads((bundle / "bench.json").read_text())
    assert bench["model"] == f"{spec}@6" and bench["base"]["top1"] is not None
    code, out, err = _run(["bench", spec, *common, "--bundle", str(bundle), "--schedules", "0.1,0.5",
                           "--static-scores", "l1", "--head-epochs", "1", "--head-samples", "60", "--pool", "16",
                           "--batch-size", "16", "--reps", "1", "--latency-calls", "3", "--candidates", "1", "--json"])
    assert code == 0, err[-2000:]
    res = json.loads(out)
    for name in ("base", "sinf", "exit", "cascade", "static"):
        assert "top1" in res[name], name
    assert res["base"]["flops"] > 0 and res["base"]["params"] > 0
    # every cache file and folder the spec made (statistics, scores, heads) has a name Windows accepts
    made = [p.name for p in (tmp_path / "cache").rglob("*")]
    assert made and not [n for n in made if set(n) & set('<>:"\\|?*')], made
