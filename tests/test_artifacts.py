"""``sinf_core.artifacts``: the one module naming every file SINF writes, the score-tensor key and the
one way a model name becomes a path. Fast: no training, the shipped bundles only read."""

from __future__ import annotations

import ast
import json
import re

import pytest
import torch

from conftest import REPO, make_tiny_dataset, make_tiny_resnet
from sinf_core import artifacts as A

SHIPPED = sorted((REPO / "assets" / "bundles").glob("*/manifest.json"))
WINDOWS_BAD = set('<>:"/\\|?*')
SPECS = ["torchvision:resnet18", "torchvision:resnet18@10", "torchvision:resnet50@100", "timm:resnet18",
         "timm:vit_base_patch16_224.augreg_in21k@10", "timm:convnext-tiny", "pkg.mod:make", "pkg.mod:make@3",
         "pkg:mod.make", "my_pkg.nets:small", "torchvision.models:resnet18", "timm.models:resnet18"]


# ---------------------------------------------------------------------------------------- bundle files
@pytest.mark.parametrize("manifest", SHIPPED, ids=lambda p: p.parent.name)
def test_the_shipped_bundles_hold_only_files_the_module_names(manifest):
    m = json.loads(manifest.read_text())
    assert m["steps"], manifest
    for step, rec in m["steps"].items():
        for fname in rec["files"]:
            assert A.step_of(fname) == step, f"{manifest.parent.name}: {fname} of step {step} is not named in artifacts"
        for fname in A.STEP_FILES.get(step, ()):
            assert fname in rec["files"], f"{manifest.parent.name}: step {step} lacks {fname}"
    assert A.step_of(A.MANIFEST) is None and A.step_of("notes.txt") is None and A.step_of("scores_.safetensors") is None


def test_the_shipped_bundles_open_and_verify_under_the_names():
    from sinf_core.bundle import Bundle, load_scores, score_methods

    assert SHIPPED, "no shipped bundle under assets/bundles"
    b = Bundle.open(SHIPPED[0].parent, verify=True)
    methods = score_methods(b)
    assert methods and all(A.scores_file(m) in b.files_of("scores") for m in methods)
    scores = load_scores(b, sorted(methods)[0])
    assert scores and all(isinstance(c, int) for c in scores)
    assert b.json(A.STUDIO)["output_taps"] and all(A.studio_calib_file(t) in b.files_of("studio")
                                                   for t in b.json(A.STUDIO)["output_taps"])


def test_the_names_are_the_shipped_ones():
    assert (A.BENCH, A.GRID, A.BN, A.DATA, A.CONFIG, A.MANIFEST) == (
        "bench.json", "grid.json", "bn.json", "data.json", "config.json", "manifest.json")
    assert (A.STATS, A.STATS_CALIB, A.STUDIO, A.STUDIO_HEADS) == (
        "stats.safetensors", "stats_calib.safetensors", "studio.json", "studio_heads.safetensors")
    assert A.scores_file("dcs_lda") == "scores_dcs_lda.safetensors" and A.scores_method("scores_dcs_lda.safetensors") == "dcs_lda"
    assert A.studio_calib_file("layer3.2") == "studio_calib_layer3.2.safetensors"
    assert A.file_pair(A.ROUTER) == (A.ROUTER_JSON, A.ROUTER_TENSORS) == ("router.json", "router.safetensors")
    assert A.file_pair(A.EXIT) == ("exit.json", "exit.safetensors")


# ---------------------------------------------------------------------------------------- score keys
@pytest.mark.parametrize("cluster, layer", [(0, "layer1.0.conv1"), (19, "features.24"), (None, "conv1"),
                                            ("vehicles 1", "layer3.2.conv2"), (-1, "a.b")])
def test_score_keys_round_trip(cluster, layer):
    key = A.score_key(cluster, layer)
    assert A.parse_score_key(key) == (cluster, layer)


def test_score_keys_are_the_shipped_bundles_format():
    from safetensors import safe_open

    path = REPO / "assets" / "bundles" / "cifar100_resnet56" / A.scores_file("dcs")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert keys and all(isinstance(A.parse_score_key(k)[0], int) for k in keys)
    assert A.score_key(*A.parse_score_key(keys[0])) == keys[0]
    for bad in ("0/layer1", "nokey", "3|"):
        with pytest.raises(ValueError):
            A.parse_score_key(bad)


