"""Image sizes other than 32x32 (issue 13): an image folder is loaded at ``--image-size``, the model is built
for that shape and every FLOP count reads it; the bundle records the size and refuses data of another;
CIFAR-100 keeps its 32x32."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli as _run
from conftest import write_colour_folder
from sinf_core.errors import SinfError

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

CLUSTERS = {"warm": ["red", "orange"], "cool": ["blue", "teal"], "grey": ["black", "white"]}
SIZE = 48


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,test}/<6 classes>/*.png (48x48) with hierarchy.json: 3 clusters of 2 colour classes."""
    return write_colour_folder(tmp_path_factory.mktemp("sizes") / "colours48", CLUSTERS, size=SIZE)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=6).state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------ loading
def test_an_image_folder_loads_at_the_size_asked_for(folder, resnet18_weights):
    from sinf_core.data import load_dataset
    from sinf_core.experiment import open_experiment

    assert load_dataset(str(folder), "train", image_size=SIZE).images.shape[1:] == (3, SIZE, SIZE)
    assert load_dataset(str(folder), "test", image_size=64).images.shape[1:] == (3, 64, 64)  # resized up
    assert load_dataset(str(folder), "train").images.shape[1:] == (3, 32, 32)  # the default
    exp = open_experiment("torchvision:resnet18", str(folder), checkpoint=str(resnet18_weights), runtime="cpu",
                          image_size=SIZE)
    assert exp.input_shape == exp.model.input_shape == (3, SIZE, SIZE) and exp.image_size == SIZE
    assert exp.train.images.shape[1:] == exp.test.images.shape[1:] == (3, SIZE, SIZE)
    # no size asked for: a spec has no registered one, so the default
    assert open_experiment("torchvision:resnet18", str(folder), checkpoint=str(resnet18_weights),
                           runtime="cpu").input_shape == (3, 32, 32)


def test_cifar100_refuses_another_size_before_looking_for_its_files(tmp_path):
    from sinf_core.data import load_dataset
    from sinf_core.data.registry import check_image_size

    check_image_size("cifar100", 32)  # its own size is fine
    with pytest.raises(SinfError, match="CIFAR-100 images are 32x32 and are loaded as they are, not at 48x48"):
        load_dataset("cifar100", "train", tmp_path, image_size=48)
    with pytest.raises(SinfError, match="positive whole number"):
        load_dataset("cifar100", "train", tmp_path, image_size=0)
    code, out, err = _run(["eval", "cifar100_resnet20", "--data-dir", str(tmp_path), "--image-size", "64"])
    assert code != 0 and "CIFAR-100 images are 32x32" in err and "not at 64x64" in err


def test_a_model_that_runs_at_one_size_only_is_refused_at_another_with_the_reason():
    from sinf_core.models.graph import GraphModel

    fixed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * SIZE * SIZE, 6))
    assert GraphModel(fixed, (3, SIZE, SIZE)).input_shape == (3, SIZE, SIZE)
    with pytest.raises(SinfError, match=r"does not run on inputs of shape \(3, 32, 32\)"):
        GraphModel(fixed, (3, 32, 32))


# ------------------------------------------------------------------------------------------ FLOPs
def test_flops_at_48_are_the_hand_count_and_read_the_models_size():
    from sinf_core.cost import model_cost, stem_cost, tail_cost
    from sinf_core.models.graph import GraphModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 6))
    m = GraphModel(net, (3, SIZE, SIZE)).eval()
    half = SIZE // 2
    hand = 2 * 3 * 8 * 9 * SIZE * SIZE + 2 * 8 * 16 * 9 * half * half + 2 * 16 * 6  # 2 x MACs, conv and linear
    assert model_cost(m).flops == hand  # no input_shape given: the model's
    assert model_cost(m, (3, 32, 32)).flops != hand
    tap = m.unit_names()[0]
    assert stem_cost(m, tap).flops + tail_cost(m, tap).flops == hand


def test_conv_flops_scale_with_the_spatial_area():
    from sinf_core.cost import model_cost, stem_cost
    from sinf_core.models import build_model

    m32, m64 = build_model("torchvision:resnet18@6").eval(), build_model("torchvision:resnet18@6", (3, 64, 64)).eval()
    assert m32.input_shape == (3, 32, 32) and m64.input_shape == (3, 64, 64)
    fc = 2 * 512 * 6  # the classifier: the same at any size
    assert model_cost(m64).flops - fc == 4 * (model_cost(m32).flops - fc)
    for tap in m32.unit_names()[::3]:
        assert stem_cost(m64, tap).flops == 4 * stem_cost(m32, tap).flops, tap


def test_a_registered_model_runs_once_on_another_size_and_records_it():
    from sinf_core.models import build_model

    m = build_model("cifar100_resnet20", (3, SIZE, SIZE))  # global pooling: any size runs
    assert m.input_shape == (3, SIZE, SIZE)
    assert build_model("cifar100_resnet20").input_shape == (3, 32, 32)


