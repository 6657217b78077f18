"""Model specs users already know: torchvision:NAME, timm:NAME and package.module:callable, built with one
output per class of the data set, weights from --checkpoint. Tiny and offline (no ../shared, no downloads)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import run_cli as _run
from conftest import write_colour_folder
from sinf_core.errors import SinfError
from sinf_core.models import build_model, get_entry, load_model, model_for_classes, parse_spec, same_model
from sinf_core.models.specs import ModelSpec, folder_name

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,test}/{cat,dog,eel}/*.png (4 images each) plus hierarchy.json: a 3-class data set."""
    return write_colour_folder(tmp_path_factory.mktemp("specs") / "pets", {"pets": ["cat", "dog"], "fish": ["eel"]},
                               n=(4, 4), spread=80.0, step=60.0)


def _test_batch(exp) -> torch.Tensor:
    from sinf_core.data import iterate_batches

    return next(iterate_batches(exp.test, 64))[0]


# ------------------------------------------------------------------------------------------ spelling
def test_specs_parse_to_canonical_names():
    assert parse_spec("torchvision:resnet18") == ModelSpec("torchvision", "resnet18")
    assert parse_spec(" timm:resnet18.a1_in1k@7 ") == ModelSpec("timm", "resnet18.a1_in1k", 7)
    assert parse_spec("my_pkg.nets:Factory.small@3") == ModelSpec("callable", "my_pkg.nets:Factory.small", 3)
    assert parse_spec("timm:resnet18@7").name == "timm:resnet18@7" and parse_spec("a.b:c@2").base == "a.b:c"
    # the class count comes from the data set; registered names (fixed heads) and explicit @N stay
    assert model_for_classes("torchvision:resnet18", 3) == "torchvision:resnet18@3"
    assert model_for_classes("torchvision:resnet18@5", 3) == "torchvision:resnet18@5"
    assert model_for_classes("cifar100_resnet20", 3) == "cifar100_resnet20"
    # a bundle's canonical name is found under any spelling of the spec, in one default folder
    assert same_model("torchvision:resnet18", "torchvision:resnet18@3")
    assert same_model("torchvision:resnet18@3", "torchvision:resnet18@3")
    assert not same_model("torchvision:resnet18@4", "torchvision:resnet18@3")
    assert not same_model("timm:resnet18", "torchvision:resnet18@3")
    assert not same_model("cifar100_resnet20", "cifar100_resnet56")
    assert folder_name("torchvision:resnet18@3") == folder_name("torchvision:resnet18") == "torchvision-resnet18"
    assert folder_name("my_pkg.nets:small@3") == "my_pkg.nets-small"
    assert folder_name("cifar100_resnet56") == "cifar100_resnet56"


@pytest.mark.parametrize("spec, message", [
    ("torchvision:", "names no model; e.g. torchvision:resnet18"),
    ("torchvision:resnet18@0", "the class count after '@' must be a positive whole number"),
    ("timm:resnet18@ten", "not 'ten'"),
    ("timm:hf-hub:timm/resnet18.a1_in1k", "would download; SINF loads weights only from --checkpoint"),
    ("torchvision:res net", "is not a torchvision model name"),
    ("not a module:fn", "must be a module path"),
    ("nosuchname", "or a spec: torchvision:NAME, timm:NAME or package.module:callable"),
])
def test_malformed_specs_say_what_is_wrong(spec, message):
    with pytest.raises(SinfError) as e:
        get_entry(spec)
    assert message in str(e.value)


def test_unknown_library_names_list_close_ones():
    with pytest.raises(SinfError) as e:
        get_entry("torchvision:resnet19")
    assert str(e.value).startswith("unknown torchvision classification model 'resnet19'; close names: resnet18")
    assert "torchvision.models.list_models()" in str(e.value)
    with pytest.raises(SinfError) as e:
        get_entry("torchvision:fasterrcnn_resnet50_fpn")  # a detector, not a classifier
    assert "unknown torchvision classification model" in str(e.value)
    with pytest.raises(SinfError) as e:
        get_entry("timm:resnett18")
    assert str(e.value).startswith("unknown timm model 'resnett18'; close names: resnet18")


