"""SINF Studio under Streamlit's AppTest: every page renders without an exception, shows its key widgets,
and moving a slider / submitting a form changes the numbers shown.

The fast tests run on a tiny synthetic set-up (no ../shared): a 6-class image folder (3 clusters of 2), a
tiny CIFAR ResNet trained on it for a few seconds and registered under ``tiny_resnet_app``, and a bundle
holding a router and exit heads fitted on it. The realdata test opens the default ResNet-56 / CIFAR-100.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_tiny_dataset, make_tiny_resnet

TINY = "tiny_resnet_app"
APP = str(REPO / "app" / "streamlit_app.py")
PAGES = REPO / "app" / "views"


# ------------------------------------------------------------------------------------ the tiny set-up
def write_image_folder(root: Path) -> Path:
    """root/{train,test}/c0..c5/*.png plus hierarchy.json (clusters k0, k1, k2 of two classes each)."""
    from PIL import Image

    for split, n, seed in (("train", 40, 0), ("test", 20, 1)):
        ds = make_tiny_dataset(n_per_class=n, seed=seed)
        for i, (img, y) in enumerate(zip(ds.images, ds.labels.tolist())):
            d = root / split / f"c{y}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
    (root / "hierarchy.json").write_text(json.dumps({"clusters": {"k0": ["c0", "c1"], "k1": ["c2", "c3"],
                                                                  "k2": ["c4", "c5"]}}))
    return root


def tiny_build_settings():
    from sinf_core.pipeline import BuildSettings

    return BuildSettings(
        methods=("dcs", "l1", "random"), r_M=0.05, r_L_grid=(0.3, 0.6), q=25.0, k=3,
        route_target=0.5, taps=("layer1.1", "layer2.0", "layer2.1"),
        router={"epochs": 5, "batch_size": 54, "bf16": False, "channels_last": False, "lr": 2e-2},
        stats_feature_sample=120,
        bench_options={"budget": 5.0, "schedules": [[0.05, 0.5]], "gammas": [0.0, 0.5, 0.9, 1.0],
                       "taus": [0.5, 0.9, 1.0], "static_scores": ["l1"], "head_fit_samples": 216, "head_epochs": 2,
                       "screen_pool": 24, "screen_reps": 1, "pool": 120, "batch_size": 64, "throughput_reps": 1,
                       "latency_calls": 10, "latency_warmup": 2, "cache": False, "multiple_of": None},
    )


def register_tiny_model(data_dir: str | Path) -> None:
    """Register ``tiny_resnet_app`` (the conftest tiny ResNet, 6 classes) with its image-folder data."""
    from sinf_core.models.registry import MODELS, ModelEntry

    MODELS[TINY] = ModelEntry(TINY, lambda: make_tiny_resnet(), dataset=str(data_dir), protocol="heldout",
                              description="tiny CIFAR ResNet for the app tests")


def build_tiny_env(root: Path) -> dict[str, str]:
    """Data, trained weights and a bundle (``sinf build`` with tiny settings) under ``root``; returns the
    app's environment. Built once per test session (``root/env.json`` marks a finished build)."""
    done = root / "env.json"
    if done.is_file():
        env = json.loads(done.read_text())
        register_tiny_model(env["SINF_TINY_DATA"])
        return env
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads; spare a shared machine
    try:
        env = _build_tiny_env(root)
    finally:
        torch.set_num_threads(threads)
    done.write_text(json.dumps(env))
    return env


def session_root(tmp_path_factory) -> Path:
    """One folder per test session shared by test_app and test_browser (the tiny build is reused)."""
    return tmp_path_factory.getbasetemp() / "sinf_studio_tiny"


def _build_tiny_env(root: Path) -> dict[str, str]:
    from safetensors.torch import save_file

    from sinf_core.experiment import open_experiment
    from sinf_core.pipeline import BuildSettings, build_bundle
    from sinf_core.train import TrainConfig, train

    data_dir = write_image_folder(root / "tinydata")
    register_tiny_model(data_dir)
    exp = open_experiment(TINY, runtime="cpu", checkpoint=_untrained(root))
    model = exp.model.train()
    cfg = TrainConfig(model=TINY, epochs=5, batch_size=36, lr=0.1, bf16=False, channels_last=False,
                      label_smoothing=0.0, warmup_epochs=0.5, checkpoint_every=10_000)
    train(model, exp.fit_data(), cfg, root / "train")
    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(weights))
    exp = open_experiment(TINY, runtime="cpu", checkpoint=weights)
    build_bundle(exp, root / "bundle", tiny_build_settings())
    return {"SINF_APP_MODEL": TINY, "SINF_APP_CHECKPOINT": str(weights), "SINF_APP_BUNDLE": str(root / "bundle"),
            "SINF_CACHE_DIR": str(root / "cache"), "SINF_TINY_DATA": str(data_dir)}


def _untrained(root: Path) -> Path:
    from safetensors.torch import save_file

    p = root / "init.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_resnet().state_dict().items()}, str(p))
    return p


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    env = build_tiny_env(session_root(tmp_path_factory))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def open_page(page: str, timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if page != "home":
        at.switch_page(str(PAGES / f"{page}.py"))
        at.run()
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def nobundle_env(tiny_env, tmp_path_factory):
    """The same tiny model and data with an empty bundle folder (nothing built yet)."""
    env = {**tiny_env, "SINF_APP_BUNDLE": str(tmp_path_factory.mktemp("empty_bundle") / "bundle")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    os.environ.update({k: v for k, v in old.items() if v is not None})


def metric(at, prefix: str):
    """The value of the first metric whose label starts with ``prefix``."""
    for m in at.metric:
        if m.label.startswith(prefix):
            return m.value
    raise AssertionError(f"no metric {prefix!r}; metrics: {[m.label for m in at.metric]}")


def texts(at) -> str:
    """All markdown, captions, infos, warnings and errors of the page, joined."""
    parts = [e.value for e in at.markdown] + [e.value for e in at.caption] + [e.value for e in at.info]
    parts += [e.value for e in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def _mode(top1, lat, ips, flops, params, **kw):
    return {"top1": top1, "latency_ms_bs1": lat, "throughput_ips": ips, "flops": flops, "params": params, **kw}


BENCH = {  # a benchmark in the `sinf bench --json` layout (an input for the page, not a measurement)
    "format": "sinf-bench", "version": 1, "model": "demo",
    "base": _mode(72.5, 10.0, 1000.0, 2.5e8, 860000),
    "sinf": _mode(71.0, 11.0, 1100.0, 2.2e8, 900000, calib_top1=71.2, calib_flops=2.2e8),
    "exit": _mode(70.5, 8.0, 1400.0, 1.8e8, 880000, calib_top1=70.9, calib_flops=1.8e8),
    "cascade": _mode(70.9, 8.5, 1500.0, 1.7e8, 920000, calib_top1=71.0, calib_flops=1.7e8),
    "static": _mode(66.0, 9.0, 1150.0, 2.2e8, 700000),
    "sweep": {"base_calib_top1": 72.7, "pareto": {
        "sinf": [{"mode": "sinf", "tap": "layer3.4", "gamma": 0.5, "top1": 71.2, "flops": 2.2e8},
                 {"mode": "sinf", "tap": "layer3.4", "gamma": 0.8, "top1": 72.0, "flops": 2.4e8}],
        "exit": [{"mode": "exit", "tap": "layer3.4", "tau": 0.9, "top1": 70.9, "flops": 1.8e8}]},
        "screen": {"sinf": [{"mode": "sinf", "top1": 71.2, "flops": 2.2e8, "ips": 1080.0}]}},
    "hardware": {"cpu": "test CPU", "threads": 2, "torch": "2.x"},
}


# ====================================================================================== pages
def test_home(tiny_env):
    from sinf_core.cost import model_cost
    from sinf_core.models import load_model
    from sinf_core.plots import fmt_count

    at = open_page("home")
    no_exception(at)
    assert at.title[0].value == "SINF Studio"
    assert any(s.label == "Model" for s in at.selectbox) and any(t.label == "Bundle folder" for t in at.text_input)
    assert metric(at, "Classes") == "6" and metric(at, "Test images") == "120"
    model = load_model(TINY, checkpoint=tiny_env["SINF_APP_CHECKPOINT"])
    if any(m.label.startswith("Base top-1 (report") for m in at.metric):  # the bundle has a benchmark
        assert metric(at, "SINF top-1").endswith("%")
    else:
        assert metric(at, "Base parameters") == fmt_count(model_cost(model).params)
        assert "sinf build tiny_resnet_app" in "\n".join(c.value for c in at.code)
    assert len(at.dataframe[-1].value) == 3  # cluster membership table


def test_clusters_switch_method_and_k(tiny_env):
    from sinf_core.bundle import Bundle
    from sinf_core.clusters import adjusted_rand, cluster_classes
    from sinf_core.stats import ActivationStats

    at = open_page("clusters")
    no_exception(at)
    assert metric(at, "Agreement") == "1.000 (itself)"
    assert len(at.dataframe[0].value) == 3  # membership: 3 clusters
    at.radio(key="cluster_method").set_value("ward").run()
    at.slider(key="cluster_k").set_value(2).run()
    no_exception(at)
    assert metric(at, "Clusters") == "2" and len(at.dataframe[0].value) == 2
    b = Bundle.open(tiny_env["SINF_APP_BUNDLE"])
    stats = ActivationStats.from_tensors(b.tensors("stats.safetensors"))
    h = b.json("data.json")
    from sinf_core.data import Hierarchy

    hier = Hierarchy(tuple(h["class_names"]), tuple(h["cluster_names"]), tuple(h["cluster_of_class"]))
    expected = adjusted_rand(cluster_classes("ward", hier.class_names, 2, hier, fit_stats=stats), hier)
    assert metric(at, "Agreement") == f"{expected:.3f}"
    at.toggle(key="show_samples").set_value(True).run()
    no_exception(at)


def test_overlap_q_and_layer(tiny_env):
    from sinf_core.models import load_model
    from sinf_core.overlap import top_q_count

    model = load_model(TINY, checkpoint=tiny_env["SINF_APP_CHECKPOINT"])
    at = open_page("overlap")
    no_exception(at)
    layer = at.selectbox(key="layer").value
    channels = model.prunable_layer(layer).channels
    assert metric(at, "Channels in the layer") == str(channels)
    assert metric(at, "Top 20 % set size") == str(top_q_count(channels, 20))
    before = metric(at, "Within-cluster")
    at.slider(key="q").set_value(50).run()
    no_exception(at)
    assert metric(at, "Top 50 % set size") == str(top_q_count(channels, 50))
    first = model.prunable_layers()[0].name
    at.selectbox(key="layer").set_value(first).run()
    at.radio(key="view").set_value("between classes").run()
    no_exception(at)
    assert metric(at, "Channels in the layer") == str(model.prunable_layer(first).channels)
    assert before is not None


def _reference_evaluation(env, cfg):
    """Independent check: the library's slow evaluation (images through the unfolded stem, then each
    cluster's subgraph) of the same configuration."""
    from sinf_core.bundle import Bundle
    from sinf_core.experiment import open_experiment
    from sinf_core.pipeline import load_scores
    from sinf_core.stats import ActivationStats
    from sinf_core.subgraph import evaluate_cluster_subgraphs, make_cluster_specs

    exp = open_experiment(TINY, checkpoint=env["SINF_APP_CHECKPOINT"], runtime="cpu")
    b = Bundle.open(env["SINF_APP_BUNDLE"])
    stats = ActivationStats.from_tensors(b.tensors("stats.safetensors")) if cfg["fill"] == "mean" else None
    h = exp.hierarchy
    overrides = {h.cluster_names.index(k): tuple(v) for k, v in cfg.get("overrides", {}).items()}
    specs = make_cluster_specs(exp.model, TINY, cfg["tap"], load_scores(b, cfg["method"]), h, cfg["r_M"], cfg["r_L"],
                               cfg.get("multiple_of"), overrides=overrides, fill_stats=stats)
    return evaluate_cluster_subgraphs(exp.model, specs, exp.calib_data(), h, baseline=True)


def _bench_point(env, mode=None):
    from sinf_core.bundle import Bundle

    bench = Bundle.open(env["SINF_APP_BUNDLE"]).json("bench.json")
    mode = mode or bench["best_mode"]
    return mode, bench[mode]["operating_point"], bench


def _pct(text: str) -> float:
    return float(str(text).split()[0])


def test_pruning_opens_on_the_benchmarks_point_changes_numbers_and_saves(tiny_env):
    from sinf_core.plots import fmt_count

    mode, p, bench = _bench_point(tiny_env)
    at = open_page("pruning")
    no_exception(at)
    assert at.selectbox(key="tap").value == p["tap"] and at.selectbox(key="method").value == bench["subgraph_score"]
    if p["r_M"] is not None:
        assert (at.slider(key="r_M").value, at.slider(key="r_L").value) == (p["r_M"], p["r_L"])
    assert "Showing the benchmark's" in texts(at)
    cfg = {"tap": p["tap"], "method": bench["subgraph_score"], "r_M": at.slider(key="r_M").value,
           "r_L": at.slider(key="r_L").value, "fill": bench["options"]["fill"], "multiple_of": bench["options"]["multiple_of"]}
    ev = _reference_evaluation(tiny_env, cfg)
    assert metric(at, "FLOPs per subgraph") == fmt_count(ev["mean"]["flops_with_stem"]), (cfg, p, texts(at))
    # the tuning path runs on stored (uint8) stem features with folded BatchNorm: a sample may flip
    assert abs(_pct(metric(at, "Mean per-cluster accuracy")) - ev["mean"]["accuracy"]) <= 5.0
    assert "of the base model's FLOPs" in texts(at)
    at.slider(key="r_M").set_value(0.3)
    at.slider(key="r_L").set_value(0.9)
    at.multiselect(key="ov_clusters").set_value(["k1"]).run()  # the cluster's sliders appear at the global pair
    assert (at.slider(key="ov_rm_1").value, at.slider(key="ov_rl_1").value) == (cfg["r_M"], cfg["r_L"])
    at.slider(key="r_M").set_value(0.3)
    at.slider(key="r_L").set_value(0.9)
    at.slider(key="ov_rm_1").set_value(0.0)
    at.slider(key="ov_rl_1").set_value(0.1)
    at.button(key="apply").click().run()
    no_exception(at)
    cfg1 = {**cfg, "r_M": 0.3, "r_L": 0.9, "overrides": {"k1": [0.0, 0.1]}}
    ev1 = _reference_evaluation(tiny_env, cfg1)
    assert metric(at, "FLOPs per subgraph") == fmt_count(ev1["mean"]["flops_with_stem"])
    assert abs(_pct(metric(at, "Mean per-cluster accuracy")) - ev1["mean"]["accuracy"]) <= 5.0
    table = at.dataframe[0].value
    assert list(table["r_L"]) == [0.9, 0.1, 0.9] and list(table["r_M"]) == [0.3, 0.0, 0.3]
    assert "Edited from the benchmark's" in texts(at)
    at.toggle(key="fill").set_value(False)  # removed channels set to zero instead of their mean
    at.button(key="apply").click().run()
    no_exception(at)
    at.button(key="save").click().run()
    no_exception(at)
    saved = json.loads((Path(tiny_env["SINF_APP_BUNDLE"]) / "config.json").read_text())
    assert saved["r_M"] == 0.3 and saved["r_L"] == 0.9 and saved["overrides"] == {"k1": [0.0, 0.1]}
    assert saved["fill"] == "zero" and saved["tap"] == p["tap"] and saved["mode"] == mode
    from sinf_core.bundle import Bundle

    Bundle.open(tiny_env["SINF_APP_BUNDLE"])  # still a valid bundle (checksums verified)
    # the one-click way back to the benchmark's point
    at.button(key="reset_point_pruning").click().run()
    no_exception(at)
    assert "Showing the benchmark's" in texts(at)
    if p["r_M"] is not None:
        shown = {w.label.split(":")[0]: w.value for w in at.slider if w.label.startswith(("r_M:", "r_L:"))}
        assert shown == {"r_M": p["r_M"], "r_L": p["r_L"]}
    # thresholds: in SINF mode, gamma = 1 (never route) is the base model on calibration, as the benchmark found
    by_label(at.radio, "Mode").set_value("sinf").run()
    by_label(at.slider, "gamma").set_value(1.0).run()
    no_exception(at)
    assert metric(at, "sinf top-1 (calibration)") == f"{bench['sweep']['base_calib_top1']:.2f} %"
    assert metric(at, "Exit / routed / fall back") == "0 / 0 / 100 %"
    assert len([c for c in at.get("plotly_chart")]) >= 3  # the gamma curves are drawn
    (Path(tiny_env["SINF_APP_BUNDLE"]) / "config.json").unlink()  # later tests open on the benchmark's point
    import sinf_core.bundle as bundle_mod

    b = bundle_mod.Bundle.open(tiny_env["SINF_APP_BUNDLE"], verify=False)
    b.manifest["steps"].pop("config", None)
    b._write_manifest()


def _png(img, fmt="PNG", **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def by_label(widgets, prefix: str):
    """The widget whose label starts with ``prefix`` (keys change when the configuration is reset)."""
    found = [w for w in widgets if w.label.startswith(prefix)]
    assert found, (prefix, [w.label for w in widgets])
    return found[0]


def test_live_single_image_thresholds_and_batch(tiny_env):
    from sinf_core.data import normalise
    from sinf_core.experiment import open_experiment

    mode, p, bench = _bench_point(tiny_env)
    at = open_page("live")
    no_exception(at)
    assert by_label(at.radio, "Mode").value == mode and by_label(at.selectbox, "The shared stem").value == p["tap"]
    assert "Showing the benchmark's" in texts(at)
    by_label(at.radio, "Mode").set_value("sinf").run()
    no_exception(at)
    # gamma = 1: everything falls back, so SINF answers exactly as the base model
    by_label(at.slider, "gamma").set_value(1.0).run()
    no_exception(at)
    sinf = [m for m in at.metric if m.label.startswith("SINF (")][0]
    assert sinf.label == "SINF (fallback)" and sinf.value == metric(at, "Base model")
    assert "Speed vs base on this image" in texts(at) and "IQR" in texts(at)
    by_label(at.slider, "gamma").set_value(0.0).run()
    assert [m.label for m in at.metric if m.label.startswith("SINF (")] == ["SINF (route)"]
    # the cascade with tau = 0 answers at the exit head
    by_label(at.radio, "Mode").set_value("cascade").run()
    by_label(at.slider, "tau").set_value(0.0).run()
    no_exception(at)
    assert [m.label for m in at.metric if m.label.startswith("SINF (")] == ["SINF (exit)"]
    # the thresholds are one state: the Pruning page shows what was set here
    pr = open_page("pruning")
    assert by_label(pr.radio, "Mode").value in ("sinf", "cascade", "exit")
    # a batch run: the base accuracy shown equals the model's accuracy on the same images
    at.slider(key="batch_n").set_value(100)
    at.button(key="batch_run").click().run()
    no_exception(at)
    exp = open_experiment(TINY, checkpoint=tiny_env["SINF_APP_CHECKPOINT"], runtime="cpu")
    rep = exp.report_data()
    idx = np.random.default_rng(0).permutation(len(rep))[:100]
    with torch.inference_mode():
        pred = exp.model(normalise(rep.images[idx], rep.mean, rep.std)).argmax(1)
    acc = 100.0 * float((pred == rep.labels[idx]).float().mean())
    assert metric(at, "Base accuracy") == f"{acc:.2f} %"
    assert metric(at, "SINF accuracy").endswith("%")
    assert metric(at, "SINF speed vs base (paired, median)").endswith("x")


def test_live_uploads_good_and_bad(tiny_env):
    from PIL import Image

    rgb = Image.new("RGB", (300, 200), (200, 30, 30))
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    import io

    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    full = _png(rgb)
    cases = {  # name: (bytes, expected error or None, expected note for a usable image)
        "notimage.png": (b"this is not an image at all", "not an image", None),
        "empty.png": (b"", "empty", None),
        "truncated.png": (full[: len(full) // 2], "truncated or corrupt", None),
        "huge.png": (_png(Image.new("1", (10000, 10000))), "too large", None),
        "tiny.png": (_png(Image.new("RGB", (1, 1), (0, 255, 0))), None, "upscaled"),
        "gray.png": (_png(Image.new("L", (50, 40), 128)), None, "colour mode L"),
        "rgba.png": (_png(Image.new("RGBA", (64, 64), (0, 0, 255, 100))), None, "transparency"),
        "anim.gif": (gif.getvalue(), None, "first frame"),
        "photo.jpg": (_png(rgb, "JPEG"), None, "resized from 300x200"),
    }
    at = open_page("live")
    for name, (data, expect_error, note) in cases.items():
        at.file_uploader(key="upload").set_value((name, data, "image/png")).run()
        no_exception(at)
        errors = [e.value for e in at.error]
        if expect_error:
            assert len(errors) == 1 and name in errors[0] and expect_error in errors[0], (name, errors)
        else:
            assert not errors, (name, errors)
            assert any(m.label.startswith("SINF (") for m in at.metric), name
            assert note in texts(at), (name, note)
        assert any(m.label == "Base model" for m in at.metric) or expect_error  # the page keeps working
    at.file_uploader(key="upload").set_value(None).run()
    no_exception(at)


def test_live_on_onnx_runtime_against_its_own_base(tiny_env):
    """Live on ONNX Runtime: the configuration is exported once, SINF and the base both run on it, and the
    batch run also shows the PyTorch float32 base; with gamma = 1 everything falls back, so SINF answers
    exactly as the exported base."""
    at = open_page("live")
    by_label(at.radio, "Mode").set_value("sinf").run()
    by_label(at.slider, "gamma").set_value(1.0).run()
    box = by_label(at.selectbox, "Runtime and precision")
    assert box.options[0] == "PyTorch float32" and "ONNX Runtime int8" in box.options
    box.select_index(box.options.index("ONNX Runtime float32")).run()
    no_exception(at)
    sinf = [m for m in at.metric if m.label.startswith("SINF (")][0]
    assert sinf.label == "SINF (fallback) on ONNX Runtime float32"
    assert sinf.value == metric(at, "Base model on ONNX Runtime float32")
    at.slider(key="batch_n").set_value(100)
    at.button(key="batch_run").click().run()
    no_exception(at)
    assert metric(at, "SINF accuracy").split(" ")[0] == metric(at, "Base accuracy").split(" ")[0]
    assert metric(at, "SINF speed vs base (paired, median) on ONNX Runtime float32").endswith("x")
    assert "Against the PyTorch float32 base" in texts(at)


def test_report_page_upload_and_exports(tiny_env):
    at = open_page("report")
    no_exception(at)
    if not at.dataframe:  # the bundle has no benchmark: a clear notice, then a file can be loaded
        assert "sinf bench" in "\n".join(c.value for c in at.code)
    at.file_uploader(key="bench_upload").set_value(("bench.json", b"{not json", "application/json")).run()
    no_exception(at)
    assert "not a JSON file" in texts(at)
    at.file_uploader(key="bench_upload").set_value(("b.json", json.dumps({"x": 1}).encode(), "application/json")).run()
    assert "not a SINF benchmark" in texts(at)
    at.file_uploader(key="bench_upload").set_value(("b.json", json.dumps(BENCH).encode(), "application/json")).run()
    no_exception(at)
    table = at.dataframe[0].value
    assert list(table["mode"]) == ["base", "sinf", "exit", "cascade", "static"]
    assert list(table["throughput vs base (x)"]) == ["1.00x", "1.10x", "1.40x", "1.50x", "1.15x"]
    assert "test CPU" in texts(at)
    assert len(at.get("download_button")) == 3


def test_pages_without_a_bundle(nobundle_env):
    """Nothing built: Clusters / Overlap / Pruning compute what they need; Live and the report explain."""
    for page in ("home", "clusters", "overlap", "pruning", "live", "report"):
        at = open_page(page, timeout=300)
        no_exception(at)
        if page in ("live", "report"):
            assert "sinf build" in "\n".join(c.value for c in at.code), page
    at = open_page("pruning", timeout=300)
    assert "does not hold yet" in texts(at) and not at.metric  # the scores are offered, not silently computed
    at.button(key="compute_scores_dcs").click().run()
    no_exception(at)
    assert metric(at, "Expected FLOPs per input")
    assert "oracle routing" in texts(at)
    at = open_page("overlap", timeout=300)  # the scores computed above are now at hand everywhere
    no_exception(at)
    assert "DCS subgraph keeps" in texts(at)


def _damaged_bundle(tiny_env, tmp_path) -> str:
    """A copy of the tiny bundle whose statistics file is garbage."""
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(tiny_env["SINF_APP_BUNDLE"], bad)
    (bad / "stats.safetensors").write_bytes(b"garbage")
    return str(bad)


@pytest.mark.parametrize("var, value, pages, message", [
    ("SINF_APP_BUNDLE", _damaged_bundle, ("home", "live", "report"), "corrupted"),
    ("SINF_APP_DATASET", lambda tiny_env, tmp_path: str(tmp_path / "no_such_folder"), ("home", "clusters", "live"),
     "Cannot load"),
], ids=["damaged_bundle", "missing_data"])
def test_damaged_bundle_and_missing_data(tiny_env, tmp_path, monkeypatch, var, value, pages, message):
    monkeypatch.setenv(var, value(tiny_env, tmp_path))
    for page in pages:
        at = open_page(page)
        no_exception(at)
        assert message in texts(at), page


# ====================================================================================== pure helpers
def test_report_table_csv_html_json():
    import csv
    import io

    from sinf_core import report
    from sinf_core.errors import SinfError

    rows = {r["mode"]: r for r in report.bench_table(BENCH)}
    assert list(rows) == ["base", "sinf", "exit", "cascade", "static"]
    assert rows["cascade"]["throughput_ratio"] == pytest.approx(1500 / 1000)
    assert rows["exit"]["latency_speedup"] == pytest.approx(10.0 / 8.0)
    assert rows["sinf"]["flops_ratio"] == pytest.approx(2.2e8 / 2.5e8)
    assert rows["static"]["delta_top1"] == pytest.approx(66.0 - 72.5)
    parsed = list(csv.DictReader(io.StringIO(report.to_csv(BENCH))))
    assert [r["mode"] for r in parsed] == list(rows)
    assert float(parsed[3]["throughput_ratio"]) == pytest.approx(1.5)
    back = json.loads(report.to_json(BENCH, {"model": "demo"}))
    assert back["benchmark"] == BENCH and back["model"] == "demo" and len(back["table"]) == 5
    page = report.to_html(BENCH, "A <report>")
    assert page.startswith("<!DOCTYPE html>") and "A &lt;report&gt;" in page and "<table>" in page
    import re

    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js is inlined: the file works offline
    assert len(page) > 1_000_000
    assert page.count("Plotly.newPlot") == 5 and "test CPU" in page
    # the sweep's calibration points give each mode's front; chosen points sit at calibration coordinates
    assert {p["mode"] for p in report.bench_points(BENCH)} == {"sinf", "exit"}
    assert report.chosen_points(BENCH, "calib")["base"] == {"top1": 72.7, "flops": 2.5e8}
    with pytest.raises(SinfError):
        report.bench_table({"sinf": BENCH["sinf"]})
    missing = {**BENCH, "exit": {"top1": None, "latency_ms_bs1": None, "throughput_ips": None, "flops": None,
                                 "params": None, "note": "no operating point within the budget"}}
    assert {r["mode"]: r["throughput_ratio"] for r in report.bench_table(missing)}["exit"] is None
    assert "n/a" in report.to_html(missing)
    md = report.to_markdown(BENCH, "Demo")
    table = [line for line in md.splitlines() if line.startswith("| cascade ")]
    assert md.startswith("# Demo") and table and "1.50x" in table[0]  # cascade: 1500 / 1000 img/s
    assert "Pareto front of **sinf**" in md and "Pareto front of **exit**" in md and "test CPU" in md


def test_cluster_colours_are_one_palette_everywhere():
    from sinf_core import plots

    names = [f"g{i}" for i in range(20)]
    colours = plots.cluster_colors(20)
    assert len(set(colours)) == 20 and colours[7] == plots.cluster_color(7)
    xy = np.random.default_rng(0).normal(size=(40, 2))
    cl = np.arange(40) % 20
    fig = plots.cluster_map_figure(xy, cl, names, [str(i) for i in range(40)], "t")
    assert {t.name: t.marker.color for t in fig.data} == dict(zip(names, colours))
    bars = plots.per_cluster_accuracy_figure(names, [50.0] * 20, None, "t")
    assert list(bars.data[0].marker.color) == colours
    cost = plots.cost_bars_figure(names, [1e6] * 20, 2e6, "t")
    assert list(cost.data[0].marker.color) == colours
    fb = plots.filter_bars_figure([0.3, 0.1, 0.2], [True, False, True], "l", "g5", 5)
    assert list(fb.data[0].marker.color) == [colours[5], colours[5], "#C8C8C8"]  # sorted by value
    for f in (fig, bars, cost, fb, plots.depth_profile_figure(["a", "b"], [0.5, 0.4], [0.3, None], 20)):
        assert f.layout.title.text and f.layout.yaxis.title.text  # titles and axis units


def test_pareto_front_matches_brute_force():
    from sinf_core.plots import pareto_front

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 10, 60).astype(float), rng.integers(0, 10, 60).astype(float)
    front = set(pareto_front(x, y).tolist())
    for i in range(60):
        dominated = any(x[j] <= x[i] and y[j] >= y[i] and (x[j] < x[i] or y[j] > y[i]) for j in range(60))
        assert (i in front) == (not dominated)
    hi = set(pareto_front(x, y, "higher").tolist())
    for i in range(60):
        dominated = any(x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i]) for j in range(60))
        assert (i in hi) == (not dominated)


# ====================================================================================== real data
@pytest.mark.realdata
def test_default_resnet56_without_a_bundle(real_env, tmp_path):
    """The README's default (ResNet-56 / CIFAR-100 from ../shared) opens offline; with nothing built yet the
    pages say how to build the bundle, and Live inference still runs the base model."""
    from sinf_core.data import normalise
    from sinf_core.experiment import open_experiment

    env = {"SINF_APP_BUNDLE": str(tmp_path / "bundle"), "SINF_CACHE_DIR": str(tmp_path / "cache")}
    old = {k: os.environ.get(k) for k in list(env) + ["SINF_APP_MODEL", "SINF_APP_CHECKPOINT"]}
    os.environ.update(env)
    for k in ("SINF_APP_MODEL", "SINF_APP_CHECKPOINT"):
        os.environ.pop(k, None)
    try:
        t0 = time.perf_counter()
        at = open_page("home", timeout=300)
        no_exception(at)
        assert "cifar100_resnet56 on cifar100" in [s.value for s in at.subheader]
        assert metric(at, "Classes") == "100" and metric(at, "Clusters") == "20"
        assert metric(at, "Base top-1 (published)") == "72.63 %"
        assert "sinf build cifar100_resnet56" in "\n".join(c.value for c in at.code)
        at = open_page("live", timeout=300)
        no_exception(at)
        exp = open_experiment("cifar100_resnet56", runtime="cpu")
        rep = exp.report_data()
        i = int(np.random.default_rng(0).choice(np.arange(len(rep))))
        with torch.inference_mode():
            pred = int(exp.model(normalise(rep.images[i:i + 1], rep.mean, rep.std)).argmax(1))
        assert metric(at, "Base model").startswith(rep.class_names[pred])
        at = open_page("report", timeout=300)
        no_exception(at)
        assert time.perf_counter() - t0 < 120
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.realdata
def test_live_times_the_benchmarks_network_selection(real_env, tmp_path, monkeypatch):
    """The shipped ResNet-56 bundle's benchmark serves network selection (ResNet-20 -> ResNet-56): Live's batch
    run times it beside the base, and its accuracy and shares equal the chain recomputed from each network's
    own logits and the benchmark's gate (ties at the threshold aside: at most one image apart)."""
    from sinf_core.data import normalise
    from sinf_core.experiment import open_experiment
    from sinf_core.models.registry import load_model

    monkeypatch.setenv("SINF_APP_MODEL", "cifar100_resnet56")
    monkeypatch.setenv("SINF_CACHE_DIR", str(tmp_path / "cache"))
    for k in ("SINF_APP_BUNDLE", "SINF_APP_CHECKPOINT", "SINF_APP_DATASET"):
        monkeypatch.delenv(k, raising=False)
    at = open_page("live", timeout=300)
    no_exception(at)
    at.slider(key="batch_n").set_value(300)
    assert at.checkbox(key="batch_select").value
    at.button(key="batch_run").click().run(timeout=600)
    no_exception(at)
    bench = json.loads((REPO / "assets" / "bundles" / "cifar100_resnet56" / "bench.json").read_text())["select"]
    exp = open_experiment("cifar100_resnet56", runtime="cpu")
    rep = exp.report_data()
    idx = np.random.default_rng(0).permutation(len(rep))[:300]
    x = normalise(rep.images[idx], rep.mean, rep.std)
    with torch.inference_mode():
        small = load_model("cifar100_resnet20").eval()(x)
        big = exp.model.eval()(x).argmax(1)
    conf = torch.softmax(small / bench["gate_temperatures"][0], 1).max(1).values
    take = conf >= bench["operating_point"]["thresholds"][0]
    pred = torch.where(take, small.argmax(1), big)
    shown = float(metric(at, "Network selection accuracy").split(" ")[0])
    assert abs(shown - 100 * float((pred == rep.labels[idx]).double().mean())) <= 100 / 300 + 1e-9
    shares = metric(at, "Answered by each network")
    assert abs(int(shares.split(" %")[0]) - round(100 * float(take.double().mean()))) <= 1
    assert metric(at, "Network selection speed vs base (paired, median)").endswith("x")
