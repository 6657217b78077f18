"""Routed inference over runtime sessions: the engine's exit / route / fallback logic on PyTorch,
ONNX Runtime or OpenVINO.

One session per piece of a routed model (``sinf_core.export``: stem, route and exit heads, one
subgraph per cluster, the unpruned tail, and the whole base network), created once.
``RuntimeInference`` runs them exactly as ``SemanticInference`` runs its modules: the stem once per
batch, the heads' calibrated confidences, the decision rule of ``engine.exit_decision`` /
``engine.route_decision``, then every group (cluster subgraphs, fallback, exit) in one vectorised
pass over the batch or the pooled batches (``engine.group_spans``), outputs back in input order.

Backends and precisions (``BACKEND_PRECISIONS``): ``torch`` runs the ``RoutedModel``'s PyTorch modules
(float32 or bf16 autocast, channels_last); ``onnxruntime`` and ``openvino`` run an export folder, float32
or int8 (an int8 export holds QDQ graphs: both runtimes run them with int8 kernels); OpenVINO can also
run a float32 export in bf16 on a CPU with bf16 support. ``device='cuda'`` picks ONNX Runtime's
CUDAExecutionProvider (or torch on CUDA). A combination this machine cannot run raises ``SinfError``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .engine import (EXIT, FALLBACK, MODES, ROUTE, InferenceResult, exit_decision, group_spans, merge_routes,
                     route_decision)
from .errors import SinfError
from .export import RoutedModel, read_manifest, routing_info

BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_PRECISIONS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "int8", "bf16")}
OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")
DEFAULT_OPENVINO_HINT = "LATENCY"  # one stream using every thread: the engine calls its sessions one at a time

Session = Callable[[np.ndarray], np.ndarray]  # float32 [n, ...] -> float32 [n, ...] (a tuple of them: the front piece)


def check_backend(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise SinfError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in BACKEND_PRECISIONS[backend]:
        raise SinfError(f"backend {backend!r} runs {', '.join(BACKEND_PRECISIONS[backend])}, not {precision!r}"
                        + ("; for int8 use onnxruntime or openvino" if precision == "int8" else ""))


def _threads(threads: int | None) -> int:
    n = (os.cpu_count() or 1) if threads is None else int(threads)
    if n < 1:
        raise SinfError(f"threads must be a positive integer, got {threads!r}")
    return n


# --------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------


def onnxruntime_providers(device: str = "cpu") -> list[str]:
    """The execution providers for ``device`` ('cpu' or 'cuda[:N]'), checked against this onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SinfError("backend 'onnxruntime' needs the package onnxruntime (pip install onnxruntime, or "
                        "onnxruntime-gpu for CUDA)") from None
    have = ort.get_available_providers()
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in have:
            raise SinfError(f"onnxruntime here has no CUDAExecutionProvider (it has {', '.join(have)}): install "
                            "onnxruntime-gpu on a machine with CUDA, or use device='cpu'")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if str(device) != "cpu":
        raise SinfError(f"unknown device {device!r} for onnxruntime; use 'cpu' or 'cuda'")
    return ["CPUExecutionProvider"]