def test_timm_missing_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(SinfError, match="timm:NAME model specs need the timm package: pip install timm"):
        get_entry("timm:resnet18")


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """An importable module ``user_nets`` with model builders good and bad."""
    (tmp_path / "user_nets.py").write_text(
        "from torch import nn\n"
        "def small(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
        "def fixed():\n"
        "    return small(3)\n"
        "def number():\n"
        "    return 3\n"
        "def broken(num_classes=10):\n"
        "    raise RuntimeError('no GPU here')\n"
        "WIDTH = 8\n"
        "INSTANCE = small(3)\n")
    (tmp_path / "user_broken.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets"
    for m in ("user_nets", "user_broken"):
        sys.modules.pop(m, None)


@pytest.mark.parametrize("spec, message", [
    ("no_such_pkg.nets:small", "cannot import module 'no_such_pkg.nets' (No module named 'no_such_pkg')"),
    ("user_broken:small", "importing module 'user_broken' failed: ValueError: bad config"),
    ("user_nets:smal", "module 'user_nets' has no 'smal' (close names: small"),
    ("user_nets:WIDTH", "WIDTH is not callable (it is of type int)"),
    ("user_nets:INSTANCE", "INSTANCE is a module instance; name the function or class that builds it"),
    ("user_nets:fixed@3", "takes no num_classes argument, so it cannot be built for 3 classes; name it without @3"),
])
def test_callable_specs_that_cannot_be_looked_up(user_module, spec, message):
    with pytest.raises(SinfError) as e:
        get_entry(spec)
    assert message in str(e.value)


@pytest.mark.parametrize("spec, message", [
    ("user_nets:number", "user_nets:number returned an object of type int, not a torch.nn.Module"),
    ("user_nets:broken@3", "user_nets:broken(num_classes=3) failed: RuntimeError: no GPU here"),
])
def test_callable_specs_that_do_not_build_a_module(user_module, spec, message):
    with pytest.raises(SinfError) as e:
        build_model(spec)
    assert message in str(e.value)


def test_a_spec_without_a_checkpoint_says_weights_are_needed(folder):
    from sinf_core.experiment import open_experiment

    with pytest.raises(SinfError) as e:
        load_model("torchvision:resnet18@3")
    assert "no registered weights" in str(e.value) and "--checkpoint FILE" in str(e.value)
    with pytest.raises(SinfError, match="--checkpoint FILE"):  # before any data is read
        open_experiment("torchvision:resnet18", str(folder / "missing"), runtime="cpu")
    with pytest.raises(SinfError, match=r"is not tied to a data set: pass one \(--dataset"):
        open_experiment("torchvision:resnet18", None, checkpoint=str(folder / "x.pt"), runtime="cpu")
    code, out, err = _run(["eval", "torchvision:resnet18", "--dataset", str(folder)])
    assert code == 2 and "--checkpoint FILE" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ building + loading
@pytest.mark.parametrize("spec, build", [
    ("torchvision:resnet18", lambda n: __import__("torchvision").models.get_model("resnet18", weights=None, num_classes=n)),
    ("torchvision:mobilenet_v2", lambda n: __import__("torchvision").models.get_model("mobilenet_v2", num_classes=n)),
    ("timm:resnet18", lambda n: __import__("timm").create_model("resnet18", pretrained=False, num_classes=n)),
])
def test_a_plain_library_checkpoint_loads_with_the_data_sets_class_count(folder, tmp_path, spec, build):
    from sinf_core.experiment import open_experiment
    from sinf_core.models import SinfModel

    torch.manual_seed(0)
    plain = build(len(CLASSES)).eval()
    ckpt = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), ckpt)  # a plain state dict, as torchvision / timm users save them
    exp = open_experiment(spec, str(folder), checkpoint=str(ckpt), runtime="cpu")
    assert exp.model_name == f"{spec}@3" and isinstance(exp.model, SinfModel)
    assert exp.splits.protocol == "heldout"
    x = _test_batch(exp)
    with torch.no_grad():
        assert torch.equal(exp.model(x), plain(x))
    # the canonical name alone rebuilds the architecture (no data set at hand), and the weights fit it
    again = build_model(exp.model_name)
    again.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), plain(x))


