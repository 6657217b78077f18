"""The Live page on the deployment runtimes: the current configuration as ONNX pieces (``sinf export``;
int8 quantized on the calibration split) run by ONNX Runtime or OpenVINO, or PyTorch in bf16, with the
base network on the same runtime and precision beside it, so a speed-up is against that runtime's base."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import streamlit as st
import torch

from sinf_core.artifacts import folder_name
from sinf_core.errors import SinfError
from sinf_core.io import cache_dir

from . import state, studio
from .progress import Progress, memo
from .session import Source

EXPORTS = "exports"  # under the cache folder: <model>/<mode>_<configuration>_<precision>
KEEP_EXPORTS = 8  # per model: the oldest exports beyond these are removed when a new one is written


@dataclass(frozen=True)
class Backend:
    """One choice of runtime and precision, as the Live page offers it."""

    backend: str
    precision: str
    label: str

    @property
    def is_default(self) -> bool:
        return self.backend == "torch" and self.precision == "fp32"


PYTORCH_FP32 = Backend("torch", "fp32", "PyTorch float32")
_OFFERED = (PYTORCH_FP32, Backend("torch", "bf16", "PyTorch bf16 autocast"),
            Backend("onnxruntime", "fp32", "ONNX Runtime float32"), Backend("onnxruntime", "int8", "ONNX Runtime int8"),
            Backend("openvino", "fp32", "OpenVINO float32"), Backend("openvino", "int8", "OpenVINO int8"),
            Backend("openvino", "bf16", "OpenVINO bf16"))


@st.cache_resource(show_spinner=False)
def choices(device: str = "cpu") -> list[Backend]:
    """The combinations this machine runs: the runtime is installed, bf16 only where it is fast, and
    OpenVINO only on a CPU device."""
    import importlib.util

    from sinf_core.backends import openvino_supports_bf16
    from sinf_core.device import bf16_is_fast

    out = []
    for b in _OFFERED:
        if b.backend != "torch" and importlib.util.find_spec(b.backend) is None:
            continue
        if b.backend == "openvino" and not device.startswith("cpu"):
            continue
        if b.precision == "bf16" and not (bf16_is_fast(torch.device(device)) if b.backend == "torch"
                                          else openvino_supports_bf16()):
            continue
        out.append(b)
    return out


def _point(src: Source, cfg: dict) -> dict:
    """What the export depends on (the thresholds are set per engine, not exported): JSON as stored."""
    keys = dict.fromkeys(studio.SPEC_KEYS + ("mode",))
    point = {k: cfg.get(k) for k in keys}
    point["steps"] = {s: state.step_key(src, s) for s in ("scores", "stats", "studio")}
    return json.loads(json.dumps(point, sort_keys=True, default=str))


def routed(src: Source, cfg: dict):
    """The ``RoutedModel`` of ``cfg``: the app's own subgraphs and heads at its tap (what Live runs in PyTorch)."""
    from sinf_core.export import routed_model

    def compute():
        exp = state.experiment(src)
        mode, tap = cfg.get("mode") or "sinf", cfg["tap"]
        hd = studio.heads(src)
        subs = studio.subgraph_modules(src, cfg) if mode != "exit" else None
        return routed_model(exp.model.eval(), exp.model_name, tap, mode, route=hd["route"].get(tap),
                            exit=hd["exit"].get(tap), subgraphs=subs, gamma=float(cfg["gamma"]), tau=float(cfg["tau"]),
                            cluster_names=exp.hierarchy.cluster_names, mean=exp.train.mean, std=exp.train.std,
                            input_shape=exp.input_shape, point=_point(src, cfg))

    return memo((src.key, "routed", studio.config_key(_point(src, cfg))), compute)


def export_folder(src: Source, cfg: dict, precision: str):
    """The export of ``cfg`` at ``precision`` ('fp32' or 'int8') in the cache, written when it is missing
    or damaged (with a bar; an export on disk is checked against its manifest's checksums, not trusted)."""
    from sinf_core.export import calibration_set, export_once

    point = _point(src, cfg)
    key = hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / EXPORTS / folder_name(src.model) / f"{point['mode']}_{key}_{precision}"
    rm = routed(src, cfg)
    progress = Progress(f"Exporting the pieces as ONNX ({precision}"
                        + (", quantized on the calibration split" if precision == "int8" else "") + "; once)")
    try:
        calib = calibration_set(state.experiment(src)) if precision == "int8" else None
        _, written = export_once(rm, folder, precision, calib, lambda stage, done, total: progress(done, total, stage))
    finally:
        progress.close()
    if written:
        _remove_old_exports(folder.parent, keep=folder)
    return folder


