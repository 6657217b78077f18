import json

import pytest
import torch

from conftest import make_tiny_resnet
from sinf_core.bundle import MANIFEST, Bundle, state_dict_sha256
from sinf_core.errors import SinfError


def _bundle(tmp_path):
    return Bundle.open_or_create(tmp_path / "b", "tiny", state_dict_sha256(make_tiny_resnet()))


def test_step_is_cached_by_inputs(tmp_path):
    b = _bundle(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a.json": {"x": len(calls)}, "a.safetensors": {"t": torch.arange(3.0)}}

    _, fresh = b.step("a", {"q": 20}, compute)
    _, again = b.step("a", {"q": 20}, compute)
    assert fresh and not again and len(calls) == 1
    _, changed = b.step("a", {"q": 30}, compute)
    assert changed and b.json("a.json") == {"x": 2}
    reopened = Bundle.open(tmp_path / "b", model="tiny")
    assert torch.equal(reopened.tensors("a.safetensors")["t"], torch.arange(3.0))


def test_corrupted_partial_and_foreign_bundles_refused(tmp_path):
    b = _bundle(tmp_path)
    b.step("a", {}, lambda: {"a.json": {"x": 1}})
    (tmp_path / "b" / "a.json").write_text('{"x": 999}')
    with pytest.raises(SinfError, match="partial or corrupted"):
        Bundle.open(tmp_path / "b")
    # a resumed build drops the damaged step and recomputes it
    b2 = Bundle.open_or_create(tmp_path / "b", "tiny", state_dict_sha256(make_tiny_resnet()))
    assert not b2.has("a")
    with pytest.raises(SinfError, match="not 'other'"):
        Bundle.open(tmp_path / "b", model="other")
    with pytest.raises(SinfError, match="different weights"):
        Bundle.open_or_create(tmp_path / "b", "tiny", "0" * 64)
    m = json.loads((tmp_path / "b" / MANIFEST).read_text())
    m["format_version"] = 99
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SinfError, match="format version 99"):
        Bundle.open(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text("{not json")
    with pytest.raises(SinfError, match="corrupted"):
        Bundle.open(tmp_path / "b")
    with pytest.raises(SinfError, match="no SINF bundle"):
        Bundle.open(tmp_path / "nowhere")


def test_weights_checksum_changes_with_weights():
    a, b = make_tiny_resnet(seed=0), make_tiny_resnet(seed=0)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


def test_atomic_write_keeps_the_old_file_on_failure_and_uses_normal_permissions(tmp_path):
    import os

    import pytest

    from sinf_core.io import atomic_write, write_json

    target = write_json(tmp_path / "a.json", {"v": 1})
    mask = os.umask(0o022)
    try:
        write_json(target, {"v": 2})
        assert (target.stat().st_mode & 0o777) == 0o644
        from safetensors.torch import save_file

        st = atomic_write(tmp_path.parent / f"{tmp_path.name}-st" / "t.safetensors", lambda p: save_file({"x": torch.zeros(2)}, str(p)))
        assert (st.stat().st_mode & 0o777) == 0o644  # a writer that recreates the file gets them too

        def fail(p):
            p.write_text("half")
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError):
            atomic_write(target, fail)
    finally:
        os.umask(mask)
    assert target.read_text().strip() == '{\n  "v": 2\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temp file left behind


def test_default_bundle_is_seeded_from_assets_once(tmp_path, monkeypatch):
    from sinf_core.bundle import Bundle
    from sinf_core.models import registry
    from sinf_core.pipeline import default_bundle_dir

    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "ASSETS_DIR", tmp_path / "assets")
    assert not (default_bundle_dir("tiny") / "manifest.json").exists()  # nothing shipped: the plain cache path
    shipped = _bundle(tmp_path)
    shipped.step("data", {"a": 1}, lambda: {"data.json": {"x": 1}})
    (tmp_path / "assets" / "bundles").mkdir(parents=True)
    shipped.root.rename(tmp_path / "assets" / "bundles" / "tiny")
    target = default_bundle_dir("tiny")
    assert target == tmp_path / "cache" / "bundles" / "tiny"
    b = Bundle.open(target, model="tiny")  # checksums verified
    assert b.json("data.json") == {"x": 1}
    b.step("more", {}, lambda: {"more.json": {"y": 2}})  # writes go to the cache copy, never to assets/
    assert not (tmp_path / "assets" / "bundles" / "tiny" / "more.json").exists()
    assert default_bundle_dir("tiny") == target and (target / "more.json").is_file()  # not re-seeded


def test_a_recomputed_step_removes_the_files_it_no_longer_writes(tmp_path):
    b = _bundle(tmp_path)
    b.step("studio", {"v": 1}, lambda: {"s_tapA.json": {"a": 1}, "s_tapB.json": {"b": 1}, "shared.json": {"c": 1}})
    b.step("other", {}, lambda: {"shared.json": {"c": 1}})
    b.step("studio", {"v": 2}, lambda: {"s_tapA.json": {"a": 2}})
    root = tmp_path / "b"
    assert not (root / "s_tapB.json").exists()  # left behind, an app could have read a stale file
    assert (root / "shared.json").is_file()  # still recorded by another step
    assert b.files_of("studio") == ["s_tapA.json"] and b.json("s_tapA.json") == {"a": 2}
    Bundle.open(root)  # checksums still verify