def test_a_safetensors_checkpoint_of_another_class_count_is_refused_with_the_reason(folder, tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from sinf_core.experiment import open_experiment

    ckpt = tmp_path / "imagenet_head.safetensors"
    save_file(torchvision.models.get_model("resnet18", num_classes=1000).state_dict(), str(ckpt))
    with pytest.raises(SinfError) as e:
        open_experiment("torchvision:resnet18", str(folder), checkpoint=str(ckpt), runtime="cpu")
    msg = str(e.value)
    assert "fc.weight: checkpoint (1000, 512) vs model (3, 512)" in msg
    assert "torchvision:resnet18@3 was built for 3 classes" in msg


def test_a_user_callable_is_built_for_the_data_set(folder, tmp_path, user_module):
    from sinf_core.experiment import open_experiment
    from sinf_core.models.specs import build_module, parse_spec as parse

    plain = build_module(parse("user_nets:small@3")).eval()
    ckpt = tmp_path / "small.pt"
    torch.save(plain.state_dict(), ckpt)
    exp = open_experiment("user_nets:small", str(folder), checkpoint=str(ckpt), runtime="cpu")
    assert exp.model_name == "user_nets:small@3"
    x = _test_batch(exp)
    with torch.no_grad():
        assert torch.equal(exp.model(x), plain(x))
    # a callable without num_classes keeps its own head; the data-set check says whether it fits
    fixed = open_experiment("user_nets:fixed", str(folder), checkpoint=str(ckpt), runtime="cpu")
    assert fixed.model_name == "user_nets:fixed"


def test_sinf_eval_on_an_image_folder(folder, tmp_path):
    import torchvision

    torch.manual_seed(1)
    plain = torchvision.models.get_model("resnet18", num_classes=3).eval()
    ckpt = tmp_path / "resnet18.pt"
    torch.save(plain.state_dict(), ckpt)
    code, out, err = _run(["eval", "torchvision:resnet18", "--dataset", str(folder), "--checkpoint", str(ckpt),
                           "--device", "cpu", "--json"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["model"] == "torchvision:resnet18@3" and rep["n"] == 12 and rep["split"] == "test"
    from sinf_core.data import iterate_batches, load_dataset

    x, y = next(iterate_batches(load_dataset(str(folder), "test"), 64))
    with torch.no_grad():
        top1 = 100.0 * float((plain(x).argmax(1) == y).float().mean())
    assert rep["top1"] == pytest.approx(top1, abs=0.005)  # the report rounds to 2 decimals


# ------------------------------------------------------------------------------------------ where names are stored
def test_bundles_match_a_spec_without_its_class_count(tmp_path):
    from sinf_core.bundle import Bundle

    Bundle.open_or_create(tmp_path / "b", "torchvision:resnet18@3", "0" * 64)
    assert Bundle.open(tmp_path / "b", model="torchvision:resnet18").manifest["model"] == "torchvision:resnet18@3"
    assert Bundle.open(tmp_path / "b", model="torchvision:resnet18@3")
    with pytest.raises(SinfError, match="is for model 'torchvision:resnet18@3', not 'torchvision:resnet18@4'"):
        Bundle.open(tmp_path / "b", model="torchvision:resnet18@4")
    with pytest.raises(SinfError, match="not 'timm:resnet18'"):
        Bundle.open(tmp_path / "b", model="timm:resnet18")
    # one default folder per spec (torchvision-resnet18): a build for another class count is told what to do
    with pytest.raises(SinfError, match="not 'torchvision:resnet18@4'; choose another --out folder or delete it"):
        Bundle.open_or_create(tmp_path / "b", "torchvision:resnet18@4", "0" * 64)


def test_a_subgraph_file_rebuilds_on_its_canonical_spec_alone(tmp_path):
    from sinf_core.subgraph import SubgraphSpec, build_subgraph, load_subgraph_weights, save_subgraph_weights

    torch.manual_seed(0)
    model = build_model("torchvision:resnet18@3").eval()
    names = model.unit_names()
    tap = names[len(names) // 2]
    after = [l for l in model.prunable_layers() if l.unit > model.unit_index(tap)]
    assert after
    spec = SubgraphSpec("torchvision:resnet18@3", tap, {l.name: list(range(0, l.channels, 2)) for l in after}, [0, 2])
    sub = build_subgraph(model, spec)
    path = save_subgraph_weights(tmp_path / "k.safetensors", sub, spec)
    loaded, spec2 = load_subgraph_weights(path)  # no base model at hand: built from "torchvision:resnet18@3"
    assert spec2 == spec
    with torch.no_grad():
        h = model.forward_stem(torch.randn(2, 3, 32, 32), tap)
        out = loaded(h)
        assert torch.equal(out, sub(h)) and out.shape == (2, 3)  # the restricted head: -inf off its classes
        assert torch.isinf(out[:, 1]).all() and torch.isfinite(out[:, [0, 2]]).all()


def test_a_subgraph_file_never_makes_sinf_import_a_callable(tmp_path):
    from safetensors.torch import save_file

    from sinf_core.subgraph import load_subgraph_weights
    from sinf_core.subgraph.spec import SPECS_FORMAT, SPECS_VERSION

    path = tmp_path / "sub.safetensors"
    spec = {"base_model": "user_nets:small@3", "tap": None, "keep": {}}
    save_file({"w": torch.zeros(1)}, str(path),
              metadata={"format": SPECS_FORMAT, "version": str(SPECS_VERSION), "spec": json.dumps(spec)})
    with pytest.raises(SinfError, match="a file does not make SINF import and run code: build the base model"):
        load_subgraph_weights(path)


def test_registered_weights_are_data_and_a_wrong_sha256_is_refused(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from conftest import make_tiny_resnet
    from sinf_core.data.cifar import CIFAR100_MEAN, CIFAR100_STD
    from sinf_core.models import registry
    from sinf_core.models.registry import MODELS, ModelEntry, Weights

    r56 = MODELS["cifar100_resnet56"].weights
    assert (r56.top1, r56.mean, r56.std, r56.sha256) == (72.63, CIFAR100_MEAN, CIFAR100_STD, None)
    assert r56.url.endswith("/cifar100_resnet56-f2eff4c8.pt")
    assert MODELS["cifar100_resnet50"].weights == Weights()
    assets = tmp_path / "assets"
    assets.mkdir()
    save_file(make_tiny_resnet().state_dict(), str(assets / "tiny.safetensors"))
    monkeypatch.setattr(registry, "ASSETS_DIR", assets)
    monkeypatch.setitem(MODELS, "tiny", ModelEntry("tiny", make_tiny_resnet, weights=Weights(file="tiny.safetensors")))
    load_model("tiny")  # no digest registered: loads
    monkeypatch.setitem(MODELS, "tiny", ModelEntry("tiny", make_tiny_resnet,
                                                   weights=Weights(file="tiny.safetensors", sha256="0" * 64)))
    with pytest.raises(SinfError, match="not the registered 0000"):
        load_model("tiny")


def test_the_app_offers_no_download_for_a_spec():
    pytest.importorskip("streamlit")
    from app.downloads import ensure_weights

    assert ensure_weights("torchvision:resnet18") is None  # nothing to fetch: its weights are a --checkpoint