def test_the_score_cache_uses_the_bundle_key_and_a_new_format_version():
    from sinf_core.scores import cache

    table = {None: {"l1": torch.arange(3.0)}, 2: {"l1": torch.ones(2)}}
    t = cache.table_to_tensors(table)
    assert set(t) == {A.score_key(None, "l1"), A.score_key(2, "l1")} == {"all|l1", "2|l1"}
    back = cache.tensors_to_table(t, [None, 2], ["l1"])
    assert all(torch.equal(back[k]["l1"], table[k]["l1"]) for k in table)
    assert cache.CACHE_FORMAT >= 2  # the '/' keys of format 1 are recomputed, never misread


# ---------------------------------------------------------------------------------------- names on disk
def test_folder_names_of_specs_are_windows_safe_and_distinct():
    from sinf_core.models import MODELS
    from sinf_core.models.specs import folder_name, parse_spec

    assert folder_name is A.folder_name  # one function
    names = {}
    for spec in SPECS:
        name = folder_name(spec)
        assert name and not (set(name) & WINDOWS_BAD) and name == name.strip(". "), (spec, name)
        names.setdefault(parse_spec(spec).base, set()).add(name)
    assert all(len(v) == 1 for v in names.values())  # every spelling of one spec: one folder
    flat = [next(iter(v)) for v in names.values()]
    assert len(set(flat)) == len(flat), flat  # distinct specs: distinct folders
    assert all(folder_name(m) == m for m in MODELS)  # registered names unchanged (the shipped bundles' folders)
    assert set(flat).isdisjoint(MODELS)


@pytest.mark.parametrize("text, want", [("a:b", "a-b"), ('x<>:"/\\|?*y', "x---------y"), ("../a b", "a-b"),
                                        ("con", "_con"), ("NUL.json", "_NUL.json"), ("", "_"), ("ok_1.2-3", "ok_1.2-3")])
def test_safe_name(text, want):
    assert A.safe_name(text) == want
    assert A.safe_name(want) == want


def test_caches_and_reports_of_a_spec_have_no_colon(monkeypatch, tmp_path):
    from sinf_core import report
    from sinf_core.pipeline import default_bundle_dir
    from sinf_core.stats import stats_cache_key, stats_cache_path

    spec = "torchvision:resnet18@10"
    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path))
    paths = [default_bundle_dir(spec, seed_from_assets=False), tmp_path / A.model_cache_folder(spec, "ab" * 32),
             stats_cache_path(stats_cache_key(spec, make_tiny_resnet(), make_tiny_dataset(2), "fit", None, False, 0))]
    for p in paths:
        rel = p.relative_to(tmp_path)
        assert not (set(str(rel).replace("/", "")) & WINDOWS_BAD), p
    for name in (A.report_file("bench", spec, "md"), report.export_name({"model": spec}, "report", "html"),
                 A.onnx_file("cluster_03"), A.studio_calib_file("layer:3"), A.scores_file("a/b")):
        assert not (set(name) & WINDOWS_BAD), name
    assert A.report_file("bench", spec, "md") == "bench_torchvision-resnet18.md"


# ---------------------------------------------------------------------------------------- no literal elsewhere
_FILE = re.compile(r"[\w.\-]+\.(json|safetensors)")
_TAIL = re.compile(r"[\w.\-/]*\.(json|safetensors)")  # the end of an f-string building a file name
# literals that are not SINF's file names: shipped model weights named in the registry
ALLOWED = {"cifar100_vgg16_bn_sinf.safetensors", "cifar100_resnet18_tv.safetensors"}


def test_no_module_but_artifacts_spells_a_file_name():
    bad = []
    for package in ("sinf_core", "app"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "sinf_core" / "artifacts.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        _FILE.fullmatch(node.value) and node.value not in ALLOWED:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
                if isinstance(node, ast.JoinedStr):  # f"scores_{m}.safetensors", f"{name}.json"
                    tail = node.values[-1] if node.values else None
                    if isinstance(tail, ast.Constant) and _TAIL.fullmatch(str(tail.value)):
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno} f-string ending {tail.value!r}")
    assert not bad, "name these files in sinf_core/artifacts.py:\n  " + "\n  ".join(bad)
