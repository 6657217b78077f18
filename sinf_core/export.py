"""The routed model on deployment runtimes: ONNX graphs, one per piece, and a JSON routing manifest.

A routed model at one operating point (``RoutedModel``) has these pieces, each a plain function of one
float32 tensor with a dynamic batch axis, BatchNorm folded into the convolutions:

- ``base``: the whole base network, images -> logits [N, classes] (the reference every speed-up is against);
- ``stem``: images -> the features at the tap;
- ``route`` / ``exit``: tap features -> raw head logits [N, clusters] / [N, classes] (the manifest holds
  their temperatures: the runtime computes the calibrated softmax, as the engine does);
- ``tail``: tap features -> logits of the base network's unpruned tail (the fallback);
- ``cluster_MM``: tap features -> the cluster subgraph's logits over its own classes only [N, |classes|]
  (the manifest lists those classes; the global logits are -inf elsewhere, which a graph need not carry).

``export_onnx`` writes them into a folder with ``routing.json`` (tap, thresholds, clusters and their
classes, normalisation, precision, sha256 of every file), written last so a killed export leaves no
manifest that lies. ``precision="int8"`` quantizes every piece after export (static post-training
quantization, QDQ format, per-channel weights: ``quantize``), calibrated on the calibration split only.
``read_manifest`` checks a folder before anything loads it (``sinf_core.backends`` runs it).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .artifacts import BENCH, ROUTING, STATS, STUDIO, STUDIO_HEADS, onnx_file
from .config import DEFAULT_FILL
from .errors import SinfError
from .fusion import prepare_for_inference
from .io import atomic_write, sha256_file, write_json
from .models import SinfModel

FORMAT = "sinf-routed-onnx"
FORMAT_VERSION = 1
MANIFEST = ROUTING  # the export folder's manifest (re-exported)
OPSET = 18
PRECISIONS = ("fp32", "int8")
FIXED_PIECES = ("base", "stem", "front", "route", "exit", "tail")
FRONT_OUTPUTS = ("h", "logits")  # the front piece: the tap features and its head's logits

ProgressFn = Callable[[str, int, int], None]


def cluster_piece(m: int) -> str:
    return f"cluster_{int(m):02d}"


# --------------------------------------------------------------------------------------------------
# The pieces as modules
# --------------------------------------------------------------------------------------------------


class Stem(nn.Module):
    """Units 0..tap of ``model``: images -> tap features."""

    def __init__(self, model: SinfModel, tap: str):
        super().__init__()
        self.model, self.tap_index = model, model.unit_index(tap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_stem(x, self.tap_index)


class Front(nn.Module):
    """The stem and the first head a mode runs on every input (the exit head; the route head for SINF
    alone) as one graph: images -> (tap features, head logits). One call instead of two, and the runtime
    compiles both together (the tap features are not read back into a second session)."""

    def __init__(self, model: SinfModel, tap: str, head: nn.Module):
        super().__init__()
        self.stem, self.head = Stem(model, tap), head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        return h, self.head(h)


class Tail(nn.Module):
    """The units after the tap and the head of ``model``: tap features -> logits (the fallback)."""

    def __init__(self, model: SinfModel, tap: str):
        super().__init__()
        self.model, self.tap_index = model, model.unit_index(tap)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_tail(h, self.tap_index)


class OwnLogits(nn.Module):
    """A cluster subgraph's logits over its own head classes only: ``subgraph.head(features(h))``.

    ``classes`` (global class indices, None: every class) maps column j to class ``classes[j]``."""

    def __init__(self, subgraph: nn.Module):
        super().__init__()
        self.subgraph = subgraph
        cls = getattr(subgraph, "classes", None)
        self.classes = None if cls is None else [int(c) for c in cls.tolist()]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.subgraph.head(self.subgraph.features(h))


@dataclass
class RoutedModel:
    """A routed classifier at one operating point, as ready PyTorch modules (eval, BatchNorm folded).

    ``subgraphs``: {cluster index: ``Subgraph``} (restricted heads). ``route`` / ``exit``: the heads at
    ``tap`` (None when the mode does not use it). ``gamma`` / ``tau``: route / exit thresholds (1 =
    never). ``point``: the operating point record it came from (JSON-able)."""

    model_name: str
    model: SinfModel
    tap: str
    mode: str
    gamma: float
    tau: float
    route: nn.Module | None
    exit: nn.Module | None
    subgraphs: dict[int, nn.Module]
    cluster_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    point: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def pieces(self) -> dict[str, nn.Module]:
        """{piece name: module} in export order (each module maps one tensor to one tensor)."""
        out: dict[str, nn.Module] = {"base": self.model, "stem": Stem(self.model, self.tap)}
        if self.front_head is not None:
            out["front"] = Front(self.model, self.tap, getattr(self, self.front_head))
        if self.route is not None:
            out["route"] = self.route
        if self.exit is not None:
            out["exit"] = self.exit
        out["tail"] = Tail(self.model, self.tap)
        for m in sorted(self.subgraphs):
            out[cluster_piece(m)] = OwnLogits(self.subgraphs[m])
        return out

    def piece_input(self, name: str) -> str:
        return "x" if name in ("base", "stem", "front") else "h"

    def piece_output(self, name: str) -> str | list[str]:
        return list(FRONT_OUTPUTS) if name == "front" else "h" if name == "stem" else "logits"

    @property
    def front_head(self) -> str | None:
        """The head every input meets first ('exit', or 'route' for SINF alone), fused into the front piece."""
        head = "route" if self.mode == "sinf" else "exit"
        return head if getattr(self, head) is not None else None

    def tap_shape(self) -> tuple[int, ...]:
        with torch.inference_mode():
            return tuple(Stem(self.model, self.tap)(torch.zeros(1, *self.input_shape)).shape[1:])


def routed_model(model: SinfModel, model_name: str, tap: str, mode: str, *, route: nn.Module | None = None,
                 exit: nn.Module | None = None, subgraphs: Mapping[int, nn.Module] | None = None,
                 gamma: float = 1.0, tau: float = 1.0, cluster_names: Sequence[str] = (),
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 input_shape: Sequence[int] | None = None, point: Mapping | None = None) -> RoutedModel:
    """A ``RoutedModel`` of the given modules, each readied (an eval copy with BatchNorm folded); the
    mode decides which heads and subgraphs it keeps, as ``SemanticInference`` does. ``input_shape``: (C, H, W)
    of its input (default: the model's)."""
    from .engine import MODES, _check_unit_interval

    if mode not in MODES:
        raise SinfError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("sinf", "cascade") and (route is None or not subgraphs):
        raise SinfError(f"mode {mode!r} needs a route head and cluster subgraphs")
    if mode in ("exit", "cascade") and exit is None:
        raise SinfError(f"mode {mode!r} needs an exit head")
    model.unit_index(tap)
    ready = lambda m: prepare_for_inference(m, fold_bn=True).cpu()  # noqa: E731
    subs = {} if mode == "exit" else {int(k): ready(v) for k, v in (subgraphs or {}).items()}
    names = list(cluster_names) or [f"cluster {m}" for m in range(route.num_outputs if route is not None else 0)]
    return RoutedModel(model_name, ready(model), tap, mode, _check_unit_interval("gamma", gamma),
                       _check_unit_interval("tau", tau), None if mode == "exit" or route is None else ready(route),
                       None if mode == "sinf" or exit is None else ready(exit), subs, names,
                       tuple(float(v) for v in mean), tuple(float(v) for v in std),
                       tuple(int(v) for v in (model.input_shape if input_shape is None else input_shape)),
                       dict(point or {}))


def routed_model_from_bundle(exp, bundle, mode: str | None = None) -> RoutedModel:
    """The routed model at the operating point the bundle's benchmark chose for ``mode`` (default: its
    best mode) on the calibration split: the benchmark's heads (studio step), its subgraph score,
    schedule, rounding, mean replacement and BatchNorm re-estimation, exactly as the app builds them."""
    from .stats import ActivationStats
    from .subgraph import build_subgraph, make_cluster_specs
    from .tuning import bn_sample_set, chosen_points, heads_from_tensors

    if not bundle.has("bench") or not bundle.has("studio"):
        raise SinfError(f"bundle {bundle.root} has no benchmark (bench and studio steps); run `sinf build "
                        f"{bundle.manifest.get('model')}` with the benchmark first")
    bench, info = bundle.json(BENCH), bundle.json(STUDIO)
    points = chosen_points(bench)
    mode = mode or bench.get("best_mode") or next(iter(points), None)
    if mode not in points:
        raise SinfError(f"the bundle's benchmark chose no operating point for mode {mode!r} "
                        f"(it has {', '.join(points) or 'none'})")
    p = points[mode]
    tap = p["tap"]
    heads = heads_from_tensors(bundle.tensors(STUDIO_HEADS), info.get("heads", {}), STUDIO_HEADS)
    route, exit_head = heads.get("route", {}).get(tap), heads.get("exit", {}).get(tap)
    subs = {}
    if mode != "exit":
        from .pipeline import load_scores

        opts = info.get("options") or {}
        fill = ActivationStats.from_tensors(bundle.tensors(STATS)) if opts.get("fill", DEFAULT_FILL) == "mean" \
            else None
        n_bn = int(opts.get("bn_samples") or 0)
        bn = bn_sample_set(exp, n_bn, int(info.get("bn_seed", 0))) if n_bn else None
        specs = make_cluster_specs(exp.model, exp.model_name, tap, load_scores(bundle, info["score"]), exp.hierarchy,
                                   float(p["r_M"]), float(p["r_L"]), opts.get("multiple_of"), fill_stats=fill,
                                   bn_samples=bn)
        subs = {m: build_subgraph(exp.model, s) for m, s in specs.items()}
    return routed_model(exp.model.eval(), exp.model_name, tap, mode, route=route, exit=exit_head, subgraphs=subs,
                        gamma=1.0 if p.get("gamma") is None else p["gamma"], tau=1.0 if p.get("tau") is None else p["tau"],
                        cluster_names=exp.hierarchy.cluster_names, mean=exp.train.mean, std=exp.train.std,
                        input_shape=exp.input_shape, point=p)


def static_net_from_bundle(exp, bundle) -> nn.Module | None:
    """The benchmark's static network (one network pruned from its tap by one removed fraction, matched in
    FLOPs), rebuilt as the benchmark built it: its global score on the fit split, its kept counts, mean
    replacement and BatchNorm re-estimation on every cluster's samples as the benchmark's options say; an
    eval ``StaticNet`` (images -> logits), or None when the benchmark has no static network."""
    from .bench.inputs import _fit_stats, _global_scores
    from .bench.options import BenchOptions
    from .bench.static import StaticNet
    from .runtime import Runtime
    from .subgraph import SubgraphSpec, build_subgraph, keep_indices
    from .tuning import bn_sample_set

    bench = bundle.json(BENCH)
    st = bench.get("static") if isinstance(bench.get("static"), Mapping) else None
    if not st or not st.get("kept") or not st.get("score"):
        return None
    raw = bench.get("options") or {}
    opts = BenchOptions(static_scores=(st["score"],), fill=raw.get("fill", DEFAULT_FILL),
                        score_options=dict(raw.get("score_options") or {}))
    rt = Runtime.resolve(None, exp.model)
    scores = _global_scores(exp, opts, rt, lambda s, d, t: None)[st["score"]]
    keep = keep_indices(scores, {k: int(v) for k, v in st["kept"].items()})
    fill = None
    if opts.fill == "mean":
        stats = _fit_stats(exp, bundle, opts, rt, lambda s, d, t: None)
        fill = {k: stats.group_mean(k, range(exp.hierarchy.num_classes)).tolist() for k in keep}
    spec = SubgraphSpec(exp.model_name, st.get("tap"), keep, None, fill or {})
    n_bn = int(raw.get("bn_samples") or 0)
    if n_bn:
        spec = bn_sample_set(exp, n_bn, int(raw.get("seed", 0))).estimate(spec)
    return StaticNet(exp.model.eval(), st.get("tap"), build_subgraph(exp.model, spec)).eval()


def routing_info(rm: RoutedModel, precision: str = "fp32") -> dict:
    """What a runtime needs besides the graphs (the manifest without files): tap, mode, thresholds,
    head temperatures, clusters with their classes and piece names, normalisation."""
    pieces: dict[str, dict] = {name: {"input": rm.piece_input(name), "output": rm.piece_output(name)}
                               for name in rm.pieces()}
    if "front" in pieces:
        pieces["front"]["head"] = rm.front_head
    for name, head in (("route", rm.route), ("exit", rm.exit)):
        if head is not None:
            pieces[name].update({"temperature": float(head.temperature), "num_outputs": int(head.num_outputs)})
    clusters = []
    for m in sorted(rm.subgraphs):
        own = OwnLogits(rm.subgraphs[m])
        clusters.append({"index": m, "name": rm.cluster_names[m] if m < len(rm.cluster_names) else str(m),
                         "piece": cluster_piece(m),
                         "classes": own.classes if own.classes is not None else list(range(rm.num_classes))})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "sinf_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": rm.model_name, "mode": rm.mode, "tap": rm.tap,
        "gamma": rm.gamma, "tau": rm.tau, "precision": precision, "opset": OPSET, "num_classes": rm.num_classes,
        "num_clusters": len(rm.cluster_names), "cluster_names": list(rm.cluster_names),
        "input": {"shape": list(rm.input_shape), "layout": "NCHW float32, normalised", "mean": list(rm.mean),
                  "std": list(rm.std)},
        "pieces": pieces, "clusters": clusters, "operating_point": rm.point,
        "decision": "exit if the exit head's calibrated top probability >= tau (tau = 1: never); else route to the "
                    "cluster's subgraph if the router's >= gamma (gamma = 1: never); else the unpruned tail",
    }