def test_the_caches_keyed_on_data_tell_sizes_apart(folder):
    from conftest import make_tiny_resnet
    from sinf_core.data import load_dataset
    from sinf_core.stats import stats_cache_key

    model = make_tiny_resnet()
    a, b = load_dataset(str(folder), "train"), load_dataset(str(folder), "train", image_size=SIZE)
    assert stats_cache_key("tiny", model, a, "fit", None, False, 4) != stats_cache_key("tiny", model, b, "fit", None, False, 4)


# ------------------------------------------------------------------------------------------ bundles
def test_a_bundle_records_its_size_and_refuses_another(tmp_path):
    from sinf_core.bundle import Bundle

    b = Bundle.open_or_create(tmp_path / "b", "torchvision:resnet18@6", "0" * 64, {"dataset": "x"}, (3, SIZE, SIZE))
    assert b.input_shape == (3, SIZE, SIZE) and b.manifest["info"]["input_shape"] == [3, SIZE, SIZE]
    assert Bundle.open(tmp_path / "b", input_shape=(3, SIZE, SIZE)).input_shape == (3, SIZE, SIZE)
    with pytest.raises(SinfError, match=r"was built on 48x48 images, but the data is 32x32; pass --image-size 48"):
        Bundle.open(tmp_path / "b", input_shape=(3, 32, 32))
    with pytest.raises(SinfError, match="was built on 48x48 images, but the data is 64x64"):
        Bundle.open_or_create(tmp_path / "b", "torchvision:resnet18@6", "0" * 64, input_shape=(3, 64, 64))
    # a bundle written before sizes were recorded was built at the default size
    old = Bundle.open_or_create(tmp_path / "old", "cifar100_resnet20", "0" * 64, {"dataset": "cifar100"})
    assert old.input_shape == (3, 32, 32)
    with pytest.raises(SinfError, match="was built on 32x32 images, but the data is 48x48"):
        Bundle.open(tmp_path / "old", input_shape=(3, SIZE, SIZE))


QUICK_BENCH = {"schedules": [[0.1, 0.5]], "multiple_of": None, "static_scores": ["l1"], "head_epochs": 1,
               "head_fit_samples": 60, "pool": 16, "screen_pool": 16, "batch_size": 16, "throughput_reps": 1,
               "screen_reps": 1, "latency_calls": 3, "latency_warmup": 1, "candidates_per_mode": 1}


def test_build_and_bench_at_48(folder, resnet18_weights, tmp_path, monkeypatch):
    import sinf_core.clusters
    from sinf_core.cost import model_cost
    from sinf_core.models import build_model

    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path / "cache"))
    # UMAP's maps are not what this test is about and cost minutes of JIT on a busy machine
    monkeypatch.setattr(sinf_core.clusters, "cluster_maps", lambda stats, random_state=0: {"classes": np.zeros((6, 2))})
    spec, bundle = "torchvision:resnet18", tmp_path / "bundle"
    common = ["--dataset", str(folder), "--checkpoint", str(resnet18_weights), "--device", "cpu"]
    code, out, err = _run(["build", spec, *common, "--image-size", str(SIZE), "--out", str(bundle), "--methods",
                           "l1,dcs", "--r-l-grid", "0.5", "--bench-options", json.dumps(QUICK_BENCH), "--json"])
    assert code == 0, err[-2000:]
    assert json.loads((bundle / "manifest.json").read_text())["info"]["input_shape"] == [3, SIZE, SIZE]
    assert json.loads((bundle / "data.json").read_text())["input_shape"] == [3, SIZE, SIZE]
    flops48 = model_cost(build_model(f"{spec}@6", (3, SIZE, SIZE)).eval()).flops
    assert json.loads((bundle / "bench.json").read_text())["base"]["flops"] == flops48
    bench = ["bench", spec, *common, "--bundle", str(bundle), "--schedules", "0.1,0.5", "--static-scores", "l1",
             "--head-epochs", "1", "--head-samples", "60", "--pool", "16", "--batch-size", "16", "--reps", "1",
             "--latency-calls", "3", "--candidates", "1", "--json"]
    code, out, err = _run(bench)  # no --image-size: the bundle's
    assert code == 0, err[-2000:]
    res = json.loads(out)
    assert res["base"]["flops"] == flops48
    for name in ("sinf", "exit", "cascade", "static"):
        assert 0 < res[name]["flops"] <= flops48 * 1.2, name
    # the same bundle with data of another size: refused, saying what to do
    code, out, err = _run([*bench, "--image-size", "32"])
    assert code != 0 and "was built on 48x48 images, but the data is 32x32; pass --image-size 48" in err
    code, out, err = _run(["build", spec, *common, "--out", str(bundle), "--no-bench"])
    assert code != 0 and "was built on 48x48 images, but the data is 32x32" in err
    # the export's dummy inputs and its manifest are at the bundle's size too
    if all(_installed(m) for m in ("onnx", "onnxruntime", "onnxscript")):
        code, out, err = _run(["export", spec, *common, str(tmp_path / "onnx"), "--bundle", str(bundle), "--json"])
        assert code == 0, err[-2000:]
        assert json.loads(out)["input"]["shape"] == [3, SIZE, SIZE]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