def _remove_old_exports(root, keep) -> None:
    """Keep the ``KEEP_EXPORTS`` most recent export folders under ``root`` (``keep`` always): sessions
    already open read their graphs when created, so removing a folder does not disturb them."""
    import shutil

    olds = sorted((p for p in root.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in olds[KEEP_EXPORTS - 1:]:
        shutil.rmtree(p, ignore_errors=True)


def _sessions(src: Source, cfg: dict, b: Backend):
    """A ``RuntimeInference`` over ``cfg``'s pieces on ``b`` (sessions created once), with the base piece."""
    from sinf_core.backends import open_runtime, torch_runtime

    def compute():
        if b.backend == "torch":
            return torch_runtime(routed(src, cfg), b.precision, device=str(state.experiment(src).device))
        folder = export_folder(src, cfg, "int8" if b.precision == "int8" else "fp32")
        with st.spinner(f"Opening {b.label} sessions ..."):
            return open_runtime(folder, b.backend, b.precision, threads=torch.get_num_threads())

    return memo((src.key, "sessions", b.backend, b.precision, studio.config_key(_point(src, cfg))), compute)


@dataclass
class LiveRunners:
    """What the Live page times on one backend: SINF (``sinf(x_u8) -> InferenceResult``) and the base network
    (``base(x_u8) -> logits or predictions [N]``), both on ``backend``, both including pre-processing."""

    backend: Backend
    sinf: object
    base: object


def runners(src: Source, cfg: dict, b: Backend, eng=None) -> LiveRunners:
    """SINF and the base on ``b``; on PyTorch float32 the page's own engine (``eng``) and base model."""
    if b.is_default:
        return LiveRunners(b, None if eng is None else eng.run, studio.base_predict(src))
    from sinf_core.backends import RuntimeInference

    if b not in choices():
        raise SinfError(f"{b.label} cannot run on this machine")
    rt = _sessions(src, cfg, b)
    mode = cfg.get("mode") or "sinf"
    sinf = RuntimeInference(rt.sessions, rt.manifest, mode, float(cfg["gamma"]), float(cfg["tau"]), rt.backend,
                            rt.precision)  # its own thresholds: the sessions are shared by every browser session
    return LiveRunners(b, sinf.run, rt.run_base)


def predictions(out: torch.Tensor) -> torch.Tensor:
    """Class predictions [N] of a base runner's output (logits [N, classes] or predictions [N])."""
    return out.argmax(1) if out.ndim == 2 else out


def selection_record(src: Source) -> dict | None:
    """The benchmark's network-selection contender (``select``: its chain, gate temperatures and chosen
    thresholds), or None when the bundle's benchmark has none."""
    rec = (state.bench(src) or {}).get("select")
    point = rec.get("operating_point") if isinstance(rec, dict) else None
    if not point or not rec.get("networks") or len(rec["networks"]) < 2:
        return None
    return rec


def selection_runner(src: Source):
    """``run(x_u8) -> SelectionResult``: the benchmark's chosen chain served on PyTorch like the base model
    (pre-processing included). The chain's networks come from the registry (weights fetched on first use,
    as for the app's model); loaded on the first call of this function."""
    from sinf_core.bench.select import chain_networks
    from sinf_core.selection import Gate, NetworkSelection

    rec = selection_record(src)
    if rec is None:
        raise SinfError("the bundle's benchmark has no network-selection contender (`sinf bench MODEL --chain ...`)")

    def compute():
        from .downloads import ensure_weights

        exp = state.experiment(src)
        names = rec["networks"][:-1]
        if rec["networks"][-1] != exp.model_name:
            raise SinfError(f"the benchmark's chain ends with {rec['networks'][-1]}, not with {exp.model_name}")
        for name in names:
            ensure_weights(name)
        with st.spinner(f"Loading {', '.join(names)} for network selection ..."):
            nets = [studio._ready(src, m) for _, m in chain_networks(exp, names, exp.device)]
        gates = [Gate(float(t), float(th)) for t, th in zip(rec["gate_temperatures"], rec["operating_point"]["thresholds"])]
        base = studio.inference_base(src)
        chain = NetworkSelection([lambda x, n=n: n(x).float() for n in nets], gates, lambda x: base(x).argmax(1))
        return lambda x_u8: chain.run(studio.prepare_images(x_u8, src))

    return memo((src.key, "selection", state.step_key(src, "bench")), compute)


def batch_extras(tp: dict, labels: torch.Tensor, chained: list | None, rec: dict | None) -> dict:
    """What the Live batch run shows beyond SINF vs its base: the paired ratios against PyTorch's float32
    base (when it ran beside a runtime) and network selection's accuracy, paired ratio and shares."""
    from sinf_core.timing import spread

    def vs(a: str, b: str) -> dict:
        return spread([x / y for x, y in zip(tp[a]["seconds"], tp[b]["seconds"])])

    out = {"pytorch": None, "select": None}
    if "pytorch" in tp:
        out["pytorch"] = {"ips": tp["pytorch"]["ips"], "base": vs("pytorch", "base"), "sinf": vs("pytorch", "sinf")}
    if chained is not None:
        stage = torch.cat([c.stage for c in chained])
        out["select"] = {
            "top1": 100 * float((torch.cat([c.pred for c in chained]) == labels).double().mean()),
            "ratio": tp["select"]["ratio"], "ips": tp["select"]["ips"], "networks": rec["networks"],
            "answered": [float((stage == k).double().mean()) for k in range(len(rec["networks"]))],
            "bench_ratio": rec.get("throughput_ratio")}
    return out
