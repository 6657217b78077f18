import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, make_tiny_bottleneck, make_tiny_resnet, make_tiny_vgg
from sinf_core.errors import SinfError
from sinf_core.models import MODELS, build_model, get_entry, load_model, load_state_dict_checked


@pytest.mark.parametrize("name,n_prunable,params", [
    ("cifar100_resnet20", 9, 278_324), ("cifar100_resnet56", 27, 861_620),
    ("cifar100_vgg16_bn", 13, None), ("cifar100_resnet50", 32, None),
])
def test_registry_builds(name, n_prunable, params):
    m = build_model(name).eval()
    assert len(m.prunable_layers()) == n_prunable
    if params:
        assert sum(p.numel() for p in m.parameters()) == params
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_vgg_state_dict_layout():
    keys = build_model("cifar100_vgg16_bn").state_dict().keys()
    assert "features.0.weight" in keys and "features.0.bias" in keys and "features.1.running_var" in keys
    assert {"classifier.0.weight", "classifier.3.weight", "classifier.6.weight"} <= set(keys)
    assert not any(k.startswith("_") for k in keys)


@pytest.mark.parametrize("make", [make_tiny_resnet, make_tiny_bottleneck, make_tiny_vgg])
def test_stem_tail_split_equals_forward(make):
    m = make()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full = m(x)
        for tap in m.unit_names():
            assert torch.allclose(m.forward_tail(m.forward_stem(x, tap), tap), full, atol=1e-5), tap
    names = [l.name for l in m.prunable_layers()]
    assert names == sorted(names, key=lambda n: [l.name for l in m.prunable_layers()].index(n))
    units = [l.unit for l in m.prunable_layers()]
    assert units == sorted(units)


def test_unknown_model_lists_known():
    with pytest.raises(SinfError) as e:
        get_entry("resnet9000")
    assert "cifar100_resnet56" in str(e.value)


def test_unknown_tap_and_layer():
    m = make_tiny_resnet()
    with pytest.raises(SinfError, match="unknown tap"):
        m.forward_stem(torch.randn(1, 3, 32, 32), "layer9.9")
    with pytest.raises(SinfError, match="no prunable layer"):
        m.prunable_layer("nope")


def test_checkpoint_for_other_architecture_is_clear(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "r20.safetensors"
    save_file(build_model("cifar100_resnet20").state_dict(), str(path))
    with pytest.raises(SinfError) as e:
        load_model("cifar100_resnet56", checkpoint=path)
    msg = str(e.value)
    assert "missing keys (216)" in msg and "layer1.3." in msg
    with pytest.raises(SinfError, match="unexpected keys"):
        load_state_dict_checked(build_model("cifar100_resnet20"), {**build_model("cifar100_resnet20").state_dict(), "x": torch.zeros(1)}, "t")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(SinfError, match="cannot read checkpoint"):
        load_model("cifar100_resnet20", checkpoint=bad)


def test_pickled_code_checkpoint_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(SinfError, match="cannot read checkpoint"):
        load_model("cifar100_resnet20", checkpoint=path)


@pytest.mark.realdata
@pytest.mark.parametrize("name,top1", [("cifar100_resnet56", 72.63), ("cifar100_resnet20", 68.83)])
def test_eval_cli_reproduces_published_top1(real_env, name, top1):
    """Loads through the torch.hub cache (seeded from SINF_WEIGHTS_DIR into a fresh TORCH_HOME)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sinf_core", "eval", name, "--json"], capture_output=True, text=True,
                         cwd=REPO, check=True)
    elapsed = time.perf_counter() - t0
    rep = json.loads(out.stdout)
    assert abs(rep["top1"] - top1) <= 0.05 and rep["n"] == 10_000
    assert (real_env["torch_home"] / "hub" / "checkpoints" / MODELS[name].weights.url.rsplit("/", 1)[1]).is_file()
    print(f"{name}: top1 {rep['top1']} in {elapsed:.1f} s")


@pytest.mark.realdata
def test_project_vgg16_loads_strictly_and_reproduces_its_card(real_env):
    """The project's VGG16 in assets/ loads by name (no network, strict) and `sinf eval` gives exactly the
    test top-1 and sha256 its JSON card records."""
    from sinf_core.io import sha256_file
    from sinf_core.models.registry import ASSETS_DIR, model_card

    name = "cifar100_vgg16_bn_sinf"
    card = model_card(name)
    if card is None:
        pytest.skip(f"{name} has not been published to assets/ yet")
    assert card["sha256"] == sha256_file(ASSETS_DIR / MODELS[name].weights.file)
    load_model(name)  # strict=True inside: a missing or unexpected key would raise
    out = subprocess.run([sys.executable, "-m", "sinf_core", "eval", name, "--json"], capture_output=True, text=True,
                         cwd=REPO, check=True)
    rep = json.loads(out.stdout)
    assert rep["n"] == 10_000 and rep["top1"] == card["test_top1"]
