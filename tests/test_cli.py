"""The `sinf` command line: every help page renders, and bad input gives one clear message, no traceback."""


import pytest

from conftest import run_cli as _run
from sinf_core.cli import build_parser, main
from sinf_core.commands import COMMAND_MODULES


def _subcommands() -> list[str]:
    import importlib

    return [importlib.import_module(f"sinf_core.commands.{m}").NAME for m in COMMAND_MODULES]


def test_top_level_help_lists_every_subcommand():
    code, out, err = _run(["--help"])
    assert code == 0, err
    for name in _subcommands():
        assert name in out
    assert "top-q% channel sets" in out  # a literal % in a subcommand's HELP is shown as is


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_help_renders(name):
    code, out, err = _run([name, "--help"])
    assert code == 0, err
    assert out.startswith(f"usage: sinf {name}")
    assert "Traceback" not in err


def test_parser_knows_every_module():
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(_subcommands())


def test_models_lists_the_registry_with_weights_status(tmp_path, monkeypatch):
    import json

    from sinf_core.models import MODELS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))  # an empty hub cache
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / MODELS["cifar100_resnet20"].weights.url.rsplit("/", 1)[1]).write_bytes(b"x")
    monkeypatch.setenv("SINF_WEIGHTS_DIR", str(weights))
    code, out, err = _run(["models", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert list(rows) == list(MODELS)
    r56 = rows["cifar100_resnet56"]
    assert r56["dataset"] == "cifar100" and r56["published_top1"] == 72.63 and r56["parameters"] == 861620
    assert (r56["weights"], r56["weights_available"]) == ("download", False)
    assert (rows["cifar100_resnet20"]["weights"], rows["cifar100_resnet20"]["weights_available"]) == ("local", True)
    assert rows["cifar100_resnet50"]["weights"] == "none" and rows["cifar100_resnet50"]["published_top1"] is None
    assert rows["cifar100_vgg16_bn_sinf"]["weights"] == "assets" and rows["cifar100_vgg16_bn_sinf"]["card_top1"]
    code, out, err = _run(["models"])
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "cifar100_resnet56 " in ln)
    assert "0.86M" in line and "72.63" in line and "downloaded on first use" in line
    assert "train it" in next(ln for ln in out.splitlines() if "cifar100_resnet50 " in ln)


def test_eval_help_points_at_an_existing_command():
    code, out, _ = _run(["eval", "--help"])
    assert code == 0 and "sinf models" in out
    assert _run(["models", "--help"])[0] == 0


def _fails(argv: list[str], *fragments: str) -> str:
    """``sinf ARGV`` exits 2 with one `sinf CMD: error: ...` message holding every fragment, no traceback."""
    code, out, err = _run(argv)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and out == ""
    assert err.startswith(f"sinf {argv[0]}: error: "), err
    for f in fragments:
        assert f in err, (f, err)
    return err


def _write_cifar(folder, n=40, fine=None, coarse=None, n_data=None):
    import pickle

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    fine = (np.arange(n) % 4).tolist() if fine is None else fine
    coarse = [f // 2 for f in (np.arange(n) % 4).tolist()] if coarse is None else coarse
    for split in ("train", "test"):
        obj = {"data": rng.integers(0, 255, (n if n_data is None else n_data, 3072), dtype=np.uint8),
               "fine_labels": fine, "coarse_labels": coarse}
        (folder / split).write_bytes(pickle.dumps(obj, protocol=4))
    meta = {"fine_label_names": ["a", "b", "c", "d"], "coarse_label_names": ["AB", "CD"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def test_cifar_labels_out_of_range_name_file_value_and_range(tmp_path):
    from sinf_core.data.cifar import load_cifar100_split
    from sinf_core.errors import SinfError

    fine = (list(range(4)) * 10)[:39] + [57]
    folder = _write_cifar(tmp_path / "a" / "cifar-100-python", fine=fine)
    with pytest.raises(SinfError) as e:
        load_cifar100_split(folder, "train")
    assert str(e.value) == (f"{folder / 'train'}: fine_labels[39] is 57, outside the valid range 0..3 "
                            "(1 of 40 labels out of range)")
    negative = _write_cifar(tmp_path / "b" / "cifar-100-python", coarse=[-1] + [0] * 39)
    with pytest.raises(SinfError, match=r"coarse_labels\[0\] is -1, outside the valid range 0..1"):
        load_cifar100_split(negative, "test")
    _fails(["eval", "cifar100_resnet20", "--data-dir", str(tmp_path / "a")],
           str(folder / "train"), "fine_labels[39] is 57", "0..3")


def test_cifar_label_and_image_counts_that_differ_are_named(tmp_path):
    from sinf_core.data.cifar import load_cifar100_split
    from sinf_core.errors import SinfError

    folder = _write_cifar(tmp_path / "cifar-100-python", n_data=38)
    with pytest.raises(SinfError) as e:
        load_cifar100_split(folder, "test")
    assert str(e.value).startswith(f"{folder / 'test'}: 38 images but 40 fine_labels")
    _fails(["eval", "cifar100_resnet20", "--data-dir", str(tmp_path)], str(folder / "train"), "38 images but 40 fine_labels")


def test_cifar_file_without_labels_is_named(tmp_path):
    import pickle

    folder = _write_cifar(tmp_path / "cifar-100-python")
    (folder / "train").write_bytes(pickle.dumps({"data": b"x"}))
    _fails(["eval", "cifar100_resnet20", "--data-dir", str(tmp_path)], str(folder / "train"))


def _image_folder(root, classes_by_split, n=2):
    import json

    from PIL import Image

    for split, classes in classes_by_split.items():
        for i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(n):
                Image.new("RGB", (32, 32), (40 * i, 10 * j, 0)).save(d / f"{j}.png")
    all_classes = sorted({c for cs in classes_by_split.values() for c in cs})
    (root / "hierarchy.json").write_text(json.dumps({"clusters": {"all": all_classes}}))
    return root


def _checkpoint(tmp_path, name="cifar100_resnet20"):
    from safetensors.torch import save_file

    from sinf_core.models import build_model

    path = tmp_path / f"{name}.safetensors"
    save_file(build_model(name).state_dict(), str(path))
    return path


def test_image_folder_whose_class_count_differs_from_the_head(tmp_path):
    from sinf_core.errors import SinfError
    from sinf_core.experiment import open_experiment

    folder = _image_folder(tmp_path / "pets", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(SinfError) as e:
        open_experiment("cifar100_resnet20", str(folder), checkpoint=ckpt, runtime="cpu")
    assert str(e.value).startswith(f"cifar100_resnet20 predicts 100 classes (its final layer has 100 outputs) but "
                                   f"the data set 'pets' in {folder} has 2 classes")
    _fails(["eval", "cifar100_resnet20", "--dataset", str(folder), "--checkpoint", str(ckpt), "--device", "cpu"],
           str(folder), "100 classes", "has 2 classes")


def test_image_folder_whose_splits_list_other_classes(tmp_path):
    import torch

    from sinf_core.data import Hierarchy, ImageDataset
    from sinf_core.errors import SinfError
    from sinf_core.experiment import check_splits_agree

    folder = _image_folder(tmp_path / "pets", {"train": ["cat", "dog", "eel"], "test": ["cat", "dog"]})
    _fails(["eval", "cifar100_resnet20", "--dataset", str(folder), "--checkpoint", str(_checkpoint(tmp_path))],
           f"{folder / 'hierarchy.json'} for the 2 class sub-folders of {folder / 'test'}: ", "unknown class 'eel'")

    def ds(names):
        h = Hierarchy(tuple(names), ("all",), (0,) * len(names))
        return ImageDataset("pets", torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), h,
                            (0.5,) * 3, (0.2,) * 3, {"source": "/x/pets"})

    with pytest.raises(SinfError, match=r"'pets' in /x/pets have different classes: 3 in train, 2 in test "
                                        r"\(only in train: \['eel'\]; only in test: none\)"):
        check_splits_agree(ds(["cat", "dog", "eel"]), ds(["cat", "dog"]))


def _assert_no_unsafe_advice(msg: str) -> None:
    low = msg.lower()
    assert "weights_only" not in low and "weights only" not in low and "add_safe_globals" not in low, msg


def test_checkpoint_holding_pickled_code_is_refused_without_torchs_advice(tmp_path):
    import torch

    from sinf_core.errors import SinfError
    from sinf_core.models import load_model

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(SinfError) as e:
        load_model("cifar100_resnet20", checkpoint=path)
    msg = str(e.value)
    assert msg == (f"cannot read checkpoint: {path} is not a plain state dict or safetensors file: it holds the "
                   "Python object print, and SINF only loads plain state dicts (tensors in a torch file) and "
                   "safetensors files, for safety")
    _assert_no_unsafe_advice(msg)


@pytest.mark.parametrize("fname,content,expected", [
    ("empty.pt", b"", "{path} is empty (0 bytes)"),
    ("empty.safetensors", b"", "{path} is empty (0 bytes)"),
    ("garbage.pt", b"garbage", "{path} is not a PyTorch state dict or safetensors file (7 bytes"),
    ("garbage.safetensors", b"garbage!" * 4, "{path} is not a PyTorch state dict or safetensors file (32 bytes"),
    ("truncated.pt", None, "{path} is not a PyTorch state dict or safetensors file (100 bytes"),
    ("plain.pt", b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
     "{path} is not a PyTorch state dict or safetensors file"),
])
def test_unreadable_checkpoints_say_what_the_file_is(tmp_path, fname, content, expected):
    import torch

    from sinf_core.errors import SinfError
    from sinf_core.models import read_checkpoint

    path = tmp_path / fname
    if content is None:
        torch.save({"a": torch.zeros(100)}, tmp_path / "full.pt")
        content = (tmp_path / "full.pt").read_bytes()[:100]
    path.write_bytes(content)
    with pytest.raises(SinfError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith("cannot read checkpoint: " + expected.format(path=path)), msg
    _assert_no_unsafe_advice(msg)


def test_checkpoint_errors_via_the_cli_are_one_line(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    folder = _image_folder(tmp_path / "pets", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    err = _fails(["eval", "cifar100_resnet20", "--dataset", str(folder), "--checkpoint", str(tmp_path / "empty.pt")],
                 f"{tmp_path / 'empty.pt'} is empty (0 bytes)")
    assert err.count("\n") == 1


def test_a_resumed_training_checkpoint_that_is_empty_is_named(tmp_path):
    from sinf_core.errors import SinfError
    from sinf_core.train import _load_checkpoint

    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(SinfError, match=r"cannot resume from .*last.pt: .*last.pt is empty \(0 bytes\)\. Delete it"):
        _load_checkpoint(tmp_path / "last.pt")


def test_no_message_in_the_code_advises_weights_only_false():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("sinf_core/**/*.py"), *root.glob("app/**/*.py")]:
        assert "weights_only=False" not in path.read_text(), path


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (RGB) but holds no pixel data: enough for Pillow to read its size."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height,expected", [
    (10_000, 9_000, "image is 90.0 MP (10000x9000): too large (the limit is 80 MP)"),  # past SINF's limit
    (20_000, 10_000, "image is 200.0 MP: too large (the limit is 80 MP)"),  # past Pillow's own limit too
])
def test_too_large_images_state_the_one_limit(width, height, expected):
    import warnings

    from sinf_core.data.images import MAX_PIXELS, load_image_rgb, too_large_message
    from sinf_core.errors import SinfError

    with warnings.catch_warnings(), pytest.raises(SinfError) as e:
        warnings.simplefilter("ignore")
        load_image_rgb(_png_header(width, height), 32)
    assert str(e.value) == expected
    assert MAX_PIXELS == 80_000_000 and too_large_message(MAX_PIXELS + 1).endswith("(the limit is 80 MP)")


def test_the_pixel_limit_is_stated_in_one_place():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("sinf_core/**/*.py"), *root.glob("app/**/*.py")]:
        text = path.read_text()
        assert not re.search(r"\d+\s*(MP|megapixels?)\b", text), path  # limits are quoted only via MAX_PIXELS
        if path.name != "images.py":
            assert "MAX_IMAGE_PIXELS" not in text, path


def test_bad_device_and_missing_folders_are_one_line(tmp_path):
    _fails(["eval", "cifar100_resnet20", "--device", "foo"], "unknown device 'foo'; use cpu, cuda, cuda:N or auto")
    _fails(["eval", "cifar100_resnet20", "--dataset", str(tmp_path / "nothing")],
           f"image folder not found: {tmp_path / 'nothing'}")
    (tmp_path / "afile").write_text("x")
    _fails(["eval", "cifar100_resnet20", "--dataset", str(tmp_path / "afile")], f"data set {tmp_path / 'afile'} is a file")
    _fails(["eval", "cifar100_resnet20", "--data-dir", str(tmp_path / "nothing")],
           f"CIFAR-100 not found in {tmp_path / 'nothing'}", "--download")
    _fails(["eval", "cifar100_resnet20", "--checkpoint", str(tmp_path / "none.pt"), "--dataset",
            str(_image_folder(tmp_path / "pets", {"train": ["a"], "test": ["a"]}))],
           f"checkpoint not found: {tmp_path / 'none.pt'}")


def test_file_system_errors_are_one_line(tmp_path, monkeypatch):
    import sinf_core.commands.models as models_cmd
    from sinf_core.io import write_json

    def boom(args):
        write_json(tmp_path / "afile" / "out.json", {})

    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(models_cmd, "run", boom)
    _fails(["models"], f"cannot use {tmp_path / 'afile'}: a file is in the way of a folder")
    from sinf_core.errors import SinfError

    with pytest.raises(SinfError, match=f"cannot write {tmp_path}: it is a folder; give a file name"):
        write_json(tmp_path, {})


def test_eval_of_an_empty_split_says_so(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = list(range(100))  # one image per class: a 10 % held-out calibration split is empty
    for split in ("train", "test"):
        obj = {"data": np.zeros((100, 3072), dtype=np.uint8), "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]}
        (folder / split).write_bytes(pickle.dumps(obj))
    meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    _fails(["eval", "cifar100_resnet20", "--data-dir", str(tmp_path), "--checkpoint", str(_checkpoint(tmp_path)),
            "--split", "calib", "--json"], "the calib split is empty (heldout protocol, 100 train and 100 test images")
