"""The speed-up report: the validating reader of benchmark files (``report.load_bench``), which model /
backend / precision a benchmark belongs to, the rounded CSV export, and the report page labelling a
benchmark of another model than the app's (titles and exports named after the benchmark's own model)."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from sinf_core import report
from sinf_core.errors import SinfError

REPO = Path(__file__).resolve().parents[1]
VGG = REPO / "docs" / "bench_cifar100_vgg16_bn_sinf.json"
VGG_BF16 = REPO / "docs" / "bench_cifar100_vgg16_bn_sinf_bf16.json"
RESNET_BUNDLE = REPO / "assets" / "bundles" / "cifar100_resnet56"
# a fixed benchmark (the shipped ResNet-56 bundle's of session 6) for the exact-number tests: the shipped
# bundle is rebuilt from time to time, these figures are not
RESNET_BENCH = REPO / "tests" / "data" / "bench_cifar100_resnet56_session6.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def vgg() -> dict:
    return load(VGG)


@pytest.fixture(scope="module")
def resnet() -> dict:
    return load(RESNET_BENCH)


# ------------------------------------------------------------------------------- the reader
def test_load_bench_reads_the_shipped_benchmarks(vgg, resnet):
    for bench in (vgg, resnet, load(VGG_BF16)):
        before = copy.deepcopy(bench)
        got = report.load_bench(bench)
        assert got == bench and bench == before  # returned as is, not changed
    rows = {r["mode"]: r for r in report.bench_table(report.load_bench(vgg))}
    assert list(rows) == ["base", "sinf", "exit", "cascade", "static"]
    # against the numbers of the JSON (paired-run ratios as recorded; differences and FLOPs ratios derived)
    assert rows["sinf"]["top1"] == 64.92 and rows["sinf"]["delta_top1"] == pytest.approx(64.92 - 66.3)
    assert rows["cascade"]["throughput_ratio"] == 1.4311 and rows["exit"]["latency_speedup"] == 1.3287
    assert rows["cascade"]["flops_ratio"] == pytest.approx(117813168.64 / 157796352)
    # the table the page shows is the one published in docs/ from the same file
    published = [line for line in VGG.with_suffix(".md").read_text().splitlines()
                 if line.startswith("| ") and line.split(" | ")[0][2:] in rows]
    shown = ["| " + " | ".join(report.fmt(k, r.get(k)) for k, _ in report.COLUMNS) + " |" for r in rows.values()]
    assert shown == published


def test_a_mode_that_was_not_measured_is_valid(vgg):
    bench = {**vgg, "exit": {"top1": None, "latency_ms_bs1": None, "throughput_ips": None, "flops": None,
                             "params": None, "note": "no operating point within the budget"}}
    rows = {r["mode"]: r for r in report.bench_table(report.load_bench(bench))}
    assert rows["exit"]["top1"] is None and rows["exit"]["throughput_ratio"] is None
    modes_block = {"format": "sinf-bench", "model": "m", "modes": {"base": vgg["base"], "sinf": vgg["sinf"]}}
    assert [r["mode"] for r in report.bench_table(report.load_bench(modes_block))] == ["base", "sinf"]


def _with(bench: dict, path: tuple, value) -> dict:
    """A deep copy of ``bench`` with ``path`` set to ``value`` (or removed when value is ``...``)."""
    out = copy.deepcopy(bench)
    node = out
    for k in path[:-1]:
        node = node[k]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


BAD = [
    (("sinf", "top1"), "NaN-ish", "mode 'sinf': top1 is 'NaN-ish', not a finite number"),
    (("sinf", "throughput_ips"), float("nan"), "mode 'sinf': throughput_ips is nan, not a finite number"),
    (("exit", "flops"), float("inf"), "mode 'exit': flops is inf, not a finite number"),
    (("cascade", "top1"), True, "mode 'cascade': top1 is True, not a finite number"),
    (("static", "throughput_ratio"), "1.4x", "mode 'static': throughput_ratio is '1.4x', not a finite number"),
    (("exit", "top1"), ..., "mode 'exit' has no 'top1'"),
    (("base", "throughput_ips"), None, "the base mode's throughput_ips is null; the report compares every mode with it"),
    (("base",), ..., "the benchmark has no 'base' mode with top1 / latency_ms_bs1 / throughput_ips / flops / params"),
    (("base",), "fast", "mode 'base' must be an object, not a string"),
    (("format",), ..., "the benchmark has no 'format' marker (expected 'sinf-bench', as `sinf bench --json` writes)"),
    (("format",), "sinf-grid", "the benchmark's format is 'sinf-grid', expected 'sinf-bench' or 'sinf-bench-runtime'"),
    (("version",), "1", "the benchmark's version is '1', not an integer"),
    (("model",), ..., "the benchmark does not name its model ('model' is None, expected a non-empty string)"),
    (("model",), 56, "the benchmark does not name its model ('model' is 56, expected a non-empty string)"),
    (("model",), " ", "the benchmark does not name its model ('model' is ' ', expected a non-empty string)"),
    (("sweep", "pareto", "sinf", 0, "top1"), "x", "operating point of mode 'sinf': top1 is 'x', not a finite number"),
    (("sweep",), [], "the benchmark's 'sweep' must be an object, not a list"),
    (("target", "throughput_ratio"), "fast", "target: throughput_ratio is 'fast', not a finite number"),
    (("target",), 1.3, "the benchmark's 'target' must be an object, not a number"),
    (("hardware",), 3, "the benchmark's 'hardware' must be an object or a string, not a number"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[m for _, _, m in BAD])
def test_load_bench_rejects_bad_values_with_a_clear_message(vgg, path, value, message):
    with pytest.raises(SinfError) as exc:
        report.load_bench(_with(vgg, path, value))
    assert str(exc.value) == message


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "a benchmark must be a JSON object, not a list"),
    ("bench", "a benchmark must be a JSON object, not a string"),
    (None, "a benchmark must be a JSON object, not null"),
    (7, "a benchmark must be a JSON object, not a number"),
    ({"format": "sinf-bench", "model": "m", "modes": [1]}, "the benchmark's 'modes' must be an object, not a list"),
])
def test_load_bench_rejects_what_is_not_a_benchmark(obj, message):
    with pytest.raises(SinfError) as exc:
        report.load_bench(obj)
    assert str(exc.value) == message


# ------------------------------------------------------------------- model, backend, precision
def test_bench_info_names_model_backend_and_precision(vgg):
    assert report.bench_info(vgg) == {"model": "cifar100_vgg16_bn_sinf", "dataset": "cifar100", "backend": "torch",
                                      "precision": "float32", "device": "cpu", "channels_last": True, "fold_bn": True}
    assert report.bench_info(load(VGG_BF16))["precision"] == "bf16"
    assert report.info_text(vgg) == ("Benchmark of cifar100_vgg16_bn_sinf on cifar100: backend torch, precision "
                                     "float32, device cpu, channels_last, BatchNorm folded into the convolutions")
    # a backend / precision key, at the top level or in the hardware, is shown when present
    future = {**vgg, "backend": "onnxruntime", "hardware": {**vgg["hardware"], "precision": "int8", "fold_bn": False}}
    info = report.bench_info(future)
    assert (info["backend"], info["precision"], info["fold_bn"]) == ("onnxruntime", "int8", False)
    assert "backend onnxruntime, precision int8" in report.info_text(future)
    assert report.bench_info({"model": "m"}) == {"model": "m", "dataset": None, "backend": "torch",
                                                 "precision": "float32", "device": None, "channels_last": None,
                                                 "fold_bn": None}


def test_title_and_exports_use_the_benchmarks_own_model(vgg):
    assert report.report_title(vgg) == "SINF speed-up report: cifar100_vgg16_bn_sinf"
    assert report.model_warning(vgg, "cifar100_vgg16_bn_sinf") is None
    assert report.model_warning(vgg, "cifar100_resnet56") == (
        "This benchmark is of cifar100_vgg16_bn_sinf, not of the model selected (cifar100_resnet56). "
        "The report and its exports are titled with cifar100_vgg16_bn_sinf.")
    assert report.export_name(vgg, "report", "html") == "sinf_report_cifar100_vgg16_bn_sinf.html"
    assert report.export_name({**vgg, "model": "../a b"}, "bench", "csv") == "sinf_bench_a-b.csv"
    assert report.export_name({**vgg, "model": "torchvision:resnet18@10"}, "report", "html") == \
        "sinf_report_torchvision-resnet18.html"  # artifacts.folder_name, as `sinf report` names its files
    md = report.to_markdown(vgg)
    assert md.startswith("# SINF speed-up report: cifar100_vgg16_bn_sinf\n")
    assert "Benchmark of cifar100_vgg16_bn_sinf on cifar100: backend torch, precision float32" in md
    assert json.loads(report.to_json(vgg, {"model": "x"}))["benchmark"]["model"] == "cifar100_vgg16_bn_sinf"


def test_html_report_is_titled_with_the_benchmarks_model(vgg):
    page = report.to_html(vgg)
    assert "<title>SINF speed-up report: cifar100_vgg16_bn_sinf</title>" in page
    assert "<h1>SINF speed-up report: cifar100_vgg16_bn_sinf</h1>" in page and "cifar100_resnet56" not in page
    assert "backend torch, precision float32" in page


# --------------------------------------------------------------------------------- CSV export
RESNET_CSV = """mode,top1,delta_top1,latency_ms_bs1,latency_speedup,throughput_ips,throughput_ratio,flops,flops_ratio,params
base,71.6,0.0,4.6106,1.0,1014.8,1.0,251507200,1.0,861620
sinf,70.56,-1.04,5.151,0.8951,961.5,0.9417,248397997,0.9876,2391212
exit,70.9,-0.7,4.768,0.967,962.8,0.9749,236411546,0.94,905112
cascade,70.76,-0.84,4.7894,0.9627,927.9,0.9514,236589614,0.9407,3173264
static,55.06,-16.54,4.4495,1.0362,1037.3,1.0512,234992128,0.9343,732372
"""


def test_csv_export_is_rounded(resnet):
    text = report.to_csv(resnet)
    assert text == RESNET_CSV  # no -1.039999999999992, no 248397997.4912
    for row in csv.DictReader(io.StringIO(text)):
        for key, value in row.items():
            if key != "mode":
                decimals = value.partition(".")[2]
                assert len(decimals) <= report.DECIMALS[key], (key, value)


def test_round_value():
    assert report.round_value("delta_top1", -1.039999999999992) == -1.04
    assert report.round_value("throughput_ratio", 0.94169999999) == 0.9417
    assert report.round_value("flops", 248397997.4912) == 248397997 and isinstance(report.round_value("params", 5.0), int)
    assert math.copysign(1.0, report.round_value("delta_top1", -0.000001)) == 1.0  # no "-0.0"
    assert report.round_value("delta_top1", None) is None and report.round_value("mode", "sinf") == "sinf"
    table = json.loads(report.to_json(load(RESNET_BENCH)))["table"]
    assert [r["delta_top1"] for r in table] == [0.0, -1.04, -0.7, -0.84, -16.54]


# ------------------------------------------------------------------------------------- the page
@pytest.fixture
def saved_files(monkeypatch):
    """(file name, mime type, bytes) of every file the page hands to a download button."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    saved = []
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        saved.append((filename, mimetype, path_or_data))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return saved


