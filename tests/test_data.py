import io
import json
import pickle

import numpy as np
import pytest
import torch

from sinf_core.data import Hierarchy, load_dataset, make_splits, stratified_split
from sinf_core.data.cifar import load_cifar100_split, safe_unpickle
from sinf_core.data.core import augment_crop_flip, normalise
from sinf_core.data.images import load_image_rgb
from sinf_core.errors import SinfError


def _write_fake_cifar(folder, n=40):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    fine = np.arange(n) % 4
    coarse = fine // 2
    for split in ("train", "test"):
        obj = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "fine_labels": fine.tolist(),
               "coarse_labels": coarse.tolist(), "batch_label": split}
        (folder / split).write_bytes(pickle.dumps(obj, protocol=4))
    meta = {"fine_label_names": ["a", "b", "c", "d"], "coarse_label_names": ["AB", "CD"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))


def test_fake_cifar_roundtrip(tmp_path):
    _write_fake_cifar(tmp_path / "cifar-100-python")
    ds = load_dataset("cifar100", "train", tmp_path)
    assert ds.images.shape == (40, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.hierarchy.cluster_names == ("AB", "CD")
    assert ds.hierarchy.members(1) == [2, 3]
    assert ds.cluster_labels.tolist() == (np.arange(40) % 4 // 2).tolist()
    # channel-planar rows: the first 1024 bytes are the red plane
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())["data"]
    assert np.array_equal(ds.images[3, 0].numpy().ravel(), raw[3, :1024])


def test_unpickler_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(SinfError, match="refusing to unpickle builtins.print"):
        safe_unpickle(pickle.dumps({"data": Evil()}))
    folder = tmp_path / "cifar-100-python"
    _write_fake_cifar(folder)
    (folder / "train").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(SinfError, match="refusing"):
        load_cifar100_split(folder, "train")


def test_truncated_pickle_is_clear(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _write_fake_cifar(folder)
    (folder / "test").write_bytes((folder / "test").read_bytes()[:100])
    with pytest.raises(SinfError, match="not a valid CIFAR pickle"):
        load_cifar100_split(folder, "test")


def test_missing_data_names_variable_and_download(tmp_path):
    with pytest.raises(SinfError) as e:
        load_dataset("cifar100", "train", tmp_path / "nothing")
    assert "SINF_DATA_DIR" in str(e.value) and "--download" in str(e.value)


def test_hierarchy_json_must_cover_every_class():
    names = ["a", "b", "c"]
    h = Hierarchy.from_json({"clusters": {"x": ["a", "c"], "y": ["b"]}}, names)
    assert h.cluster_of_class == (0, 1, 0)
    with pytest.raises(SinfError, match="does not cover every class"):
        Hierarchy.from_json({"clusters": {"x": ["a"]}}, names)
    with pytest.raises(SinfError, match="unknown class"):
        Hierarchy.from_json({"clusters": {"x": ["a", "b", "c", "zz"]}}, names)
    with pytest.raises(SinfError, match="more than one cluster"):
        Hierarchy.from_json({"clusters": {"x": ["a", "b"], "y": ["b", "c"]}}, names)


def test_stratified_split_is_fixed_and_stratified():
    labels = np.repeat(np.arange(10), 100)
    rest, part = stratified_split(labels, 0.5, seed=0)
    rest2, part2 = stratified_split(labels, 0.5, seed=0)
    assert np.array_equal(part, part2) and len(np.intersect1d(rest, part)) == 0
    assert (np.bincount(labels[part]) == 50).all()
    sp = make_splits(np.repeat(np.arange(10), 50), labels, "pretrained")
    assert len(sp.calib) == len(sp.report) == 500 and not np.intersect1d(sp.calib, sp.report).size
    sp = make_splits(np.repeat(np.arange(10), 50), labels, "heldout")
    assert len(sp.calib) == 50 and len(sp.fit) == 450 and len(sp.report) == 1000
    with pytest.raises(SinfError):
        make_splits(labels, labels, "nope")


def test_augment_keeps_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    y = augment_crop_flip(x, g, pad=0)
    for i in range(2):  # pad 0: each output is the image or its mirror
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    z = augment_crop_flip(x, g, pad=4)
    assert z.shape == x.shape


def test_normalise_matches_manual():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    n = normalise(x, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    ref = (x.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(n, ref, atol=1e-6)


def _png(mode, size, color):
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode,color", [("L", 128), ("RGBA", (255, 0, 0, 0)), ("RGB", (0, 0, 255)), ("P", 3)])
def test_odd_images_decode(mode, color):
    out = load_image_rgb(_png(mode, (1, 1), color), 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    if mode == "RGBA":  # fully transparent red composites to white
        assert int(out.min()) == 255


def test_bad_images_are_clear():
    with pytest.raises(SinfError, match="not an image"):
        load_image_rgb(b"hello world", 32)
    with pytest.raises(SinfError):
        load_image_rgb(_png("RGB", (64, 64), (1, 2, 3))[:60], 32)
    with pytest.raises(SinfError, match="empty"):
        load_image_rgb(b"", 32)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, col in [("cat", (255, 0, 0)), ("dog", (0, 255, 0)), ("car", (0, 0, 255))]:
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40 + i, 30), col).save(d / f"{i}.png")
        (tmp_path / split / "cat" / "broken.png").write_bytes(b"nope")
    (tmp_path / "hierarchy.json").write_text(json.dumps({"clusters": {"animals": ["cat", "dog"], "vehicles": ["car"]}}))
    tr = load_dataset(str(tmp_path), "train")
    te = load_dataset(str(tmp_path), "test")
    assert tr.images.shape == (9, 3, 32, 32) and tr.class_names == ("car", "cat", "dog")
    assert tr.hierarchy.cluster_of_class == (1, 0, 0)
    assert te.mean == tr.mean  # test uses train statistics
    assert any("broken.png" in s for s in tr.meta["skipped"])
    assert abs(tr.mean[0] - 1 / 3) < 1e-3


@pytest.mark.realdata
def test_real_cifar100_shapes(real_env):
    tr = load_dataset("cifar100", "train")
    te = load_dataset("cifar100", "test")
    assert (len(tr), len(te)) == (50_000, 10_000)
    assert tr.num_classes == 100 and tr.hierarchy.num_clusters == 20
    assert all(len(tr.hierarchy.members(m)) == 5 for m in range(20))
    assert tr.class_names[0] == "apple" and tr.hierarchy.cluster_names[19] == "vehicles_2"
    assert np.bincount(te.labels.numpy()).tolist() == [100] * 100