# --------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SinfError(f"{what} needs the Python package {module!r}: pip install -r requirements.txt") from None


def export_module(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                  output_name: str | Sequence[str]) -> Path:
    """``module`` (one tensor in; one out, or a tuple named by a list ``output_name``) as an ONNX graph at
    ``path`` with a dynamic batch axis, atomically."""
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its stages
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module.eval(), (example,), None, input_names=[input_name],
                                     output_names=[output_name] if isinstance(output_name, str) else list(output_name),
                                     dynamic_shapes=({0: batch},), opset_version=OPSET,
                                     dynamo=True, verbose=False, optimize=True)
        prog.save(str(tmp), external_data=False)

    return atomic_write(path, write)


def _example(shape: Sequence[int], n: int = 2) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def export_onnx(rm: RoutedModel, out: str | Path, precision: str = "fp32",
                calibration: "CalibrationSet | None" = None, on_progress: ProgressFn | None = None,
                quantizer_options: Mapping | None = None) -> dict:
    """Write every piece of ``rm`` as ONNX into the folder ``out`` plus the routing manifest; returns
    the manifest. ``precision='int8'`` needs ``calibration`` (``calibration_set``: calibration-split
    images and their true clusters); each piece is then quantized on its own inputs (``quantize``)."""
    if precision not in PRECISIONS:
        raise SinfError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise SinfError("an int8 export needs calibration data (the calibration split's images)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SinfError(f"cannot export into {out}: it is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is not a valid export until the new manifest lands
    prog = on_progress or (lambda s, d, t: None)
    pieces = rm.pieces()
    shapes = {"x": rm.input_shape, "h": rm.tap_shape()}
    feeds = None
    if precision == "int8":
        feeds = calibration.feeds(rm)
    records: dict[str, dict] = {}
    for i, (name, module) in enumerate(pieces.items()):
        inp, oname, fname = rm.piece_input(name), rm.piece_output(name), onnx_file(name)
        _write_graph(module, _example(shapes[inp]), out / fname, inp, oname, None if feeds is None else feeds[name],
                     quantizer_options)
        records[name] = {"file": fname, "sha256": sha256_file(out / fname), "input": inp, "output": oname,
                         "input_shape": ["batch", *shapes[inp]]}
        prog(f"export {precision}", i + 1, len(pieces))
    manifest = routing_info(rm, precision)
    for name, rec in records.items():
        manifest["pieces"][name].update(rec)
    if precision == "int8":
        manifest["quantization"] = {**calibration.summary(), **quantizer_settings(**dict(quantizer_options or {}))}
    write_json(out / MANIFEST, manifest)
    return manifest


def _write_graph(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                 output_name: str | Sequence[str], feed: np.ndarray | None = None,
                 quantizer_options: Mapping | None = None) -> Path:
    """``module`` as one ONNX graph at ``path``: float32, or with ``feed`` (its calibration inputs) int8,
    quantized from a float32 graph written beside it first."""
    if feed is None:
        return export_module(module, example, path, input_name, output_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as tmp:
        fp32 = export_module(module, example, Path(tmp) / path.name, input_name, output_name)
        return quantize(fp32, path, feed, **dict(quantizer_options or {}))


def export_once(rm: RoutedModel, folder: str | Path, precision: str = "fp32",
                calibration: "CalibrationSet | None" = None, on_progress: ProgressFn | None = None) -> tuple[dict, bool]:
    """``export_onnx`` of ``rm`` into ``folder`` unless the folder already holds a sound export of the
    same operating point (``rm.point``), mode, precision and pieces: (manifest, whether it was written now)."""
    try:
        man = read_manifest(folder)
        if (man.get("operating_point") == rm.point and man.get("precision") == precision and man.get("mode") == rm.mode
                and set(man.get("pieces", {})) == set(rm.pieces())):  # an export of an earlier version may lack one
            return man, False
    except (SinfError, KeyError):
        pass
    return export_onnx(rm, folder, precision, calibration if precision == "int8" else None, on_progress), True


def export_network(net: nn.Module, path: str | Path, precision: str = "fp32",
                   calibration: "CalibrationSet | None" = None, input_shape: Sequence[int] = (3, 32, 32)) -> Path:
    """One whole network (images -> logits, e.g. the benchmark's static network) as one ONNX graph at
    ``path``, BatchNorm folded; int8: quantized on ``calibration``'s images (the calibration split)."""
    if precision not in PRECISIONS:
        raise SinfError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise SinfError("an int8 export needs calibration data (the calibration split's images)")
    return _write_graph(prepare_for_inference(net, fold_bn=True).cpu(), _example(input_shape), Path(path), "x", "logits",
                        None if precision == "fp32" else calibration.images.numpy())


def read_manifest(folder: str | Path, verify: bool = True) -> dict:
    """The routing manifest of an export folder, checked (format, version, every file's sha256)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SinfError(f"no routed-model export at {folder} (missing {MANIFEST}); write one with `sinf export`")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SinfError(f"{path} is corrupted ({exc}); export again") from exc
    if man.get("format") != FORMAT:
        raise SinfError(f"{path} is not a SINF routed-model manifest")
    if man.get("format_version") != FORMAT_VERSION:
        raise SinfError(f"{path} has format version {man.get('format_version')}; this sinf reads {FORMAT_VERSION}. "
                        "Export again.")
    if verify:
        for name, rec in man["pieces"].items():
            p = folder / rec["file"]
            if not p.is_file() or sha256_file(p) != rec["sha256"]:
                raise SinfError(f"export {folder}: piece {name!r} ({rec['file']}) is missing or damaged; export again")
    return man


# --------------------------------------------------------------------------------------------------
# int8: static post-training quantization, calibrated on the calibration split only
# --------------------------------------------------------------------------------------------------

DEFAULT_CALIB_SAMPLES = 1024  # calibration images for the stem, base, heads and tail (a stratified part)
DEFAULT_CALIB_METHOD = "minmax"
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class CalibrationSet:
    """Calibration-split images (normalised float32 [N, C, H, W]) and each one's true cluster [N].

    ``feeds(rm)`` gives every piece's calibration inputs: the base and the stem take images; the
    heads and the unpruned tail take the tap features of the same images; cluster m's subgraph takes
    the tap features of cluster m's images only (what it will see once routed)."""

    images: torch.Tensor
    clusters: torch.Tensor
    source: str = "calibration split"

    def feeds(self, rm: RoutedModel, batch: int = 256) -> dict[str, np.ndarray]:
        stem = Stem(rm.model, rm.tap).eval()
        with torch.inference_mode():
            h = torch.cat([stem(x) for x in self.images.split(batch)])
        x, h = self.images.numpy(), h.numpy()
        out = {"base": x, "stem": x, "front": x, "route": h, "exit": h, "tail": h}
        for m in rm.subgraphs:
            own = (self.clusters == m).numpy()
            if not own.any():
                raise SinfError(f"no calibration images of cluster {m} to calibrate its subgraph on")
            out[cluster_piece(m)] = h[own]
        return out

    def summary(self) -> dict:
        counts = torch.bincount(self.clusters.long()).tolist()
        return {"calibration": self.source, "images": int(self.images.shape[0]),
                "images_per_cluster": {str(i): int(c) for i, c in enumerate(counts)}}


def calibration_set(exp, max_samples: int | None = DEFAULT_CALIB_SAMPLES, seed: int = 0) -> CalibrationSet:
    """The experiment's calibration split (METHOD.md section 0: never the report split), a class-
    stratified subsample of ``max_samples`` images (None: all)."""
    from .data import normalise, stratified_split

    calib = exp.calib_data()
    if len(calib) == 0:
        raise SinfError("the calibration split is empty: int8 quantization is calibrated on it")
    idx = np.arange(len(calib))
    if max_samples is not None and max_samples < len(calib):
        _, idx = stratified_split(calib.labels.numpy(), max_samples / len(calib), seed)
    idx = torch.as_tensor(np.sort(idx))
    return CalibrationSet(normalise(calib.images[idx], calib.mean, calib.std), calib.cluster_labels[idx].clone(),
                          f"calibration split ({exp.splits.protocol} protocol), {len(idx)} of {len(calib)} images")


def quantizer_settings(method: str = DEFAULT_CALIB_METHOD, per_channel: bool = True, batch: int = 128) -> dict:
    if method not in CALIB_METHODS:
        raise SinfError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    return {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activations": "uint8",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor", "calibration_method": method,
            "calibration_batch": int(batch)}


def quantize(fp32: str | Path, out: str | Path, inputs: np.ndarray, method: str = DEFAULT_CALIB_METHOD,
             per_channel: bool = True, batch: int = 128) -> Path:
    """Static post-training int8 quantization of the ONNX graph ``fp32`` into ``out`` (atomically): QDQ
    format (runs with int8 kernels on onnxruntime and OpenVINO), uint8 activations, int8 weights per
    output channel, activation ranges from ``inputs`` (the piece's calibration inputs, [N, ...])."""
    quantizer_settings(method, per_channel, batch)
    q = _require("onnxruntime.quantization", "int8 quantization")
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if inputs.shape[0] == 0:
        raise SinfError(f"no calibration inputs to quantize {Path(fp32).name} with")
    name = _require("onnx", "int8 quantization").load(str(fp32)).graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(range(0, inputs.shape[0], batch))

        def get_next(self):
            s = next(self.it, None)
            return None if s is None else {name: inputs[s : s + batch]}

    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="sinf-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

        def write(path: Path) -> None:
            q.quantize_static(str(pre), str(path), Reader(), quant_format=q.QuantFormat.QDQ,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              per_channel=per_channel, calibrate_method=methods[method],
                              extra_options={"CalibTensorRangeSymmetric": False})

        return atomic_write(out, write)