def open_report(monkeypatch, bundle: Path, model: str = "cifar100_resnet56"):
    from streamlit.testing.v1 import AppTest

    if str(REPO) not in sys.path:
        monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("SINF_APP_MODEL", model)
    monkeypatch.setenv("SINF_APP_BUNDLE", str(bundle))
    at = AppTest.from_file(str(REPO / "app" / "views" / "report.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at, name: str, data: bytes):
    at.file_uploader(key="bench_upload").set_value((name, data, "application/json")).run()
    assert not at.exception, [e.value for e in at.exception]  # never a traceback box
    return at


def test_page_labels_a_benchmark_of_another_model(monkeypatch, tmp_path, saved_files):
    at = open_report(monkeypatch, tmp_path / "no_bundle")
    assert not at.dataframe and "sinf bench cifar100_resnet56 --json" in "\n".join(c.value for c in at.code)
    upload(at, "vgg.json", VGG.read_bytes())
    assert [s.value for s in at.subheader][0] == "SINF speed-up report: cifar100_vgg16_bn_sinf"
    assert [w.value for w in at.warning][0] == (
        "This benchmark is of cifar100_vgg16_bn_sinf, not of the model selected (cifar100_resnet56). "
        "The report and its exports are titled with cifar100_vgg16_bn_sinf.")
    assert "Benchmark of cifar100_vgg16_bn_sinf on cifar100: backend torch, precision float32" in at.caption[0].value
    assert not at.error
    table = at.dataframe[0].value
    assert list(table["throughput vs base (x)"]) == ["1.00x", "1.05x", "1.38x", "1.43x", "1.43x"]
    files = {name: (mime, data) for name, mime, data in saved_files}
    assert set(files) >= {"sinf_bench_cifar100_vgg16_bn_sinf.csv", "sinf_bench_cifar100_vgg16_bn_sinf.json"}
    assert not any("resnet56" in (name or "") for name in files)
    assert files["sinf_bench_cifar100_vgg16_bn_sinf.csv"][1].decode() == report.to_csv(load(VGG))
    exported = json.loads(files["sinf_bench_cifar100_vgg16_bn_sinf.json"][1])
    assert exported["model"] == "cifar100_vgg16_bn_sinf"
    # the table shows full column names: every column is at least as wide as its header
    config = at.dataframe[0].proto.columns
    widths = json.loads(config)
    assert set(widths) - {"_index"} == set(table.columns)
    assert all(widths[c]["width"] >= 8 * len(c) for c in table.columns)


def test_page_shows_the_bundles_own_benchmark_without_a_warning(monkeypatch, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(RESNET_BUNDLE, bundle)
    at = open_report(monkeypatch, bundle)
    assert [s.value for s in at.subheader][0] == "SINF speed-up report: cifar100_resnet56"
    assert not [w.value for w in at.warning if "not of the model selected" in w.value] and not at.error
    assert "From the bundle" in at.caption[0].value


@pytest.mark.parametrize("data, message", [
    (json.dumps({**load(VGG), "sinf": {**load(VGG)["sinf"], "top1": "NaN-ish"}}).encode(),
     "bad.json is not a SINF benchmark: mode 'sinf': top1 is 'NaN-ish', not a finite number"),
    (json.dumps({**load(VGG), "exit": {**load(VGG)["exit"], "throughput_ips": float("nan")}}).encode(),
     "bad.json is not a SINF benchmark: mode 'exit': throughput_ips is nan, not a finite number"),
    (b"[1, 2, 3]", "bad.json is not a SINF benchmark: a benchmark must be a JSON object, not a list"),
    (json.dumps({**load(VGG), "format": "sinf-grid"}).encode(),
     "bad.json is not a SINF benchmark: the benchmark's format is 'sinf-grid', expected 'sinf-bench' or 'sinf-bench-runtime'"),
    (b"\xff\xfe", "bad.json is not a JSON file"),
], ids=["string top1", "NaN throughput", "list", "format", "not utf-8"])
def test_page_shows_bad_files_as_an_error_box(monkeypatch, tmp_path, data, message):
    at = upload(open_report(monkeypatch, tmp_path / "no_bundle"), "bad.json", data)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert not at.dataframe  # nothing half-drawn


def test_page_reports_a_bad_bundle_benchmark(monkeypatch, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(RESNET_BUNDLE, bundle)
    bench = load(bundle / "bench.json")
    bench["base"]["top1"] = "high"
    # a bench.json edited after the build: the bundle's checksums catch it, the page says so
    (bundle / "bench.json").write_text(json.dumps(bench))
    at = open_report(monkeypatch, bundle)
    assert "partial or corrupted" in at.warning[0].value and not at.dataframe
    # a bench.json that passes the checksums but holds a bad value: an error box, no traceback
    monkeypatch.syspath_prepend(str(REPO))
    from app import loaders

    monkeypatch.setattr(loaders, "bench", lambda src: bench)
    at = open_report(monkeypatch, tmp_path / "no_bundle")
    errors = [e.value for e in at.error]
    assert errors == ["The bundle's benchmark (bench.json) cannot be read: mode 'base': top1 is 'high', "
                      "not a finite number"], errors
    assert not at.dataframe and "sinf bench cifar100_resnet56 --json" in "\n".join(c.value for c in at.code)


def test_a_runtime_benchmark_is_reported_against_both_bases():
    """`sinf bench --backend openvino --precision int8` output: titled with its runtime, the PyTorch float32
    reference as a row, and each contender's ratios against the runtime's own base and against the reference."""
    bench = report.load_bench(load(REPO / "tests" / "data" / "runtime_bench_cifar100_vgg16_bn_sinf.json"))
    assert report.report_title(bench) == "SINF speed-up report: cifar100_vgg16_bn_sinf on openvino int8"
    rows = {r["mode"]: r for r in report.bench_table(bench)}
    assert list(rows)[:2] == ["base", "reference"]
    assert rows["exit"]["throughput_ratio"] == bench["exit"]["throughput_ratio"]  # vs the int8 base (paired)
    assert rows["exit"]["throughput_vs_reference"] == bench["exit"]["throughput_ratio_vs_reference"]
    assert rows["reference"]["throughput_vs_reference"] == 1.0
    md = report.to_markdown(bench, report.report_title(bench))
    assert "throughput vs PyTorch fp32 (x)" in md and "| reference |" in md and "filter score" not in md
    assert "throughput_vs_reference" in report.to_csv(bench).splitlines()[0]
    # a PyTorch float32 benchmark keeps its table as published
    assert report.table_columns(load(VGG)) == report.COLUMNS
    with pytest.raises(SinfError, match="expected 'sinf-bench' or 'sinf-bench-runtime'"):
        report.load_bench({**bench, "format": "other"})


def test_best_combination_is_the_fastest_within_the_budget_and_says_what_sinf_adds(vgg):
    """Home's headline over the PyTorch float32 benchmark and a runtime one, against a brute force over the
    raw JSON: the fastest mode at most 1 point below the PyTorch float32 base's top-1, and on its runtime
    SINF's fastest mode within 1 point of that runtime's own base."""
    rt = load(REPO / "tests" / "data" / "runtime_bench_cifar100_vgg16_bn_sinf.json")
    runs = {"PyTorch float32": report.load_bench(vgg), "openvino int8": report.load_bench(rt)}
    for budget in (1.0, 2.0, 0.05):
        got = report.best_combination(runs, budget)
        cands = [("PyTorch float32", m, vgg[m]["throughput_ratio"], vgg[m]["top1"] - vgg["base"]["top1"])
                 for m in ("base", "sinf", "exit", "cascade", "static") if vgg.get(m) and vgg[m].get("top1") is not None]
        cands += [("openvino int8", m, rt[m]["throughput_ratio_vs_reference"], rt[m]["top1"] - rt["reference"]["top1"])
                  for m in ("base", "sinf", "exit", "cascade", "static") if rt.get(m) and rt[m].get("top1") is not None]
        label, mode, ratio, delta = max((c for c in cands if c[3] >= -budget), key=lambda c: c[2])
        assert (got["label"], got["mode"]) == (label, mode), budget
        assert got["vs_reference"] == pytest.approx(ratio) and got["top1_vs_reference"] == pytest.approx(delta)
        run = vgg if label == "PyTorch float32" else rt
        fam = [(run[m]["throughput_ratio"], m, run[m]["top1"] - run["base"]["top1"]) for m in ("sinf", "exit", "cascade")
               if run.get(m) and run[m].get("top1") is not None and run[m]["top1"] - run["base"]["top1"] >= -budget]
        if fam:
            r, m, d = max(fam)
            assert (got["sinf_mode"], got["sinf_vs_base"]) == (m, pytest.approx(r)) and got["sinf_top1_vs_base"] == pytest.approx(d)
        else:
            assert got["sinf_mode"] is None and got["sinf_vs_base"] is None
    assert report.best_combination({"openvino int8": {**report.load_bench(rt), "reference": None}}, 1.0) is None


def test_page_offers_the_bundles_runtime_benchmarks(monkeypatch, tmp_path):
    """A runtime benchmark saved in the bundle's runtime/ folder is a choice on the page, titled with its
    runtime; one of an earlier bench step is marked, one of another model is left out with a warning."""
    bundle = tmp_path / "bundle"
    shutil.copytree(RESNET_BUNDLE, bundle, ignore=shutil.ignore_patterns("runtime"))
    rt = load(REPO / "tests" / "data" / "runtime_bench_cifar100_vgg16_bn_sinf.json")
    (bundle / "runtime").mkdir()
    key = json.loads((bundle / "manifest.json").read_text())["steps"]["bench"]["key"]
    (bundle / "runtime" / "openvino_int8.json").write_text(json.dumps({**rt, "model": "cifar100_resnet56", "bundle_bench": key}))
    (bundle / "runtime" / "onnxruntime_int8.json").write_text(json.dumps({**rt, "backend": "onnxruntime"}))  # VGG's
    at = open_report(monkeypatch, bundle)
    assert [w.value for w in at.warning if "left out" in w.value] == [
        "runtime/onnxruntime_int8.json in the bundle is left out: a benchmark of cifar100_vgg16_bn_sinf, not of this "
        "bundle's cifar100_resnet56"]
    radio = at.radio(key="report_runtime")
    assert radio.options == ["PyTorch float32 (bench.json)", "openvino int8 (runtime/openvino_int8.json)"]
    assert [s.value for s in at.subheader][0] == "SINF speed-up report: cifar100_resnet56"
    radio.set_value("openvino int8 (runtime/openvino_int8.json)").run()
    assert not at.exception and [s.value for s in at.subheader][0] == "SINF speed-up report: cifar100_resnet56 on openvino int8"
    assert "From the bundle's runtime/openvino_int8.json" in at.caption[0].value
    assert not [w.value for w in at.warning if "earlier benchmark" in w.value]
    (bundle / "runtime" / "openvino_int8.json").write_text(json.dumps({**rt, "model": "cifar100_resnet56", "bundle_bench": "old"}))
    at = open_report(monkeypatch, bundle)
    at.radio(key="report_runtime").set_value("openvino int8 (runtime/openvino_int8.json)").run()
    assert [w.value for w in at.warning if "earlier benchmark" in w.value]


@pytest.mark.realdata
def test_home_headline_is_the_best_runtime_combination(monkeypatch, tmp_path, real_env):
    """Home on the shipped ResNet-56 bundle with its OpenVINO int8 benchmark: the headline names the fastest
    combination within 1 point of the PyTorch float32 base (the plain int8 base here) and says that no SINF mode
    stays within 1 point of that runtime's base."""
    from streamlit.testing.v1 import AppTest

    bundle = tmp_path / "bundle"
    shutil.copytree(RESNET_BUNDLE, bundle)
    rt = load(bundle / "runtime" / "openvino_int8.json")
    expect = report.best_combination({"PyTorch float32": report.load_bench(load(bundle / "bench.json")),
                                      "openvino int8": report.load_bench(rt)}, 1.0)
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("SINF_APP_MODEL", "cifar100_resnet56")
    monkeypatch.setenv("SINF_APP_BUNDLE", str(bundle))
    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO / "app" / "views" / "home.py"), default_timeout=300)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    info = [i.value for i in at.info if i.value.startswith("Best measured")]
    assert expect["mode"] == "base" and expect["sinf_mode"] is None
    assert info == [f"Best measured: **the base model on openvino int8**, **{expect['vs_reference']:.2f}x** the "
                    f"PyTorch float32 base's throughput at {expect['top1_vs_reference']:+.2f} points top-1 (within 1 "
                    "point); on openvino int8 no SINF mode stays within 1 point of that runtime's own base. Every "
                    "runtime is on the Speed-up report page."]