class OrtSession:
    """One ONNX graph in an onnxruntime InferenceSession (all graph optimisations, ``threads`` intra-op)."""

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        providers = onnxruntime_providers(device)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = _threads(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting between runs: a routed model calls several sessions in turn (and a benchmark
        # interleaves runtimes), so threads spinning after one session's run steal the next one's cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray):
        out = self.session.run(self.outputs, {self.input: x})
        return out[0] if len(out) == 1 else tuple(out)


_OV_CORE = None


def _openvino_core():
    global _OV_CORE
    if _OV_CORE is None:
        try:
            import openvino as ov
        except ImportError:
            raise SinfError("backend 'openvino' needs the package openvino (pip install openvino)") from None
        _OV_CORE = ov.Core()
    return _OV_CORE


def openvino_supports_bf16() -> bool:
    caps = _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in [str(c).upper() for c in caps]


class OvSession:
    """One ONNX graph compiled by OpenVINO's CPU plugin (``hint`` LATENCY or THROUGHPUT, ``threads``
    inference threads, f32 or bf16 inference precision); one infer request, called synchronously."""

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32",
                 hint: str = DEFAULT_OPENVINO_HINT, device: str = "cpu"):
        if str(device) != "cpu":
            raise SinfError(f"the openvino backend runs on the CPU here, not {device!r}")
        if hint not in OPENVINO_HINTS:
            raise SinfError(f"unknown OpenVINO performance hint {hint!r}; choose one of {', '.join(OPENVINO_HINTS)}")
        core = _openvino_core()
        if precision == "bf16" and not openvino_supports_bf16():
            raise SinfError("this CPU has no bf16 support OpenVINO can use (no AVX512_BF16 / AMX); use fp32 or int8")
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": _threads(threads),
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.n_outputs = len(self.compiled.outputs)

    def __call__(self, x: np.ndarray):
        self.request.infer({0: x})
        out = tuple(self.request.get_output_tensor(i).data.copy() for i in range(self.n_outputs))  # buffers are reused
        return out[0] if len(out) == 1 else out


class TorchSession:
    """A PyTorch module as a session (channels_last, optional bf16 autocast, on ``device``)."""

    def __init__(self, module: torch.nn.Module, precision: str = "fp32", device: str = "cpu",
                 channels_last: bool = True):
        from .device import autocast
        from .fusion import prepare_for_inference

        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        self.module = prepare_for_inference(module, channels_last=channels_last, device=self.device)
        self._autocast = lambda: autocast(self.device, precision == "bf16")

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            y = self.module(t)
        if isinstance(y, tuple):
            return tuple(v.float().contiguous().cpu().numpy() for v in y)
        return y.float().contiguous().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# The routed runtime
# --------------------------------------------------------------------------------------------------


def _softmax_max(logits: np.ndarray, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibrated top probability float32 [n], argmax int64 [n]) of raw logits, as the engine computes them."""
    z = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return torch.softmax(z / float(temperature), dim=1).max(1)


class RuntimeInference:
    """The routed classifier over one session per piece (``sessions``: piece name -> ``Session``) and a
    routing manifest (``sinf_core.export``): the same decisions and outputs as ``SemanticInference``.

    ``mode`` / ``gamma`` / ``tau``: default the manifest's (a mode needs its pieces). ``run(x)`` one batch;
    ``run_pool(x, batch_size)`` throughput mode (stem and heads per batch, groups over the whole pool, each
    group in chunks of ``batch_size``); ``run_base`` / ``base_pool`` the exported base network alone.
    Inputs: normalised float32 [N, C, H, W] tensors or arrays, or uint8 images (normalised with the
    manifest's mean and std)."""

    def __init__(self, sessions: Mapping[str, Session], manifest: Mapping, mode: str | None = None,
                 gamma: float | None = None, tau: float | None = None, backend: str = "?", precision: str = "?",
                 fused: bool = True):
        from .engine import _check_unit_interval

        self.manifest, self.sessions = dict(manifest), dict(sessions)
        self.backend, self.precision = backend, precision
        self.mode = mode or manifest["mode"]
        if self.mode not in MODES:
            raise SinfError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        pieces = manifest["pieces"]
        need = {"stem", "tail"} | ({"route"} if self.mode != "exit" else set()) | (
            {"exit"} if self.mode != "sinf" else set())
        missing = sorted(need - set(self.sessions))
        if missing:
            raise SinfError(f"mode {self.mode!r} needs the pieces {', '.join(missing)}, which this export "
                            f"(mode {manifest['mode']!r}) does not have; export the model for mode {self.mode!r}")
        self.gamma = _check_unit_interval("gamma", manifest["gamma"] if gamma is None else gamma)
        self.tau = _check_unit_interval("tau", manifest["tau"] if tau is None else tau)
        self.input_shape = tuple(int(v) for v in manifest["input"]["shape"])
        self.mean, self.std = manifest["input"]["mean"], manifest["input"]["std"]
        self.num_classes = int(manifest["num_classes"])
        self.route_T = float(pieces["route"]["temperature"]) if "route" in pieces else 1.0
        self.exit_T = float(pieces["exit"]["temperature"]) if "exit" in pieces else 1.0
        self.K = int(manifest.get("num_clusters") or 0) if self.mode != "exit" else 0
        self.cluster_session: list[Session | None] = [None] * self.K
        self.cluster_classes: list[torch.Tensor | None] = [None] * self.K
        for c in manifest.get("clusters", []) if self.mode != "exit" else []:
            self.cluster_session[int(c["index"])] = self.sessions[c["piece"]]
            self.cluster_classes[int(c["index"])] = torch.as_tensor(c["classes"], dtype=torch.long)
        self.has_sub = torch.tensor([s is not None for s in self.cluster_session] or [False], dtype=torch.bool)
        if self.mode != "exit" and not any(s is not None for s in self.cluster_session):
            raise SinfError("no cluster subgraphs in this export: every routed input would fall back")
        # the front piece (stem + the head every input meets first, one graph) when the export has it for this
        # mode's first head; ``fused=False``: the stem and the head as separate sessions
        first = "route" if self.mode == "sinf" else "exit"
        self.front_head = first if fused and "front" in self.sessions and (
            pieces.get("front") or {}).get("head") == first else None

    def set_thresholds(self, gamma: float | None = None, tau: float | None = None) -> "RuntimeInference":
        from .engine import _check_unit_interval

        if gamma is not None:
            self.gamma = _check_unit_interval("gamma", gamma)
        if tau is not None:
            self.tau = _check_unit_interval("tau", tau)
        return self

    # -- inputs ---------------------------------------------------------------------------------
    def _prepare(self, images) -> np.ndarray:
        x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise SinfError(f"expected images of shape [N, {c}, {h}, {w}], got {list(x.shape)}")
        if x.shape[0] == 0:
            raise SinfError("empty batch: pass at least one image")
        if x.dtype == torch.uint8:
            from .data import normalise

            x = normalise(x, self.mean, self.std)
        elif not x.is_floating_point():
            raise SinfError(f"images must be float (normalised) or uint8, got {x.dtype}")
        return np.ascontiguousarray(x.detach().cpu().float().contiguous().numpy())

    # -- the front: stem + heads ----------------------------------------------------------------
    def _front(self, x: np.ndarray):
        n, K = x.shape[0], self.K
        first = None  # the logits of the head every input meets first, when the front piece computed them
        if self.front_head is not None:
            h, first = self.sessions["front"](x)
        else:
            h = self.sessions["stem"](x)
        group = torch.full((n,), K, dtype=torch.long)
        route = torch.full((n,), -1, dtype=torch.long)
        route_conf = torch.full((n,), math.nan, dtype=torch.float32)
        exit_conf = torch.full((n,), math.nan, dtype=torch.float32)
        exit_pred = None
        rest = None
        if self.mode != "sinf":
            conf, exit_pred = _softmax_max(first if self.front_head == "exit" else self.sessions["exit"](h), self.exit_T)
            exit_conf = conf
            exits = exit_decision(conf, self.tau)
            group = torch.where(exits, torch.full_like(group, K + 1), group)
            if self.mode == "cascade":
                rest = (~exits).nonzero().squeeze(1)
        if self.mode != "exit" and (rest is None or rest.numel()):
            hr = h if rest is None else h[rest.numpy()]
            rconf, rcls = _softmax_max(first if self.front_head == "route" else self.sessions["route"](hr), self.route_T)
            g = route_decision(rconf, rcls, self.gamma, self.has_sub)
            group, route, route_conf = merge_routes((group, route, route_conf), rest, (g, rcls, rconf))
        return h, group, route, route_conf, exit_conf, exit_pred

    # -- the back: grouped sessions -------------------------------------------------------------
    def _run_groups(self, h: np.ndarray, group: torch.Tensor, chunk: int | None,
                    exit_pred: torch.Tensor | None) -> torch.Tensor:
        n, K = h.shape[0], self.K
        pred = torch.empty(n, dtype=torch.long)
        order, counts, starts = group_spans(group, K)
        if counts[K + 1]:
            idx = order[starts[K + 1] : starts[K + 2]]
            pred.index_copy_(0, idx, exit_pred.index_select(0, idx))
        for g in range(K + 1):
            if not counts[g]:
                continue
            idx = order[starts[g] : starts[g + 1]]
            session = self.sessions["tail"] if g == K else self.cluster_session[g]
            classes = None if g == K else self.cluster_classes[g]
            for piece in ([idx] if chunk is None else idx.split(chunk)):
                z = torch.from_numpy(session(np.ascontiguousarray(h[piece.numpy()])))
                k = z.argmax(1)
                pred.index_copy_(0, piece, k if classes is None else classes[k])
        return pred

    # -- public entry points --------------------------------------------------------------------
    def run(self, images) -> InferenceResult:
        """One batch: stem once, group by route, outputs in input order."""
        return self.run_pool(images, None)

    def run_pool(self, images, batch_size: int | None = 256) -> InferenceResult:
        """Throughput mode: stem and heads ``batch_size`` images at a time, then every group over the
        whole pool in chunks of ``batch_size`` (``batch_size=None``: the input is one batch)."""
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SinfError(f"batch size must be a positive integer, got {batch_size!r}")
        x = self._prepare(images)
        n = x.shape[0]
        bs = n if batch_size is None else batch_size
        parts = [self._front(x[s : s + bs]) for s in range(0, n, bs)]
        if len(parts) == 1:
            h, group, route, route_conf, exit_conf, exit_pred = parts[0]
        else:
            h = np.concatenate([p[0] for p in parts])
            group, route, route_conf, exit_conf = (torch.cat([p[i] for p in parts]) for i in (1, 2, 3, 4))
            exit_pred = None if parts[0][5] is None else torch.cat([p[5] for p in parts])
        pred = self._run_groups(h, group, None if batch_size is None else bs, exit_pred)
        K = self.K
        mode = torch.where(group == K + 1, EXIT, torch.where(group == K, FALLBACK, ROUTE)).to(torch.int8)
        return InferenceResult(pred=pred, route=route, route_conf=route_conf, exit_conf=exit_conf,
                               mode_per_sample=mode)

    def predict(self, images) -> torch.Tensor:
        return self.run(images).pred

    __call__ = run

    def base_pool(self, images, batch_size: int | None = 256) -> torch.Tensor:
        """The exported base network alone (fixed batches): predictions [N]."""
        if "base" not in self.sessions:
            raise SinfError("this runtime has no base piece")
        x = self._prepare(images)
        bs = x.shape[0] if batch_size is None else batch_size
        return torch.cat([torch.from_numpy(self.sessions["base"](x[s : s + bs])).argmax(1)
                          for s in range(0, x.shape[0], bs)])

    def run_base(self, images) -> torch.Tensor:
        return self.base_pool(images, None)


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------


def open_session(path: str | Path, backend: str, precision: str = "fp32", *, threads: int | None = None,
                 device: str = "cpu", hint: str = DEFAULT_OPENVINO_HINT) -> Session:
    """One ONNX graph as a session on ``backend`` ('onnxruntime' or 'openvino')."""
    if backend == "onnxruntime":
        return OrtSession(path, threads, device)
    return OvSession(path, threads, precision, hint, device)


def open_runtime(folder: str | Path, backend: str = "onnxruntime", precision: str | None = None, *,
                 threads: int | None = None, device: str = "cpu", hint: str = DEFAULT_OPENVINO_HINT,
                 pieces: Sequence[str] | None = None, mode: str | None = None, gamma: float | None = None,
                 tau: float | None = None, fused: bool = True) -> RuntimeInference:
    """A ``RuntimeInference`` over an export folder (``sinf export``) on ``backend`` ('onnxruntime' or
    'openvino'). ``precision`` defaults to the export's; 'bf16' (OpenVINO) runs a float32 export in
    bf16. ``pieces``: only these (e.g. ['base']); default every piece. One session per piece, created here.
    ``fused``: run the front piece (stem + first head in one graph) where the export has it."""
    if backend == "torch":
        raise SinfError("the torch backend runs PyTorch modules, not an export folder: use torch_runtime(routed_model)")
    man = read_manifest(folder)
    exported = man["precision"]
    precision = precision or exported
    check_backend(backend, precision)
    if precision != exported and not (precision == "bf16" and exported == "fp32"):
        raise SinfError(f"the export at {folder} is {exported}; for {precision} export with `--precision {precision}`"
                        if precision == "int8" else f"cannot run a {exported} export in {precision}")
    folder = Path(folder)
    names = list(man["pieces"]) if pieces is None else list(pieces)
    unknown = [p for p in names if p not in man["pieces"]]
    if unknown:
        raise SinfError(f"the export at {folder} has no pieces {', '.join(unknown)}; it has {', '.join(man['pieces'])}")

    sessions = {name: open_session(folder / man["pieces"][name]["file"], backend, precision, threads=threads,
                                   device=device, hint=hint) for name in names}
    if pieces is not None and set(names) <= {"base"}:
        return _BaseOnly(sessions, man, backend, precision)
    return RuntimeInference(sessions, man, mode, gamma, tau, backend, precision, fused)


class _BaseOnly(RuntimeInference):
    """A runtime holding only the base piece (``run_base`` / ``base_pool``)."""

    def __init__(self, sessions, manifest, backend, precision):  # noqa: D107 - no routing to check
        self.manifest, self.sessions, self.backend, self.precision = dict(manifest), dict(sessions), backend, precision
        self.input_shape = tuple(int(v) for v in manifest["input"]["shape"])
        self.mean, self.std = manifest["input"]["mean"], manifest["input"]["std"]
        self.mode = "base"


def torch_runtime(rm: RoutedModel, precision: str = "fp32", *, device: str = "cpu", channels_last: bool = True,
                  mode: str | None = None, gamma: float | None = None, tau: float | None = None,
                  fused: bool = True) -> RuntimeInference:
    """A ``RuntimeInference`` over ``rm``'s PyTorch modules (the torch backend: fp32 or bf16 autocast)."""
    check_backend("torch", precision)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SinfError("device 'cuda' asked for, but torch sees no CUDA device here")
    sessions = {name: TorchSession(mod, precision, device, channels_last) for name, mod in rm.pieces().items()}
    return RuntimeInference(sessions, routing_info(rm, precision), mode, gamma, tau, "torch", precision, fused)
