"""ONNX export of the routed model's pieces, and routed inference over runtime sessions (tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet, make_tiny_vgg
from sinf_core.data import iterate_batches
from sinf_core.engine import SemanticInference
from sinf_core.errors import SinfError
from sinf_core.router import RouteHead

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sinf_core.backends import open_runtime, torch_runtime  # noqa: E402
from sinf_core.export import (MANIFEST, CalibrationSet, export_onnx, read_manifest, routed_model)  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

MAKERS = {"resnet": make_tiny_resnet, "vgg": make_tiny_vgg}
TAPS = {"resnet": "layer2.0", "vgg": "features.7"}


def _routed(arch: str, mode: str = "cascade"):
    """A tiny routed model: random heads centred on the data, DCS-free random-score subgraphs (30-60 %
    of channels removed, mean-free), thresholds at quantiles of the heads' confidences."""
    from sinf_core.subgraph import build_subgraph, make_cluster_specs

    model = MAKERS[arch]()
    tap = TAPS[arch]
    ds = make_tiny_dataset(n_per_class=6, seed=3)
    x, y = next(iterate_batches(ds, len(ds)))
    with torch.no_grad():
        h = model.forward_stem(x, tap)
    torch.manual_seed(1)
    route, exit_head = RouteHead(h.shape[1], 3, hidden=8).eval(), RouteHead(h.shape[1], 6, hidden=8).eval()
    with torch.no_grad():
        for head in (route, exit_head):
            z = head(h)
            head.fc.weight.div_(z.std(0).mean())
            head.fc.bias.copy_(-(z.mean(0)) / z.std(0).mean())
        route.temperature.fill_(0.7)
        exit_head.temperature.fill_(1.3)
        rc = torch.softmax(route(h) / 0.7, 1).amax(1)
        ec = torch.softmax(exit_head(h) / 1.3, 1).amax(1)
    g = torch.Generator().manual_seed(0)
    scores = {m: {l.name: torch.rand(l.channels, generator=g) for l in model.prunable_layers()} for m in range(3)}
    specs = make_cluster_specs(model, "tiny", tap, scores, ds.hierarchy, 0.3, 0.6)
    subs = {m: build_subgraph(model, s) for m, s in specs.items()}
    rm = routed_model(model, "tiny", tap, mode, route=route, exit=exit_head, subgraphs=subs,
                      gamma=float(rc.quantile(0.4)), tau=float(ec.quantile(0.7)), cluster_names=ds.hierarchy.cluster_names,
                      mean=ds.mean, std=ds.std)
    return rm, ds, x, y


@pytest.fixture(scope="module", params=list(MAKERS))
def exported(request, tmp_path_factory):
    rm, ds, x, y = _routed(request.param)
    out = tmp_path_factory.mktemp(f"onnx_{request.param}")
    export_onnx(rm, out)
    return rm, out, x


