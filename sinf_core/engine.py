"""Routed inference: stem once, then per input exit / route / fall back (METHOD.md sections 8 and 10).

Per input, at the tap where the stem ends:
- ``exit``: the early-exit head answers when its temperature-scaled top probability is >= tau;
- ``route``: otherwise the router's cluster subgraph runs when the router's top probability is >= gamma;
- ``fallback``: otherwise the base network's own unpruned tail runs.
``gamma = 1`` means "always fall back" and ``tau = 1`` means "never exit", explicitly (a float
softmax can round to exactly 1.0, so a plain ``>=`` would not guarantee it).

Execution is grouped: the batch (or, in throughput mode, a whole pool of batches) is sorted by group
once (argsort + bincount), every group goes through its module with ``index_select`` and its outputs
go back in input order with ``index_copy_``; the only Python loop is over the <= K + 2 groups (and,
in throughput mode, over chunks of ``batch_size`` within a group). The router's and the exit head's
cost is always part of the run.

Modes: ``sinf`` (router + subgraphs + fallback), ``exit`` (exit head + unpruned tail) and ``cascade``
(exit, then route, then fallback).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .device import autocast
from .errors import SinfError
from .models import SinfModel
from .router import ExitPredictor, RouteHead, RoutePredictor, TapHeads
from .runtime import Runtime

MODES = ("sinf", "exit", "cascade")
EXIT, ROUTE, FALLBACK = 0, 1, 2
MODE_NAMES = ("exit", "route", "fallback")


@dataclass
class InferenceResult:
    """Per-sample outputs in input order (tensors on CPU).

    ``pred`` int64 [N] fine class; ``route`` int64 [N] the router's cluster (-1 where the router did
    not run: exited samples, or mode 'exit'); ``route_conf`` float32 [N] the router's calibrated top
    probability (NaN where it did not run); ``exit_conf`` float32 [N] the exit head's calibrated top
    probability (NaN without an exit head); ``mode_per_sample`` int8 [N] with codes EXIT=0, ROUTE=1,
    FALLBACK=2 (names in ``MODE_NAMES``); ``logits`` float32 [N, classes] of whichever module
    answered (raw exit-head logits for exits; -inf outside a restricted subgraph's classes), only
    when the engine keeps logits.
    """

    pred: torch.Tensor
    route: torch.Tensor
    route_conf: torch.Tensor
    exit_conf: torch.Tensor
    mode_per_sample: torch.Tensor
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    @property
    def fallback(self) -> torch.Tensor:
        """bool [N]: the sample ran through the unpruned tail."""
        return self.mode_per_sample == FALLBACK

    def modes(self) -> list[str]:
        return [MODE_NAMES[int(m)] for m in self.mode_per_sample.tolist()]

    def counts(self) -> dict[str, int]:
        c = torch.bincount(self.mode_per_sample.long(), minlength=3).tolist()
        return {name: int(c[i]) for i, name in enumerate(MODE_NAMES)}


def exit_decision(exit_conf: torch.Tensor, tau: float) -> torch.Tensor:
    """bool [n]: which inputs the exit head answers (calibrated top probability >= tau; tau = 1: none)."""
    return exit_conf >= tau if tau < 1.0 else torch.zeros_like(exit_conf, dtype=torch.bool)


def route_decision(route_conf: torch.Tensor, route_cls: torch.Tensor, gamma: float, has_sub: torch.Tensor) -> torch.Tensor:
    """Group [n] int64 of inputs the exit head did not answer: the router's cluster where its calibrated
    top probability is >= gamma (gamma = 1: never) and that cluster has a subgraph (``has_sub`` bool
    [K]), else K (the fallback)."""
    K = int(has_sub.shape[0])
    routed = route_conf >= gamma if gamma < 1.0 else torch.zeros_like(route_conf, dtype=torch.bool)
    return torch.where(routed & has_sub[route_cls], route_cls, torch.full_like(route_cls, K))


def merge_routes(front: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rest: torch.Tensor | None,
                 routed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(group, route, route confidence) [N] after the router's decision ``routed`` (its group, cluster and
    confidence for the inputs ``rest``; None: for all of them) is written into ``front``, in place."""
    if rest is None:
        return routed
    for whole, part in zip(front, routed):
        whole.index_copy_(0, rest, part)
    return front


def group_spans(group: torch.Tensor, K: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Groups 0..K-1 (clusters), K (fallback), K+1 (exit) as (order: input indices sorted by group,
    stably; counts per group; starts: group g's inputs are ``order[starts[g]:starts[g + 1]]``)."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=K + 2).tolist()  # the one host sync
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return order, counts, starts


def _check_unit_interval(name: str, v: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise SinfError(f"{name} must be a number in [0, 1], got {v!r}") from None
    if not 0.0 <= f <= 1.0:  # also rejects NaN
        raise SinfError(f"{name} must be in [0, 1], got {v}")
    return f


def _as_head(obj: TapHeads | RouteHead | None, what: str) -> tuple[RouteHead | None, str | None]:
    if obj is None:
        return None, None
    if isinstance(obj, TapHeads):
        return obj.head(), obj.tap_
    if isinstance(obj, RouteHead):
        return obj, None
    raise SinfError(f"{what} must be a fitted {'RoutePredictor' if what == 'router' else 'ExitPredictor'} or a RouteHead")


class _FullTail(nn.Module):
    """The base model's unpruned tail after ``tap`` as a module (the fallback)."""

    def __init__(self, model: SinfModel, tap: str):
        super().__init__()
        self.model, self.tap = model, tap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_tail(h, self.tap)


class SemanticInference:
    """The routed classifier.

    ``model``: the base ``SinfModel``. ``router``: a fitted ``RoutePredictor`` (its ``tap_`` is the
    attachment point) or a ``RouteHead`` with ``tap``. ``subgraphs``: one module per cluster
    (sequence indexed by cluster, or {cluster: module}); a module maps the stem output at the tap to
    global logits [n, classes]; a missing / None entry sends that cluster's inputs to the fallback.
    ``exit_head``: a fitted ``ExitPredictor`` (at the same tap) or a ``RouteHead``.
    ``gamma`` / ``tau``: route / exit thresholds in [0, 1]. ``rt``: how it runs (a ``Runtime``: device,
    bf16 autocast, channels-last layout; default: the model's device): model, heads and subgraphs are
    moved there once; ``cuda_streams``: run groups on separate CUDA streams.
    ``input_shape``: (C, H, W) the model expects (default: its ``input_shape``). ``mean`` / ``std``:
    normalisation, needed to pass uint8 images. ``keep_logits``: also return the answering module's
    logits. ``fold_batchnorm``: run on copies of the model, heads and subgraphs with each conv ->
    BatchNorm pair folded into the conv (``fusion.fold_batchnorm``; same function up to float rounding,
    faster on CPU); the modules given are then left as they are.
    """

    def __init__(
        self,
        model: SinfModel,
        router: RoutePredictor | RouteHead | None = None,
        subgraphs: Sequence[nn.Module | None] | Mapping[int, nn.Module] | None = None,
        exit_head: ExitPredictor | RouteHead | None = None,
        *,
        tap: str | None = None,
        mode: str = "sinf",
        gamma: float = 0.5,
        tau: float = 1.0,
        rt: Runtime | None = None,
        cuda_streams: bool = False,
        input_shape: tuple[int, int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        keep_logits: bool = False,
        fold_batchnorm: bool = False,
    ):
        if mode not in MODES:
            raise SinfError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        self.rt = rt = Runtime.resolve(rt, model)
        self.device, self.bf16, self.channels_last = rt.device, rt.bf16, rt.channels_last
        self.keep_logits = bool(keep_logits)
        self.cuda_streams = bool(cuda_streams) and self.device.type == "cuda"
        input_shape = model.input_shape if input_shape is None else input_shape
        if len(input_shape) != 3:
            raise SinfError(f"input_shape must be (channels, height, width), got {input_shape}")
        self.input_shape = tuple(int(v) for v in input_shape)
        if (mean is None) != (std is None):
            raise SinfError("give both mean and std (or neither)")
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.gamma = _check_unit_interval("gamma", gamma)
        self.tau = _check_unit_interval("tau", tau)

        router_head, router_tap = _as_head(router, "router")
        exit_mod, exit_tap = _as_head(exit_head, "exit head")
        if mode in ("sinf", "cascade") and router_head is None:
            raise SinfError(f"mode {mode!r} needs a router")
        if mode in ("exit", "cascade") and exit_mod is None:
            raise SinfError(f"mode {mode!r} needs an exit head")
        if mode == "exit":
            router_head, router_tap = None, None
        if mode == "sinf":
            exit_mod, exit_tap = None, None
        taps = {t for t in (tap, router_tap, exit_tap) if t is not None}
        if len(taps) > 1:
            raise SinfError(f"router, exit head and tap disagree on the attachment point: {sorted(taps)}")
        if not taps:
            raise SinfError("give the tap (the unit where the stem ends) when passing bare RouteHeads")
        self.tap = taps.pop()
        self.tap_index = model.unit_index(self.tap)

        self.folded = bool(fold_batchnorm)
        ready = functools.partial(rt.ready, fold_bn=self.folded)
        self.model = ready(model)
        self.router = None if router_head is None else ready(router_head)
        self.exit_head = None if exit_mod is None else ready(exit_mod)
        self.fallback_tail = _FullTail(self.model, self.tap)
        self.num_clusters = 0 if self.router is None else self.router.num_outputs
        self.subgraphs: list[nn.Module | None] = [None] * self.num_clusters
        if self.router is not None:
            items = subgraphs.items() if isinstance(subgraphs, Mapping) else enumerate(subgraphs or [])
            for m, sub in items:
                m = int(m)
                if not 0 <= m < self.num_clusters:
                    raise SinfError(f"subgraph for cluster {m}, but the router has clusters 0..{self.num_clusters - 1}")
                if sub is not None:
                    sub_tap = getattr(sub, "tap", self.tap)
                    if sub_tap != self.tap:
                        raise SinfError(f"the subgraph of cluster {m} starts after tap {sub_tap!r}, not {self.tap!r}")
                    self.subgraphs[m] = ready(sub)
            if mode in ("sinf", "cascade") and not any(s is not None for s in self.subgraphs):
                raise SinfError("no subgraphs given: every routed input would fall back")
        if self.exit_head is not None and self.exit_head.num_outputs != int(model.num_classes):
            raise SinfError(f"the exit head predicts {self.exit_head.num_outputs} classes, the model {model.num_classes}")
        self._has_sub = torch.tensor([s is not None for s in self.subgraphs] or [False], dtype=torch.bool,
                                     device=self.device)
        self._streams: list[torch.cuda.Stream] = []
        if self.cuda_streams:
            self._streams = [torch.cuda.Stream(self.device) for _ in range(min(4, self.num_clusters + 1))]

    # -- settings -------------------------------------------------------------------------
    def set_thresholds(self, gamma: float | None = None, tau: float | None = None) -> "SemanticInference":
        """Change gamma and/or tau (validated to lie in [0, 1]) without rebuilding the engine."""
        if gamma is not None:
            self.gamma = _check_unit_interval("gamma", gamma)
        if tau is not None:
            self.tau = _check_unit_interval("tau", tau)
        return self

    # -- validation -----------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        c, h, w = self.input_shape
        if not isinstance(images, torch.Tensor):
            raise SinfError(f"images must be a tensor [N, {c}, {h}, {w}], got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            hint = " (a single image: add a batch dimension with x.unsqueeze(0))" if images.ndim == 3 else ""
            raise SinfError(f"expected images of shape [N, {c}, {h}, {w}], got {list(images.shape)}{hint}")
        if images.shape[0] == 0:
            raise SinfError("empty batch: pass at least one image")
        if images.dtype == torch.uint8:
            if self.mean is None:
                raise SinfError("uint8 images need the engine's mean and std; pass normalised float images or set mean/std")
        elif not images.is_floating_point():
            raise SinfError(f"images must be float (normalised) or uint8, got {images.dtype}")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            from .data import normalise

            x = normalise(x, self.mean, self.std)
        elif x.dtype != torch.float32:
            x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- the front: stem + heads, per batch -------------------------------------------------
    def _front(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor | None]:
        """Stem and heads on one prepared batch. Returns (h, group [n] int64, route [n], route_conf [n],
        exit_conf [n], exit logits [n, classes] or None). Groups: 0..K-1 subgraph of that cluster,
        K fallback, K+1 exit."""
        n, K = x.shape[0], self.num_clusters
        dev = self.device
        with autocast(dev, self.bf16):
            h = self.model.forward_stem(x, self.tap_index)
            if h.shape[1] != (self.router or self.exit_head).in_channels:
                raise SinfError(f"the stem at {self.tap!r} gives {h.shape[1]} channels but the heads expect "
                                f"{(self.router or self.exit_head).in_channels}: heads from another model?")
            group = torch.full((n,), K, dtype=torch.long, device=dev)
            route = torch.full((n,), -1, dtype=torch.long, device=dev)
            route_conf = torch.full((n,), math.nan, dtype=torch.float32, device=dev)
            exit_conf = torch.full((n,), math.nan, dtype=torch.float32, device=dev)
            exit_logits = None
            rest = None  # indices still undecided after the exit head (None = all)
            if self.exit_head is not None:
                exit_logits = self.exit_head(h).float()
                conf = torch.softmax(exit_logits / self.exit_head.temperature.float(), dim=1).amax(1)
                exit_conf = conf
                exits = exit_decision(conf, self.tau)
                group = torch.where(exits, torch.full_like(group, K + 1), group)
                if self.router is not None:
                    rest = (~exits).nonzero().squeeze(1)
            if self.router is not None:
                hr = h if rest is None else h.index_select(0, rest)
                probs = self.router.proba(hr)
                rconf, rcls = probs.max(1)
                g = route_decision(rconf, rcls, self.gamma, self._has_sub)
                group, route, route_conf = merge_routes((group, route, route_conf), rest, (g, rcls, rconf))
        return h, group, route, route_conf, exit_conf, exit_logits

    # -- the back: grouped subgraphs ------------------------------------------------------
    def _run_groups(self, h: torch.Tensor, group: torch.Tensor, chunk: int | None,
                    exit_logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predictions [N] (and logits [N, classes]) for stem features ``h`` [N, ...] grouped by ``group``."""
        n, K, dev = h.shape[0], self.num_clusters, self.device
        C = int(self.model.num_classes)
        pred = torch.empty(n, dtype=torch.long, device=dev)
        logits = torch.empty((n, C), dtype=torch.float32, device=dev) if self.keep_logits else None
        order, counts, starts = group_spans(group, K)
        if counts[K + 1]:
            idx = order[starts[K + 1] : starts[K + 2]]
            zl = exit_logits.index_select(0, idx)
            pred.index_copy_(0, idx, zl.argmax(1))
            if logits is not None:
                logits.index_copy_(0, idx, zl)
        jobs = []
        for g in range(K + 1):
            if not counts[g]:
                continue
            idx = order[starts[g] : starts[g + 1]]
            module = self.fallback_tail if g == K else self.subgraphs[g]
            pieces = [idx] if chunk is None else list(idx.split(chunk))
            jobs.extend((module, piece) for piece in pieces)
        if self._streams:
            self._run_jobs_streams(h, jobs, pred, logits)
        else:
            for module, idx in jobs:
                with autocast(dev, self.bf16):
                    z = module(h.index_select(0, idx)).float()
                pred.index_copy_(0, idx, z.argmax(1))
                if logits is not None:
                    logits.index_copy_(0, idx, z)
        return pred, logits

    def _run_jobs_streams(self, h: torch.Tensor, jobs: list, pred: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Independent groups on separate CUDA streams; results are written on the current stream."""
        main = torch.cuda.current_stream(self.device)
        outs = []
        for i, (module, idx) in enumerate(jobs):
            s = self._streams[i % len(self._streams)]
            s.wait_stream(main)
            with torch.cuda.stream(s), autocast(self.device, self.bf16):
                z = module(h.index_select(0, idx)).float()
            z.record_stream(main)
            outs.append((idx, z))
        for s in self._streams:
            main.wait_stream(s)
        for idx, z in outs:
            pred.index_copy_(0, idx, z.argmax(1))
            if logits is not None:
                logits.index_copy_(0, idx, z)

    # -- public entry points --------------------------------------------------------------
    @torch.inference_mode()
    def run(self, images: torch.Tensor) -> InferenceResult:
        """One batch [N, C, H, W] (normalised float, or uint8 with mean/std): stem once, group by
        route, outputs in input order."""
        return self.run_pool(images, None)

    @torch.inference_mode()
    def run_pool(self, images: torch.Tensor, batch_size: int | None = 256) -> InferenceResult:
        """Throughput mode: stems ``batch_size`` images at a time, then groups ALL pooled samples by
        route, so each subgraph runs on chunks of ``batch_size`` from one large group (the key to
        making routing pay off on CPU). ``images`` may stay on the CPU; batches move to the device
        one at a time. ``batch_size=None``: the whole input is one batch. The stem features of the
        whole pool are held on the device (N x the tap's feature size)."""
        self._check_images(images)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SinfError(f"batch size must be a positive integer, got {batch_size!r}")
        n = int(images.shape[0])
        bs = n if batch_size is None else batch_size
        if bs >= n:
            h, group, route, route_conf, exit_conf, exit_logits = self._front(self._prepare(images))
        else:
            parts = [self._front(self._prepare(images[s : s + bs])) for s in range(0, n, bs)]
            h = torch.cat([p[0] for p in parts])
            if self.channels_last:
                h = h.contiguous(memory_format=torch.channels_last)
            group, route, route_conf, exit_conf = (torch.cat([p[i] for p in parts]) for i in (1, 2, 3, 4))
            exit_logits = None if parts[0][5] is None else torch.cat([p[5] for p in parts])
        pred, logits = self._run_groups(h, group, None if batch_size is None else bs, exit_logits)
        K = self.num_clusters
        mode = torch.where(group == K + 1, EXIT, torch.where(group == K, FALLBACK, ROUTE)).to(torch.int8)
        return InferenceResult(
            pred=pred.cpu(), route=route.cpu(), route_conf=route_conf.float().cpu(),
            exit_conf=exit_conf.float().cpu(), mode_per_sample=mode.cpu(),
            logits=None if logits is None else logits.cpu(),
        )

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Fine class [N] of one batch."""
        return self.run(images).pred

    __call__ = run