def test_every_piece_equals_its_pytorch_module(exported):
    rm, out, _ = exported
    man = read_manifest(out)
    pieces = rm.pieces()
    assert set(man["pieces"]) == set(pieces) == {"base", "stem", "front", "route", "exit", "tail", "cluster_00",
                                                 "cluster_01", "cluster_02"}
    assert man["pieces"]["front"]["head"] == "exit" and man["pieces"]["front"]["output"] == ["h", "logits"]
    shapes = {"x": rm.input_shape, "h": rm.tap_shape()}
    g = torch.Generator().manual_seed(5)
    for name, module in pieces.items():
        sess = ort.InferenceSession(str(out / man["pieces"][name]["file"]), providers=["CPUExecutionProvider"])
        for n in (1, 5):  # the batch axis is dynamic
            x = torch.randn(n, *shapes[rm.piece_input(name)], generator=g)
            with torch.inference_mode():
                ref = module(x)
            refs = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
            gots = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
            assert len(gots) == len(refs), name
            for got, want in zip(gots, refs):
                assert got.shape == want.shape, name
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_manifest_describes_the_routing(exported):
    rm, out, _ = exported
    man = json.loads((out / MANIFEST).read_text())
    assert man["tap"] == rm.tap and man["mode"] == "cascade" and man["precision"] == "fp32"
    assert man["gamma"] == pytest.approx(rm.gamma) and man["tau"] == pytest.approx(rm.tau)
    assert man["pieces"]["route"]["temperature"] == pytest.approx(0.7)
    assert man["pieces"]["exit"]["temperature"] == pytest.approx(1.3)
    assert [c["classes"] for c in man["clusters"]] == [[0, 1], [2, 3], [4, 5]]
    assert man["input"]["mean"] == pytest.approx([0.3] * 3) and man["input"]["std"] == pytest.approx([0.25] * 3)
    assert all(len(p["sha256"]) == 64 for p in man["pieces"].values())
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_damaged_piece_is_refused(exported, tmp_path):
    _, out, _ = exported
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "tail.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(SinfError, match="tail"):
        read_manifest(copy)
    with pytest.raises(SinfError, match="missing routing.json"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("mode", ["sinf", "exit", "cascade"])
def test_runtime_sessions_decide_as_the_engine(exported, mode):
    rm, out, x = exported
    eng = SemanticInference(rm.model, rm.route if mode != "exit" else None,
                            rm.subgraphs if mode != "exit" else None, rm.exit if mode != "sinf" else None, tap=rm.tap,
                            mode=mode, gamma=rm.gamma, tau=rm.tau)
    ref = eng.run(x)
    runtimes = [open_runtime(out, "onnxruntime", threads=1, mode=mode), torch_runtime(rm, mode=mode),
                open_runtime(out, "onnxruntime", threads=1, mode=mode, fused=False), torch_runtime(rm, mode=mode, fused=False)]
    # a cascade export's front holds the exit head: the exit and cascade modes use it, SINF alone cannot
    assert runtimes[0].front_head == (None if mode == "sinf" else "exit") == runtimes[1].front_head
    assert runtimes[2].front_head is None
    try:
        runtimes.append(open_runtime(out, "openvino", threads=1, mode=mode))
    except SinfError as exc:  # openvino not installed
        assert "openvino" in str(exc)
    for rt in runtimes:
        for res in (rt.run(x), rt.run_pool(x, 7)):
            assert torch.equal(res.mode_per_sample, ref.mode_per_sample), rt.backend
            assert torch.equal(res.pred, ref.pred), rt.backend
            assert torch.equal(res.route, ref.route), rt.backend
            torch.testing.assert_close(res.route_conf, ref.route_conf, equal_nan=True, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(res.exit_conf, ref.exit_conf, equal_nan=True, rtol=1e-4, atol=1e-5)
    counts = ref.counts()
    if mode == "cascade":
        assert all(counts[k] > 0 for k in ("exit", "route", "fallback"))  # every path ran
    with torch.inference_mode():
        base = rm.model(x).argmax(1)
    assert torch.equal(runtimes[0].base_pool(x, 5), base)


def test_int8_export_quantizes_every_piece_on_calibration_data(tmp_path):
    import onnx

    rm, ds, x, y = _routed("resnet", "sinf")
    from sinf_core.data import normalise

    calib = CalibrationSet(normalise(ds.images, ds.mean, ds.std), ds.cluster_labels.clone(), "tiny")
    man = export_onnx(rm, tmp_path, "int8", calib)
    assert man["precision"] == "int8" and man["quantization"]["images_per_cluster"] == {"0": 12, "1": 12, "2": 12}
    for name, rec in man["pieces"].items():
        g = onnx.load(str(tmp_path / rec["file"]))
        ops = {n.op_type for n in g.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
        scales = [i for i in g.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
        assert scales, f"{name}: no per-channel weight scales"
    rt = open_runtime(tmp_path, "onnxruntime", threads=1)
    res = rt.run(x)
    eng = SemanticInference(rm.model, rm.route, rm.subgraphs, tap=rm.tap, gamma=rm.gamma)
    agree = float((res.pred == eng.run(x).pred).float().mean())
    assert agree > 0.8  # int8 rounding flips a few borderline decisions, not most
    with pytest.raises(SinfError, match="fp32"):
        open_runtime(tmp_path, "onnxruntime", "fp32")


def test_unsupported_combinations_say_so(exported):
    rm, out, _ = exported
    with pytest.raises(SinfError, match="int8"):
        torch_runtime(rm, "int8")
    with pytest.raises(SinfError, match="unknown backend"):
        open_runtime(out, "tensorrt")
    with pytest.raises(SinfError, match="export with `--precision int8`"):
        open_runtime(out, "onnxruntime", "int8")
    with pytest.raises(SinfError, match="CUDAExecutionProvider|cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            raise SinfError("cuda present: nothing to refuse")
        open_runtime(out, "onnxruntime", device="cuda")
    with pytest.raises(SinfError, match="needs the pieces"):
        from sinf_core.backends import RuntimeInference

        man = read_manifest(out)
        RuntimeInference({"stem": None, "tail": None}, man, mode="sinf")


def test_cli_export_without_a_bundle_is_one_clear_line(tmp_path, capsys):
    from sinf_core.cli import main

    code = main(["export", "cifar100_resnet56", "--bundle", str(tmp_path / "none"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no SINF bundle" in err and "Traceback" not in err
