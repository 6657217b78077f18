"""The benchmark: base vs SINF vs early exit vs the cascade vs static pruning, side by side (METHOD.md 8-11).

What it does, in order (METHOD.md section 0 says which split each step may look at):

1. **Heads** (fit split, temperatures on calibration): route heads at every swept tap (reused from a
   bundle when it has them) and early-exit heads at the same taps, trained in one loop on a cached
   subsample of the fit split and cached on disk.
2. **Precompute** (calibration split): one stem pass gives the features at every swept tap and the
   base model's predictions; per tap the router's and exit head's calibrated confidences; per tap and
   schedule (r_M, r_L) the prediction of the routed cluster's subgraph for every sample.
3. **Sweep**: every (tap, r_M, r_L, gamma, tau) point's calibration top-1 and expected FLOPs is a
   vectorised combination of those arrays (no network runs per point); Pareto front per mode.
4. **Choice**: the few lowest-cost front points within the accuracy budget are timed (throughput,
   interleaved with the base model, on calibration images) and each mode takes the FASTEST MEASURED
   point within the budget (``pick_fastest``). "Within the budget" is guarded against calibration
   noise: a point's calibration top-1 minus ``budget_z`` standard errors of its paired difference from
   the base model (``top1_se``) must stay within the budget, so the choice does not hug a budget edge
   that the report split then crosses.
5. **Static pruning**: one network pruned from the same tap with the best global (not cluster
   conditioned) score, uniform removed fraction r found by bisection (then topped up channel by
   channel) so its FLOPs match the chosen point's expected FLOPs; the score is chosen on calibration.
6. **Report** (report split): the real engines run over the whole report split (top-1, per-cluster
   accuracy, route accuracy, exit / route / fallback rates, expected FLOPs from the actual
   decisions, parameters), then latency at batch size 1 and throughput at a large batch for all five
   contenders, measured interleaved in one run.

Timing rules: ``torch.inference_mode``, device synchronised before every clock read, warm-up first,
round-robin repetitions with a rotating order so machine noise hits every contender alike, medians;
throughput ratios are the median over repetitions of PAIRED ratios (base time / contender time within
the same repetition), which cancels load that drifts slower than one repetition;
bf16 autocast, channels_last and BatchNorm folding apply to every contender alike (the base too). FLOPs are 2 x MACs as
``torch.utils.flop_counter`` counts them (see ``sinf_core.cost``).
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .cost import Cost, count_flops, count_params, model_cost, module_cost, stem_cost, stem_output, tail_cost
from .data import ImageDataset, iterate_batches, normalise
from .device import autocast, hardware_info
from .engine import EXIT, FALLBACK, ROUTE, InferenceResult, SemanticInference
from .errors import SinfError
from .fusion import prepare_for_inference
from .models import SinfModel
from .timing import interleaved_latency, interleaved_throughput, paired_ratios  # noqa: F401  (re-exported)
from .router import ExitPredictor, RouteHead, RoutePredictor, TapHeads, default_taps, fit_heads, forward_taps
from .subgraph import (DEFAULT_BN_SAMPLES, BatchNormSamples, SubgraphSpec, build_subgraph, check_bn_samples, check_fill,
                       first_pruned_index, keep_indices, make_cluster_specs, model_schedule)

MODES = ("sinf", "exit", "cascade")
CONTENDERS = ("base",) + MODES + ("static",)
BENCH_FORMAT = "sinf-bench"
BENCH_VERSION = 1

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
LogFn = Callable[[str], None]

# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    """Everything the benchmark can be told. Defaults fit ResNet-56 / CIFAR-100 on 2 CPU cores.

    ``budget``: accuracy budget in points of calibration top-1 below the base model's. ``budget_z``: a point is
    within the budget when its calibration top-1 minus ``budget_z`` standard errors of its paired difference
    from the base model is (1.645: one-sided 95 %; 0: the plain estimate). ``target_ratio``: the
    throughput ratio to base the best mode is checked against (``target.met`` in the result).
    ``taps``: swept taps (None: ``default_bench_taps``, on the bundle router's taps when given).
    ``schedules``: (r_M, r_L) pairs swept for the subgraphs; ``multiple_of``: kept counts rounded up
    to this multiple (None: exact). ``gammas`` / ``taus``: swept thresholds (1.0 = never route / exit).
    ``score``: the cluster-conditioned filter score of the subgraphs ('auto': the DCS variant with the
    best calibration accuracy in the bundle's oracle grid, else 'dcs'). ``fill``: what replaces a removed
    channel, 'mean' (its mean activation on the fit split: per cluster for the subgraphs, over all
    classes for the static network; mean replacement) or 'zero'. ``bn_samples``: fit images per cluster
    on which each subgraph's BatchNorm statistics are re-estimated (``estimate_bn_stats``; the static
    network uses all clusters' samples); 0 keeps the base model's; None: the bundle's decision (its
    ``bn.json``, made on calibration by ``sinf build``), else ``DEFAULT_BN_SAMPLES``. ``static_scores``:
    global scores tried for the static network (the best on calibration wins); ``static_match``: whose expected
    FLOPs the static network matches ('best' = the fastest chosen mode, or a mode name).
    ``head_fit_samples`` / ``head_epochs`` / ``exit_hidden``: head training (fit split subsample). The
    defaults (50 000 images, 8 epochs) matter: on ResNet-56 10 000 x 4 gave exit heads of 31 / 37 / 49 %
    calibration top-1 at layer3.0 / 3.2 / 3.4, and 50 000 x 8 gave 54 / 61 / 67 %. ``head_distill``: weight of
    distillation from the base model in the heads' loss (``TapHeads.distill``); on VGG16-BN at features.24,
    0.9 let 87 % of calibration images exit within 1.5 points of the base, against 78 % with labels only.
    ``candidates_per_mode``: front points timed per mode; ``screen_pool`` / ``screen_reps``: their
    throughput screening on calibration images. ``pool`` / ``batch_size`` / ``throughput_reps``: the
    final throughput run (report images); ``latency_calls`` / ``latency_warmup``: batch-size-1 calls.
    ``bf16``: autocast for every contender; ``channels_last``: channels-last tensors for every contender
    (None: yes; on CPU it is faster in float32 too, 1.2-1.4x on the CIFAR models here). ``fold_bn``: every
    contender (base, static and the engines' model, heads and subgraphs) runs with its BatchNorms
    folded into the preceding convs (``fusion.fold_batchnorm``); decisions are made unfolded.
    ``threads``: torch CPU threads during the benchmark (None: leave as is). ``cache``: keep fitted
    heads under ``cache_dir`` (default $SINF_CACHE_DIR or ~/.cache/sinf) / bench.
    ``score_options``: options of the filter scores (as in ``compute_all_scores``).
    """

    budget: float = 2.0
    budget_z: float = 1.645
    target_ratio: float = 1.15
    taps: tuple[str, ...] | None = None
    schedules: tuple[tuple[float, float], ...] = ((0.05, 0.3), (0.25, 0.5), (0.25, 0.75), (0.5, 0.9))
    multiple_of: int | None = 8
    gammas: tuple[float, ...] = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)
    taus: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)
    score: str = "auto"
    fill: str = "mean"
    bn_samples: int | None = None
    static_scores: tuple[str, ...] = ("l1", "bn_gamma", "mean_act", "taylor")
    static_match: str = "best"
    head_fit_samples: int = 50000
    head_epochs: int = 8
    head_distill: float = 0.9
    exit_hidden: int = 64
    route_target: float = 0.75
    candidates_per_mode: int = 3
    screen_pool: int = 512
    screen_reps: int = 4
    pool: int = 2048
    batch_size: int = 256
    throughput_reps: int = 6
    latency_calls: int = 200
    latency_warmup: int = 20
    bf16: bool = False
    channels_last: bool | None = None
    fold_bn: bool = True
    threads: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    score_options: dict = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "BenchOptions":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise SinfError(f"unknown benchmark option(s) {bad}; known: {sorted(known)}")
        for k in ("taps", "gammas", "taus", "static_scores"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        if d.get("schedules") is not None:
            d["schedules"] = tuple(tuple(s) for s in d["schedules"])
        return cls(**d)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def use_channels_last(self) -> bool:
        return True if self.channels_last is None else bool(self.channels_last)

    def validate(self) -> "BenchOptions":
        """Raise SinfError for any value the benchmark cannot use; returns self."""
        try:
            b = float(self.budget)
        except (TypeError, ValueError):
            raise SinfError(f"the accuracy budget must be a number of points, got {self.budget!r}") from None
        if not math.isfinite(b) or b < 0:
            raise SinfError(f"the accuracy budget must be a finite number of points >= 0, got {self.budget}")
        if isinstance(self.budget_z, bool) or not isinstance(self.budget_z, (int, float)) \
                or not 0 <= float(self.budget_z) < math.inf:
            raise SinfError(f"budget_z must be a number of standard errors >= 0, got {self.budget_z!r}")
        if not isinstance(self.target_ratio, (int, float)) or not 0 < float(self.target_ratio) < math.inf:
            raise SinfError(f"the target throughput ratio must be a positive number, got {self.target_ratio!r}")
        for name in ("gammas", "taus"):
            vals = getattr(self, name)
            if not vals:
                raise SinfError(f"{name} must list at least one threshold")
            for v in vals:
                if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                    raise SinfError(f"{name} must lie in [0, 1], got {v!r}")
        if not self.schedules:
            raise SinfError("give at least one (r_M, r_L) schedule")
        for s in self.schedules:
            if len(s) != 2 or not all(isinstance(v, (int, float)) and 0.0 <= float(v) < 1.0 for v in s):
                raise SinfError(f"a schedule is (r_M, r_L) with removed fractions in [0, 1), got {s!r}")
        if self.multiple_of is not None and int(self.multiple_of) < 1:
            raise SinfError(f"multiple_of must be a positive integer or None, got {self.multiple_of}")
        positive = ("head_fit_samples", "head_epochs", "exit_hidden", "candidates_per_mode", "screen_pool",
                    "screen_reps", "pool", "batch_size", "throughput_reps", "latency_calls")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SinfError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.latency_warmup, int) or self.latency_warmup < 0:
            raise SinfError(f"latency_warmup must be an integer >= 0, got {self.latency_warmup!r}")
        if isinstance(self.head_distill, bool) or not isinstance(self.head_distill, (int, float)) \
                or not 0.0 <= float(self.head_distill) <= 1.0:
            raise SinfError(f"head_distill is a weight in [0, 1], got {self.head_distill!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise SinfError(f"threads must be a positive integer, got {self.threads!r}")
        if self.static_match not in ("best",) + MODES:
            raise SinfError(f"static_match must be 'best' or one of {MODES}, got {self.static_match!r}")
        if not 0.0 <= float(self.route_target) <= 1.0:
            raise SinfError(f"route_target must be in [0, 1], got {self.route_target}")
        from .scores import get_score

        if self.score != "auto":
            get_score(self.score)
        check_fill(self.fill)
        if self.bn_samples is not None:
            check_bn_samples(self.bn_samples)
        for s in self.static_scores:
            get_score(s)
        if not self.static_scores:
            raise SinfError("give at least one global score for the static network")
        return self


# --------------------------------------------------------------------------------------------------
# Costs and the expected FLOPs per input (METHOD.md section 9)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathCosts:
    """Per-image cost of every path through a routed classifier at one tap.

    ``stem``: units up to the tap; ``tail``: the unpruned tail (the fallback); ``router`` / ``exit``:
    the heads (None when the mode does not use them); ``subgraphs``: per cluster (None: no subgraph).
    """

    stem: Cost
    tail: Cost
    router: Cost | None = None
    exit: Cost | None = None
    subgraphs: tuple[Cost | None, ...] = ()

    def params(self) -> int:
        """Parameters stored by the whole system: stem, heads, every subgraph and the fallback tail."""
        p = self.stem.params + self.tail.params
        p += sum(c.params for c in (self.router, self.exit) if c is not None)
        return int(p + sum(c.params for c in self.subgraphs if c is not None))

    def sub_flops(self) -> np.ndarray:
        """float64 [K]: each cluster's subgraph FLOPs (the tail's where there is none: it falls back)."""
        return np.asarray([self.tail.flops if c is None else c.flops for c in self.subgraphs], dtype=np.float64)


def expected_flops(
    stem: float,
    tail: float,
    sub_flops: Sequence[float],
    p_route: Sequence[float],
    p_fallback: float,
    router: float = 0.0,
    exit: float = 0.0,
    p_router: float = 1.0,
) -> float:
    """stem + exit head + P(router runs) * router + sum_m P(route m) * subgraph_m + P(fallback) * tail.

    METHOD.md section 9 (``exit`` = 0 and ``p_router`` = 1 without an exit head). In the cascade the
    router runs only on inputs that did not exit (``p_router`` = 1 - P(exit)); exited inputs cost
    nothing after the exit head."""
    if len(sub_flops) != len(p_route):
        raise SinfError(f"{len(sub_flops)} subgraph costs but {len(p_route)} route probabilities")
    return float(stem + exit + p_router * router + float(np.dot(np.asarray(sub_flops, dtype=np.float64),
                                                               np.asarray(p_route, dtype=np.float64)))
                 + p_fallback * tail)


def decision_flops(costs: PathCosts, mode_per_sample: torch.Tensor, route: torch.Tensor) -> float:
    """Expected FLOPs per input with the probabilities taken from actual decisions.

    ``mode_per_sample`` int [N] (EXIT / ROUTE / FALLBACK codes of ``sinf_core.engine``), ``route``
    int [N] (the router's cluster, -1 where the router did not run), as in an ``InferenceResult``."""
    n = int(mode_per_sample.shape[0])
    if n == 0:
        raise SinfError("no decisions to average over")
    mode = mode_per_sample.long().cpu()
    route = route.long().cpu()
    K = len(costs.subgraphs)
    routed = route[mode == ROUTE]
    p_route = (torch.bincount(routed, minlength=K).double() / n).numpy() if K else np.zeros(0)
    return expected_flops(costs.stem.flops, costs.tail.flops, costs.sub_flops() if K else [], p_route,
                          float((mode == FALLBACK).sum()) / n,
                          costs.router.flops if costs.router is not None else 0.0,
                          costs.exit.flops if costs.exit is not None else 0.0,
                          float((route >= 0).sum()) / n)


def head_cost(head: nn.Module, model: SinfModel, tap: str, input_shape: Sequence[int]) -> Cost:
    """Parameters and per-image FLOPs of a head on the stem output at ``tap``."""
    with torch.no_grad():
        h = stem_output(model, tap, input_shape)
    return module_cost(head.eval(), h)


# --------------------------------------------------------------------------------------------------
# Static pruning comparator
# --------------------------------------------------------------------------------------------------


class StaticNet(nn.Module):
    """One statically pruned network: the unpruned stem up to ``tap`` (the base model's own units,
    shared) followed by a pruned tail (a ``Subgraph`` with the full head). ``forward(x)``: images ->
    logits [N, classes]."""

    def __init__(self, model: SinfModel, tap: str | None, tail: nn.Module):
        super().__init__()
        t = -1 if tap is None else model.unit_index(tap)
        self.stem = nn.ModuleList([m for _, m in model.units()[: t + 1]])
        self.tail = tail
        self.tap = tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.stem:
            x = unit(x)
        return self.tail(x)


def _schedule_flops(model: SinfModel, model_name: str, tap: str | None, scores: Mapping[str, torch.Tensor],
                    kept: Mapping[str, int], input_shape: Sequence[int],
                    fill: Mapping[str, torch.Tensor] | None = None) -> tuple[int, SubgraphSpec]:
    keep = keep_indices(scores, kept)
    spec = SubgraphSpec(model_name, tap, keep, None, {k: fill[k].tolist() for k in keep} if fill else {})
    sub = build_subgraph(model, spec)
    return count_flops(sub, stem_output(model, tap, input_shape)), spec


def static_for_flops(
    model: SinfModel,
    model_name: str,
    tap: str | None,
    scores: Mapping[str, torch.Tensor],
    target_flops: float,
    multiple_of: int | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
    iterations: int = 30,
    fill: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Prune every layer after ``tap`` by one removed fraction r (kept = ceil((1 - r) C), rounded up to
    ``multiple_of``) chosen by bisection so the network's FLOPs per image (stem + pruned tail) come as
    close to ``target_flops`` as one channel step allows without exceeding it: bisection finds the
    smallest r whose FLOPs are <= target, then channels (``multiple_of`` at a time) are added back,
    layer by layer in forward order, while the total stays <= target. ``scores``: {layer: Tensor[C]}
    (global, not cluster conditioned) choose which channels stay; ``fill``: {layer: Tensor[C]} mean
    activations for mean replacement of the removed channels (None: zero).

    Returns {spec, r, flops, target_flops, reachable}: ``reachable`` is False when even r = 0.99 stays
    above the target (the spec is then the most pruned one) or r = 0 is already below it (no pruning).
    """
    stem = stem_cost(model, tap, input_shape).flops if tap is not None else 0
    target = float(target_flops)
    layers = model.prunable_layers()
    first = first_pruned_index(model, tap)
    names = [l.name for l in layers[first:]]
    chans = {l.name: l.channels for l in layers}

    memo: dict[tuple, tuple[int, SubgraphSpec]] = {}

    def flops_of(kept: Mapping[str, int]) -> tuple[int, SubgraphSpec]:
        key = tuple(sorted(kept.items()))
        if key not in memo:  # bisection visits few distinct schedules: build each once
            f, spec = _schedule_flops(model, model_name, tap, scores, kept, input_shape, fill)
            memo[key] = (stem + f, spec)
        return memo[key]

    def sched(r: float) -> dict[str, int]:
        return model_schedule(model, tap, r, r, multiple_of)

    f0, spec0 = flops_of(sched(0.0))
    if not names or f0 <= target:
        return {"spec": spec0, "r": 0.0, "flops": int(f0), "target_flops": target, "reachable": f0 <= target}
    r_max = 0.99
    fmax, specmax = flops_of(sched(r_max))
    if fmax > target:
        return {"spec": specmax, "r": r_max, "flops": int(fmax), "target_flops": target, "reachable": False}
    lo, hi = 0.0, r_max  # flops(lo) > target >= flops(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if flops_of(sched(mid))[0] <= target:
            hi = mid
        else:
            lo = mid
    kept = sched(hi)
    upper = sched(lo)  # one step less pruned: above the target
    step = int(multiple_of or 1)
    best, best_spec = flops_of(kept)
    for name in names:
        while kept[name] < min(upper[name], chans[name]):
            trial = dict(kept)
            trial[name] = min(chans[name], kept[name] + step)
            f, spec = flops_of(trial)
            if f > target:
                break
            kept, best, best_spec = trial, f, spec
    return {"spec": best_spec, "r": hi, "flops": int(best), "target_flops": target, "reachable": True}


def channel_step_flops(model: SinfModel, tap: str | None, input_shape: Sequence[int] = (3, 32, 32),
                       multiple_of: int | None = None) -> int:
    """The largest FLOPs change from removing ``multiple_of`` (default 1) output channels of one
    prunable layer after ``tap`` (its conv and its consumer's input), measured with the FLOP counter
    on the unpruned tail versus a tail with that layer cut."""
    base = tail_cost(model, tap, input_shape).flops
    first = first_pruned_index(model, tap)
    step = int(multiple_of or 1)
    worst = 0
    for layer in model.prunable_layers()[first:]:
        if layer.channels <= step:
            continue
        keep = {layer.name: list(range(layer.channels - step))}
        sub = build_subgraph(model, SubgraphSpec("step", tap, keep, None))
        worst = max(worst, base - count_flops(sub, stem_output(model, tap, input_shape)))
    return int(worst)


# --------------------------------------------------------------------------------------------------
# Operating-point sweep (calibration split)
# --------------------------------------------------------------------------------------------------


@dataclass
class ScheduleData:
    """One (r_M, r_L) at one tap: the per-cluster specs and costs, and for every calibration sample
    the prediction of the subgraph of the cluster the router picked."""

    r_M: float
    r_L: float
    specs: dict[int, SubgraphSpec]
    costs: tuple[Cost, ...]
    pred: torch.Tensor  # int64 [N]


@dataclass
class TapData:
    """Everything the sweep needs at one tap, on the calibration split (tensors on the CPU)."""

    tap: str
    route_conf: torch.Tensor  # float32 [N]
    route_pred: torch.Tensor  # int64 [N]
    exit_conf: torch.Tensor  # float32 [N]
    exit_pred: torch.Tensor  # int64 [N]
    stem: Cost
    tail: Cost
    router: Cost
    exit: Cost
    schedules: list[ScheduleData] = field(default_factory=list)


def _mean_over_samples(x: torch.Tensor) -> torch.Tensor:
    return x.double().mean(-1)


def _paired_se(ok: torch.Tensor, base_ok: torch.Tensor) -> torch.Tensor:
    """Standard error (fraction) of mean(ok - base_ok) over the last axis: the uncertainty of a
    point's accuracy difference from the base model on these samples (paired, so only the samples
    where the two disagree contribute)."""
    d = ok.double() - base_ok.double()
    n = d.shape[-1]
    var = (d * d).mean(-1) - d.mean(-1) ** 2
    return (var.clamp_min(0.0) / n).sqrt()


def sweep_tap(labels: torch.Tensor, base_pred: torch.Tensor, td: TapData, gammas: Sequence[float],
              taus: Sequence[float]) -> list[dict]:
    """Calibration top-1 (%) and expected FLOPs of every operating point at one tap, vectorised.

    Decisions follow ``SemanticInference``: exit when the exit confidence >= tau (tau = 1: never),
    else route when the router's >= gamma (gamma = 1: never), else fall back to the unpruned tail
    (whose prediction is the base model's). Points: mode 'exit' per tau; 'sinf' per (schedule,
    gamma); 'cascade' per (schedule, gamma, tau). Each point: mode, tap, r_M, r_L, gamma, tau, top1,
    top1_se (standard error, points, of top1 minus the base model's, paired over the samples), flops,
    exit_rate, route_rate, fallback_rate."""
    n = int(labels.shape[0])
    if n == 0:
        raise SinfError("the sweep needs at least one calibration sample")
    g = torch.as_tensor(list(gammas), dtype=torch.float32)
    t = torch.as_tensor(list(taus), dtype=torch.float32)
    routed = (td.route_conf.view(1, n) >= g.view(-1, 1)) & (g < 1.0).view(-1, 1)  # [G, N]
    exited = (td.exit_conf.view(1, n) >= t.view(-1, 1)) & (t < 1.0).view(-1, 1)  # [T, N]
    base_ok = base_pred == labels
    exit_ok = td.exit_pred == labels
    stem, tail, rf, ef = float(td.stem.flops), float(td.tail.flops), float(td.router.flops), float(td.exit.flops)
    points: list[dict] = []

    def rec(mode: str, r: ScheduleData | None, gamma: float | None, tau: float | None, ok: float, se: float,
            flops: float, p_exit: float, p_route: float) -> None:
        points.append({"mode": mode, "tap": td.tap, "r_M": None if r is None else r.r_M,
                       "r_L": None if r is None else r.r_L, "gamma": gamma, "tau": tau,
                       "top1": 100.0 * ok, "top1_se": 100.0 * se, "flops": flops, "exit_rate": p_exit,
                       "route_rate": p_route, "fallback_rate": max(0.0, 1.0 - p_exit - p_route)})

    # early exit alone
    ok = torch.where(exited, exit_ok.view(1, n), base_ok.view(1, n))
    acc, se = _mean_over_samples(ok), _paired_se(ok, base_ok)
    pe = _mean_over_samples(exited)
    for i, tau in enumerate(taus):
        rec("exit", None, None, float(tau), float(acc[i]), float(se[i]), stem + ef + (1.0 - float(pe[i])) * tail,
            float(pe[i]), 0.0)
    for sd in td.schedules:
        sub_ok = sd.pred == labels
        subf = torch.as_tensor([c.flops for c in sd.costs], dtype=torch.float64)[td.route_pred]  # [N]
        # SINF alone
        ok = torch.where(routed, sub_ok.view(1, n), base_ok.view(1, n))
        acc, se = _mean_over_samples(ok), _paired_se(ok, base_ok)
        cost = _mean_over_samples(torch.where(routed, subf.view(1, n), torch.full((1, n), tail, dtype=torch.float64)))
        pr = _mean_over_samples(routed)
        for j, gamma in enumerate(gammas):
            rec("sinf", sd, float(gamma), None, float(acc[j]), float(se[j]), stem + rf + float(cost[j]), 0.0,
                float(pr[j]))
        # the cascade: [T, G, N]
        ex = exited.view(-1, 1, n)
        ro = routed.view(1, -1, n) & ~ex
        ok = torch.where(ex, exit_ok.view(1, 1, n), torch.where(ro, sub_ok.view(1, 1, n), base_ok.view(1, 1, n)))
        after = torch.where(ex, torch.zeros((), dtype=torch.float64),
                            torch.where(ro, subf.view(1, 1, n), torch.full((), tail, dtype=torch.float64)))
        acc, se = _mean_over_samples(ok), _paired_se(ok, base_ok)
        cost = _mean_over_samples(after)
        pr = _mean_over_samples(ro)
        for i, tau in enumerate(taus):
            for j, gamma in enumerate(gammas):
                rec("cascade", sd, float(gamma), float(tau), float(acc[i, j]), float(se[i, j]),
                    stem + ef + (1.0 - float(pe[i])) * rf + float(cost[i, j]), float(pe[i]), float(pr[i, j]))
    return points


def pareto_front(points: Sequence[dict]) -> list[dict]:
    """Points not dominated in (higher top1, lower flops), sorted by flops ascending."""
    front: list[dict] = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p["flops"], -p["top1"])):
        if p["top1"] > best:
            front.append(p)
            best = p["top1"]
    return front


def within_budget(p: Mapping[str, Any], base_top1: float, budget: float, z: float = 0.0) -> bool:
    """Whether point ``p``'s top1 minus ``z`` standard errors (its ``top1_se``, 0 when absent) is
    within ``budget`` points of ``base_top1``."""
    return p["top1"] - z * float(p.get("top1_se") or 0.0) >= base_top1 - budget - 1e-9


def candidates_within_budget(points: Sequence[dict], base_top1: float, budget: float, n: int,
                             z: float = 0.0) -> list[dict]:
    """The ``n`` cheapest (expected FLOPs) points of the Pareto front of those ``points`` that are
    within the budget (``within_budget``): the ones worth timing."""
    ok = pareto_front([p for p in points if within_budget(p, base_top1, budget, z)])
    return sorted(ok, key=lambda p: p["flops"])[:n]


def pick_fastest(points: Sequence[dict], throughput: Sequence[float], base_top1: float, budget: float,
                 z: float = 0.0) -> int | None:
    """Index of the point with the highest measured ``throughput`` (images/s, one per point) among
    those within the budget (``within_budget`` with ``z``; ties: higher top1, then fewer FLOPs); None
    if none is."""
    if len(points) != len(throughput):
        raise SinfError(f"{len(points)} points but {len(throughput)} throughput figures")
    if budget < 0:
        raise SinfError(f"the accuracy budget must be >= 0 points, got {budget}")
    ok = [i for i, p in enumerate(points) if within_budget(p, base_top1, budget, z)]
    if not ok:
        return None
    return max(ok, key=lambda i: (throughput[i], points[i]["top1"], -points[i]["flops"]))


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


def default_bench_taps(model: SinfModel, candidates: Sequence[str] | None = None,
                       input_shape: Sequence[int] = (3, 32, 32), low: float = 0.6, high: float = 0.95) -> list[str]:
    """The taps worth sweeping: among ``candidates`` (default ``default_taps(model)``), those whose stem
    holds between ``low`` and ``high`` of the model's FLOPs. Earlier taps give heads too weak to exit or
    route confidently (ResNet-56 layer2.x exit heads: ~21 % top-1) and cost the most to train; later
    ones leave too little to save. Falls back to all candidates when none qualifies."""
    cands = list(candidates) if candidates else default_taps(model)
    total = model_cost(model, input_shape).flops
    keep = [t for t in cands if low <= stem_cost(model, t, input_shape).flops / total <= high]
    return keep or cands


def _cache_root(options: BenchOptions) -> Path:
    from .io import cache_dir

    return cache_dir(options.cache_dir) / "bench"


def _head_params(options: BenchOptions) -> dict:
    return {"max_fit_samples": options.head_fit_samples, "epochs": options.head_epochs,
            "accuracy_target": options.route_target, "random_state": options.seed, "distill": options.head_distill}


def _cached_heads(folder: Path, key: str) -> list[tuple[Path, dict]]:
    """(folder, meta) of every cached head set of this parameter ``key`` under ``folder``."""
    import json

    out = []
    for d in sorted(folder.glob(f"heads-{key}-*")):
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("key") == key:
            out.append((d, meta))
    return out


def fit_bench_heads(
    exp,
    taps: Sequence[str],
    options: BenchOptions,
    router: RoutePredictor | None = None,
    on_progress: ProgressFn | None = None,
    log: LogFn = lambda s: None,
) -> tuple[dict[str, RouteHead], dict[str, RouteHead], dict]:
    """Route and exit heads at every tap of ``taps``: route heads from ``router`` where it has them
    (e.g. a bundle's), the others and every exit head taken from the on-disk cache when a head of the
    same training parameters exists for that tap, and the rest trained in one loop (fit split
    subsample, temperatures on calibration) and cached. Returns ({tap: route head}, {tap: exit head},
    summary with the calibration accuracy of each)."""
    from .bundle import sha256_json, state_dict_sha256

    model = exp.model.eval()
    sha = state_dict_sha256(model)
    params = _head_params(options)
    key = sha256_json({"model": sha, "params": params, "exit_hidden": options.exit_hidden,
                       "splits": exp.splits.summary(), "n_train": len(exp.train),
                       "hierarchy": exp.hierarchy.to_json()})[:16]
    root = _cache_root(options) / f"{exp.model_name}-{sha[:12]}"
    need_route = [t for t in taps if router is None or t not in router.heads_]
    route_src: dict[str, TapHeads] = {t: router for t in taps if t not in need_route}
    exit_src: dict[str, TapHeads] = {}
    if options.cache and root.is_dir():
        for folder, meta in _cached_heads(root, key):
            try:
                if any(t in meta.get("exit_taps", []) and t not in exit_src for t in taps):
                    ep = ExitPredictor.load(folder, "exit")
                    exit_src.update({t: ep for t in taps if t in ep.heads_ and t not in exit_src})
                if any(t in meta.get("route_taps", []) and t not in route_src for t in need_route):
                    rp = RoutePredictor.load(folder, "router")
                    route_src.update({t: rp for t in need_route if t in rp.heads_ and t not in route_src})
            except SinfError as exc:
                log(f"heads: ignoring unusable cache {folder} ({exc})")
    todo_exit = [t for t in taps if t not in exit_src]
    todo_route = [t for t in need_route if t not in route_src]
    if todo_exit or todo_route:
        t0 = time.perf_counter()
        preds: list[TapHeads] = []
        if todo_exit:
            preds.append(ExitPredictor(taps=todo_exit, hidden=options.exit_hidden, **params))
        if todo_route:
            preds.append(RoutePredictor(taps=todo_route, **params))
        fit_heads(preds, model, exp.fit_data(), exp.calib_data(), exp.device, on_progress)
        for p in preds:
            (exit_src if isinstance(p, ExitPredictor) else route_src).update({t: p for t in p.taps_})
        log(f"heads: fitted {len(todo_exit)} exit + {len(todo_route)} route heads in {time.perf_counter() - t0:.0f} s")
        if options.cache:
            folder = root / f"heads-{key}-{sha256_json([todo_exit, todo_route])[:8]}"
            folder.mkdir(parents=True, exist_ok=True)
            for p in preds:
                p.save(folder, "exit" if isinstance(p, ExitPredictor) else "router")
            from .io import write_json

            write_json(folder / "meta.json", {"key": key, "exit_taps": todo_exit, "route_taps": todo_route,
                                              "params": params, "exit_hidden": options.exit_hidden})
    else:
        log(f"heads: all cached under {root}")
    route_heads = {t: route_src[t].head(t) for t in taps}
    exit_heads = {t: exit_src[t].head(t) for t in taps}
    summary = {"route_calib_accuracy": {t: route_src[t].calib_accuracy_[t] for t in taps},
               "exit_calib_accuracy": {t: exit_src[t].calib_accuracy_[t] for t in taps},
               "route_temperature": {t: route_src[t].temperature_[t] for t in taps},
               "exit_temperature": {t: exit_src[t].temperature_[t] for t in taps},
               "route_from_bundle": [t for t in taps if t not in need_route],
               "trained_now": {"exit": todo_exit, "route": todo_route},
               "params": {**params, "exit_hidden": options.exit_hidden},
               "cache": str(root) if options.cache else None}
    return route_heads, exit_heads, summary


# --------------------------------------------------------------------------------------------------
# Precompute on a split
# --------------------------------------------------------------------------------------------------


def _prep(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def stem_features(model: SinfModel, data: ImageDataset, taps: Sequence[str], batch_size: int,
                  device: torch.device, bf16: bool = False, channels_last: bool = False,
                  on_progress: ProgressFn | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One pass over ``data``: the stem output at every tap ({tap: [N, ...]} on ``device``) and the base
    model's predictions [N] (CPU), the tail run from the deepest tap."""
    if len(data) == 0:
        raise SinfError("no samples to run the stem on")
    units = sorted({model.unit_index(t) for t in taps})
    names = model.unit_names()
    feats: dict[int, list[torch.Tensor]] = {u: [] for u in units}
    preds = []
    done = 0
    for x, _ in iterate_batches(data, batch_size, None, device):
        with autocast(device, bf16):
            hs = forward_taps(model, _prep(x, channels_last), units)
            for u, h in zip(units, hs):
                feats[u].append(h)
            preds.append(model.forward_tail(hs[-1], units[-1]).float().argmax(1).cpu())
        done += x.shape[0]
        if on_progress:
            on_progress("stem features", done, len(data))
    return {names[u]: torch.cat(v) for u, v in feats.items()}, torch.cat(preds)


@torch.inference_mode()
def _head_outputs(head: RouteHead, h: torch.Tensor, batch_size: int, device: torch.device,
                  bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated top probability and argmax [N] (CPU), computed exactly as the engine does."""
    confs, preds = [], []
    head = head.to(device).eval()
    for s in range(0, h.shape[0], batch_size):
        with autocast(device, bf16):
            z = head(h[s : s + batch_size]).float()
        p = torch.softmax(z / head.temperature.float(), dim=1)
        c, k = p.max(1)
        confs.append(c.cpu())
        preds.append(k.cpu())
    return torch.cat(confs), torch.cat(preds)


@torch.inference_mode()
def routed_predictions(subgraphs: Mapping[int, nn.Module], h: torch.Tensor, route: torch.Tensor,
                       batch_size: int, device: torch.device, bf16: bool = False) -> torch.Tensor:
    """For every sample i, the prediction [N] (CPU) of ``subgraphs[route[i]]`` on ``h[i]``, run in
    groups of one cluster (``batch_size`` at a time); -1 where the cluster has no subgraph."""
    out = torch.full((h.shape[0],), -1, dtype=torch.long)
    route_dev = route.to(h.device)
    for m, sub in subgraphs.items():
        idx = (route_dev == int(m)).nonzero().flatten()
        for piece in idx.split(batch_size):
            with autocast(device, bf16):
                z = sub(h.index_select(0, piece)).float()
            out[piece.cpu()] = z.argmax(1).cpu()
    return out


def build_subgraphs(model: SinfModel, specs: Mapping[int, SubgraphSpec], device: torch.device,
                    channels_last: bool = False) -> dict[int, nn.Module]:
    return {m: prepare_for_inference(build_subgraph(model, s), channels_last=channels_last, device=device)
            for m, s in specs.items()}


def tap_sweep_data(
    model: SinfModel,
    model_name: str,
    tap: str,
    h: torch.Tensor,
    route_head: RouteHead,
    exit_head: RouteHead,
    cluster_scores: Mapping[int, Mapping[str, torch.Tensor]],
    hierarchy,
    schedules: Sequence[tuple[float, float]],
    multiple_of: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    channels_last: bool = False,
    work: SinfModel | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
    fill_stats=None,
    bn_samples: BatchNormSamples | None = None,
) -> TapData:
    """Everything ``sweep_tap`` needs at ``tap`` from the stem features ``h`` [N, ...] of a split:
    the heads' calibrated confidences and predictions, the path costs, and per (r_M, r_L) schedule the
    cluster subgraphs (restricted heads, ``cluster_scores``) and each sample's prediction by the
    subgraph of the cluster the router picked. ``work``: the copy of ``model`` that runs (e.g. in
    channels_last); costs are counted on ``model``. ``fill_stats``: fit-split ``ActivationStats`` for
    mean replacement of removed channels (None: zero). ``bn_samples``: fit samples on which each
    subgraph's BatchNorm statistics are re-estimated (None: the base model's)."""
    device = torch.device(device)
    work = model if work is None else work
    input_shape = tuple(input_shape)
    rc, rp = _head_outputs(route_head, h, batch_size, device, bf16)
    ec, ep = _head_outputs(exit_head, h, batch_size, device, bf16)
    td = TapData(tap, rc, rp, ec, ep, stem_cost(model, tap, input_shape), tail_cost(model, tap, input_shape),
                 head_cost(route_head, model, tap, input_shape), head_cost(exit_head, model, tap, input_shape))
    example = stem_output(model, tap, input_shape)
    for r_M, r_L in schedules:
        specs = make_cluster_specs(model, model_name, tap, cluster_scores, hierarchy, r_M, r_L, multiple_of,
                                   fill_stats=fill_stats, bn_samples=bn_samples)
        subs = build_subgraphs(work, specs, device, channels_last)
        costs = tuple(module_cost(subs[m], example) for m in range(hierarchy.num_clusters))
        pred = routed_predictions(subs, h, rp, batch_size, device, bf16)
        td.schedules.append(ScheduleData(float(r_M), float(r_L), specs, costs, pred))
    return td


# --------------------------------------------------------------------------------------------------
# Report-split metrics
# --------------------------------------------------------------------------------------------------


def _per_cluster(pred: torch.Tensor, labels: torch.Tensor, cluster_of: torch.Tensor, names: Sequence[str]) -> list[dict]:
    rows = []
    ok = (pred == labels)
    for m, name in enumerate(names):
        sel = cluster_of == m
        n = int(sel.sum())
        rows.append({"cluster": name, "n": n, "top1": round(100.0 * float(ok[sel].double().mean()), 4) if n else None})
    return rows


def result_metrics(res: InferenceResult, labels: torch.Tensor, clusters: torch.Tensor, names: Sequence[str],
                   costs: PathCosts) -> dict:
    """Top-1, per-cluster accuracy, route accuracy (where the router ran, and among routed inputs),
    exit / route / fallback rates and expected FLOPs from the actual decisions of ``res``."""
    n = len(res)
    mode = res.mode_per_sample.long()
    ran = res.route >= 0
    routed = mode == ROUTE
    exited = mode == EXIT
    out = {
        "top1": round(100.0 * float((res.pred == labels).double().mean()), 4),
        "per_cluster": _per_cluster(res.pred, labels, clusters, names),
        "route_accuracy": round(100.0 * float((res.route[ran] == clusters[ran]).double().mean()), 4) if ran.any() else None,
        "routed_route_accuracy": (round(100.0 * float((res.route[routed] == clusters[routed]).double().mean()), 4)
                                  if routed.any() else None),
        "exit_accuracy": (round(100.0 * float((res.pred[exited] == labels[exited]).double().mean()), 4)
                          if exited.any() else None),
        "exit_rate": float(exited.double().mean()),
        "route_rate": float(routed.double().mean()),
        "fallback_rate": float((mode == FALLBACK).double().mean()),
        "flops": decision_flops(costs, res.mode_per_sample, res.route),
        "params": costs.params(),
        "n": n,
    }
    return out


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def _point_label(p: dict) -> str:
    parts = [p["mode"], f"tap={p['tap']}"]
    if p.get("r_M") is not None:
        parts.append(f"r={p['r_M']:.2f}->{p['r_L']:.2f}")
    if p.get("gamma") is not None:
        parts.append(f"gamma={p['gamma']:.2f}")
    if p.get("tau") is not None:
        parts.append(f"tau={p['tau']:.2f}")
    return " ".join(parts)


def _round_point(p: dict) -> dict:
    q = dict(p)
    q["top1"] = round(q["top1"], 4)
    if "top1_se" in q:
        q["top1_se"] = round(q["top1_se"], 4)
    q["flops"] = round(q["flops"], 1)
    for k in ("exit_rate", "route_rate", "fallback_rate"):
        q[k] = round(q[k], 4)
    return q


class _Contenders:
    """Readies every contender's modules alike (``ready``: BatchNorm folding, channels_last, device)
    and builds the callables the timing primitives run (bf16 autocast alike)."""

    def __init__(self, device: torch.device, bf16: bool, channels_last: bool, batch_size: int, fold_bn: bool):
        self.device, self.bf16, self.cl, self.bs, self.fold = device, bf16, channels_last, batch_size, fold_bn

    def ready(self, module: nn.Module) -> nn.Module:
        """``module`` as the contenders run it (a folded copy when folding)."""
        return prepare_for_inference(module, self.fold, self.cl, self.device)

    def plain(self, net: nn.Module) -> tuple[Callable, Callable]:
        """(pool fn, single fn) for a plain network (already ``ready``): fixed batches, argmax,
        predictions on the CPU."""
        dev, bf16, cl, bs = self.device, self.bf16, self.cl, self.bs

        def one(x: torch.Tensor) -> torch.Tensor:
            with autocast(dev, bf16):
                return net(_prep(x, cl)).float().argmax(1)

        def pool(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([one(chunk) for chunk in x.split(bs)]).cpu()

        return pool, lambda x: one(x).cpu()

    def engine(self, eng: SemanticInference) -> tuple[Callable, Callable]:
        bs = self.bs
        return (lambda x: eng.run_pool(x, bs).pred), (lambda x: eng.run(x).pred)


def _images_on(data: ImageDataset, n: int | None, device: torch.device) -> torch.Tensor:
    k = len(data) if n is None else min(n, len(data))
    return normalise(data.images[:k].to(device), data.mean, data.std)


def run_benchmark(
    exp,
    bundle=None,
    options: BenchOptions | Mapping[str, Any] | None = None,
    on_progress: ProgressFn | None = None,
    log: LogFn = lambda s: None,
) -> dict:
    """Run the whole benchmark for experiment ``exp`` (an ``Experiment``); ``bundle`` (a ``Bundle`` or
    None) supplies the route heads and cluster scores when it has them. Returns a JSON-able dict with,
    for each of base / sinf / exit / cascade / static: top1, latency_ms_bs1, throughput_ips, flops,
    params (plus ratios to base, route accuracy, fallback rate, per-cluster accuracy, the chosen
    operating point), the Pareto fronts, the timing screen and ``hardware``."""
    opts = options if isinstance(options, BenchOptions) else BenchOptions.from_dict(options)
    opts.validate()
    old_threads = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        return _run(exp, bundle, opts, on_progress or (lambda s, d, t: None), log)
    finally:
        torch.set_num_threads(old_threads)


def _run(exp, bundle, opts: BenchOptions, prog: ProgressFn, log: LogFn) -> dict:
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        seconds[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    model: SinfModel = exp.model.eval()
    dev: torch.device = exp.device
    hier = exp.hierarchy
    K = hier.num_clusters
    calib, report = exp.calib_data(), exp.report_data()
    if len(calib) == 0:
        raise SinfError("the calibration split is empty: operating points are chosen on it")
    if len(report) == 0:
        raise SinfError("the report split is empty: there is nothing to report the benchmark on")
    if len(exp.splits.fit) == 0:
        raise SinfError("the fit split is empty: the heads are trained on it")
    input_shape = tuple(calib.images.shape[1:])
    bf16, cl, bs = opts.bf16, opts.use_channels_last, opts.batch_size
    hardware = hardware_info(dev)

    # ---- heads
    t0 = time.perf_counter()
    router = None
    if bundle is not None:
        router = RoutePredictor.load(bundle.root, "router")
    taps = list(opts.taps) if opts.taps else default_bench_taps(model, None if router is None else router.taps_,
                                                                   input_shape)
    for t in taps:
        model.unit_index(t)
    taps = sorted(dict.fromkeys(taps), key=model.unit_index)
    taps = [t for t in taps if first_pruned_index(model, t) < len(model.prunable_layers())]
    if not taps:
        raise SinfError("no swept tap leaves a prunable layer after it")
    route_heads, exit_heads, head_summary = fit_bench_heads(exp, taps, opts, router, prog, log)
    t0 = lap("heads", t0)

    # ---- scores
    score_name = resolve_score(bundle, opts.score)
    cluster_scores = _cluster_scores(exp, bundle, score_name, opts, prog)
    fill_stats = _fit_stats(exp, bundle, opts, prog) if opts.fill == "mean" else None
    n_bn = resolve_bn_samples(bundle, opts.bn_samples)
    opts = replace(opts, bn_samples=n_bn)  # recorded as used
    bn_samples = BatchNormSamples(model, exp.fit_data(), hier, n_bn, opts.seed, bs) if n_bn else None
    log(f"subgraph score: {score_name}; removed channels filled with {opts.fill}; BatchNorm statistics "
        + (f"re-estimated on {n_bn} fit images per cluster" if bn_samples else "of the base model"))
    t0 = lap("scores", t0)

    # ---- precompute on calibration
    work = prepare_for_inference(model, channels_last=True) if cl else model  # a copy unless already so
    labels = calib.labels.clone()
    feats, base_pred = stem_features(work, calib, taps, bs, dev, bf16, cl, prog)
    base_top1_calib = 100.0 * float((base_pred == labels).double().mean())
    tap_data: dict[str, TapData] = {}
    for i, tap in enumerate(taps):
        tap_data[tap] = tap_sweep_data(
            model, exp.model_name, tap, feats[tap], prepare_for_inference(route_heads[tap], channels_last=cl),
            prepare_for_inference(exit_heads[tap], channels_last=cl),
            cluster_scores, hier, opts.schedules, opts.multiple_of, bs, dev, bf16, cl, work, input_shape, fill_stats,
            bn_samples)
        prog("sweep subgraphs (calibration)", i + 1, len(taps))
    t0 = lap("precompute", t0)

    # ---- sweep and fronts
    points = [p for tap in taps for p in sweep_tap(labels, base_pred, tap_data[tap], opts.gammas, opts.taus)]
    fronts = {m: pareto_front([p for p in points if p["mode"] == m]) for m in MODES}
    z = float(opts.budget_z)
    cands = {m: candidates_within_budget([p for p in points if p["mode"] == m], base_top1_calib, opts.budget,
                                         opts.candidates_per_mode, z)
             for m in MODES}
    per_tap = {m: {tap: [_round_point(p) for p in candidates_within_budget(
        [p for p in points if p["mode"] == m and p["tap"] == tap], base_top1_calib, opts.budget, 1, z)]
        for tap in taps} for m in MODES}
    t0 = lap("sweep", t0)
    log(f"sweep: {len(points)} points; base calibration top-1 {base_top1_calib:.2f} %; "
        + ", ".join(f"{m}: {len(fronts[m])} on the front, {len(cands[m])} timed" for m in MODES))

    # ---- engines for the candidates; screen their throughput on calibration images
    C = _Contenders(dev, bf16, cl, bs, opts.fold_bn)
    served = C.ready(work)  # the base model as every contender runs it, readied once and shared
    served_route = {t: C.ready(h) for t, h in route_heads.items()}
    served_exit = {t: C.ready(h) for t, h in exit_heads.items()}
    base_pool, base_one = C.plain(served)

    def make_engine(p: dict) -> tuple[SemanticInference, PathCosts]:
        td = tap_data[p["tap"]]
        sd = None if p["r_M"] is None else next(s for s in td.schedules if (s.r_M, s.r_L) == (p["r_M"], p["r_L"]))
        mode = p["mode"]
        subs = None
        if sd is not None:
            subs = [C.ready(build_subgraph(work, sd.specs[m])) for m in range(K)]
        eng = SemanticInference(
            served, served_route[p["tap"]] if mode != "exit" else None, subs,
            served_exit[p["tap"]] if mode != "sinf" else None, tap=p["tap"], mode=mode,
            gamma=p["gamma"] if p["gamma"] is not None else 1.0, tau=p["tau"] if p["tau"] is not None else 1.0,
            device=dev, bf16=bf16, channels_last=cl, input_shape=input_shape)
        costs = PathCosts(td.stem, td.tail, td.router if mode != "exit" else None, td.exit if mode != "sinf" else None,
                          sd.costs if sd is not None else ())
        return eng, costs

    screen_pool = _images_on(calib, opts.screen_pool, dev)
    screen: dict[str, list[dict]] = {}
    chosen: dict[str, dict] = {}
    fns = {"base": base_pool}
    engines: dict[str, tuple[SemanticInference, PathCosts]] = {}
    for m in MODES:
        for i, p in enumerate(cands[m]):
            name = f"{m}#{i}"
            engines[name] = make_engine(p)
            fns[name] = C.engine(engines[name][0])[0]
    if len(fns) > 1:
        tp = interleaved_throughput(fns, screen_pool, opts.screen_reps, 1, dev, prog)
        for m in MODES:
            pts = cands[m]
            ratios = [statistics.median(paired_ratios(tp, f"{m}#{i}")) for i in range(len(pts))]
            screen[m] = [{**_round_point(p), "ips": round(tp[f"{m}#{i}"]["ips"], 2), "ratio_to_base": round(v, 4)}
                         for i, (p, v) in enumerate(zip(pts, ratios))]
            k = pick_fastest(pts, ratios, base_top1_calib, opts.budget, z)
            if k is not None:
                chosen[m] = {**pts[k], "engine": f"{m}#{k}", "screen_ratio": ratios[k]}
    for m in MODES:
        if m in chosen:
            log(f"chosen {m}: {_point_label(chosen[m])}, calibration top-1 {chosen[m]['top1']:.2f} % "
                f"(standard error of the difference from base {chosen[m]['top1_se']:.2f}), "
                f"{chosen[m]['flops'] / 1e6:.1f} MFLOPs, screened {chosen[m]['screen_ratio']:.3f}x base")
    t0 = lap("screen", t0)
    del screen_pool

    # ---- static network matched to the chosen point's expected FLOPs
    match = opts.static_match
    if match == "best":
        match = max(chosen, key=lambda m: chosen[m]["screen_ratio"]) if chosen else None
    static_info: dict = {"matched_mode": match}
    static_net = None
    if match in chosen:
        cp = chosen[match]
        tap = cp["tap"]
        glob = _global_scores(exp, opts, prog)
        glob_fill = None if fill_stats is None else {
            l.name: fill_stats.group_mean(l.name, range(hier.num_classes)) for l in model.prunable_layers()}
        trials = []
        for method, scores in glob.items():
            st = static_for_flops(model, exp.model_name, tap, scores, cp["flops"], opts.multiple_of, input_shape,
                                  fill=glob_fill)
            if bn_samples is not None:  # on every cluster's samples: the static network serves all classes
                st["spec"] = bn_samples.estimate(st["spec"])
            tail = prepare_for_inference(build_subgraph(work, st["spec"]), channels_last=cl, device=dev)
            acc = _static_calib_top1(tail, feats[tap], labels, bs, dev, bf16)
            trials.append({"score": method, "r": round(st["r"], 6), "flops": st["flops"], "calib_top1": round(acc, 4),
                           "reachable": st["reachable"], "_spec": st["spec"], "_tail": tail})
        best = max(trials, key=lambda t: t["calib_top1"])
        static_net = StaticNet(work, tap, best["_tail"]).eval()
        static_info.update({"tap": tap, "score": best["score"], "r": best["r"], "target_flops": round(cp["flops"], 1),
                            "calib_top1": best["calib_top1"], "reachable": best["reachable"],
                            "multiple_of": opts.multiple_of,
                            "kept": best["_spec"].kept_counts(),
                            "candidates": [{k: v for k, v in t.items() if not k.startswith("_")} for t in trials]})
        log(f"static: {best['score']} from {tap}, r = {best['r']:.3f}, {best['flops'] / 1e6:.1f} MFLOPs "
            f"(target {cp['flops'] / 1e6:.1f}), calibration top-1 {best['calib_top1']:.2f} %")
    del feats
    t0 = lap("static", t0)

    # ---- report split: accuracy and decisions of the real engines
    labels_r = report.labels.clone()
    clusters_r = report.cluster_labels.clone()
    x_report = _images_on(report, None, dev)
    results: dict[str, dict] = {}
    finals: dict[str, tuple[Callable, Callable]] = {"base": (base_pool, base_one)}
    base_c = model_cost(model, input_shape)
    with torch.inference_mode():
        pred = base_pool(x_report)
    results["base"] = {"top1": round(100.0 * float((pred == labels_r).double().mean()), 4),
                       "per_cluster": _per_cluster(pred, labels_r, clusters_r, hier.cluster_names),
                       "flops": base_c.flops, "params": base_c.params, "calib_top1": round(base_top1_calib, 4)}
    prog("report accuracy", 1, len(MODES) + 2)
    for i, m in enumerate(MODES):
        if m not in chosen:
            continue
        eng, costs = engines[chosen[m]["engine"]]
        res = eng.run_pool(x_report, bs)
        results[m] = result_metrics(res, labels_r, clusters_r, hier.cluster_names, costs)
        op = {k: v for k, v in chosen[m].items() if k not in ("engine",)}
        results[m]["operating_point"] = _round_point(op)
        results[m]["operating_point"]["screen_ratio"] = round(op["screen_ratio"], 4)
        results[m]["calib_top1"] = round(op["top1"], 4)
        results[m]["calib_flops"] = round(op["flops"], 1)
        finals[m] = C.engine(eng)
        prog("report accuracy", i + 2, len(MODES) + 2)
    if static_net is not None:
        with torch.inference_mode():
            spool, sone = C.plain(C.ready(static_net))
            pred = spool(x_report)
        sc = Cost(count_params(static_net), count_flops(static_net, torch.zeros(1, *input_shape, device=dev)))
        results["static"] = {"top1": round(100.0 * float((pred == labels_r).double().mean()), 4),
                             "per_cluster": _per_cluster(pred, labels_r, clusters_r, hier.cluster_names),
                             "flops": sc.flops, "params": sc.params, **static_info}
        finals["static"] = (spool, sone)
    prog("report accuracy", len(MODES) + 2, len(MODES) + 2)
    t0 = lap("report_accuracy", t0)

    # ---- timing, side by side, interleaved
    pool = x_report[: opts.pool]
    tp = interleaved_throughput({k: v[0] for k, v in finals.items()}, pool, opts.throughput_reps, 1, dev, prog)
    t0 = lap("throughput", t0)
    lat = interleaved_latency({k: v[1] for k, v in finals.items()}, x_report[: max(opts.latency_calls, 1)],
                              opts.latency_calls, opts.latency_warmup, dev, prog)
    t0 = lap("latency", t0)
    del x_report

    base = results["base"]
    for name in finals:
        r = results[name]
        r["throughput_ips"] = round(tp[name]["ips"], 3)
        r["throughput_ips_best"] = round(tp[name]["ips_best"], 3)
        r["throughput_runs_s"] = [round(v, 6) for v in tp[name]["all_s"]]
        r["latency_ms_bs1"] = round(lat[name]["median_ms"], 4)
        r["latency_p10_p90_ms"] = [round(lat[name]["p10_ms"], 4), round(lat[name]["p90_ms"], 4)]
    for name in finals:
        r = results[name]
        paired = paired_ratios(tp, name)
        r["throughput_ratio"] = round(statistics.median(paired), 4)
        r["throughput_ratio_q25_q75"] = [round(float(v), 4) for v in np.percentile(paired, [25, 75])]
        r["throughput_ratio_of_best_runs"] = round(r["throughput_ips_best"] / base["throughput_ips_best"], 4)
        r["latency_speedup"] = round(base["latency_ms_bs1"] / r["latency_ms_bs1"], 4)
        r["flops_ratio"] = round(r["flops"] / base["flops"], 4)
        r["params_ratio"] = round(r["params"] / base["params"], 4)
        r["top1_delta"] = round(r["top1"] - base["top1"], 4)
    for name in CONTENDERS:
        if name not in results:
            results[name] = {"top1": None, "latency_ms_bs1": None, "throughput_ips": None, "flops": None,
                             "params": None, "note": "no operating point within the budget"}

    modes_done = [m for m in MODES if results[m].get("throughput_ips") is not None]
    within = [m for m in modes_done if results[m]["top1_delta"] >= -opts.budget]
    best_mode = max(within or modes_done, key=lambda m: results[m]["throughput_ratio"]) if modes_done else None
    target = {"budget_points": opts.budget, "throughput_ratio_needed": opts.target_ratio}
    if best_mode is not None:
        b = results[best_mode]
        target.update({"best_mode": best_mode, "top1_delta": b["top1_delta"], "throughput_ratio": b["throughput_ratio"],
                       "met": bool(b["top1_delta"] >= -opts.budget and b["throughput_ratio"] >= opts.target_ratio)})
    try:
        hardware["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    hardware["threads"] = torch.get_num_threads()
    hardware.update({"bf16": bf16, "channels_last": cl, "fold_bn": opts.fold_bn})
    seconds["total"] = round(time.perf_counter() - t_start, 2)
    return {
        "format": BENCH_FORMAT, "version": BENCH_VERSION,
        "model": exp.model_name, "dataset": exp.train.name, "splits": exp.splits.summary(),
        **{name: results[name] for name in CONTENDERS},
        "best_mode": best_mode,
        "target": target,
        "hardware": hardware,
        "heads": head_summary,
        "taps": taps,
        "sweep": {"points": len(points), "base_calib_top1": round(base_top1_calib, 4),
                  "pareto": {m: [_round_point(p) for p in fronts[m]] for m in MODES},
                  "cheapest_within_budget_per_tap": per_tap,
                  "screen": screen},
        "timing": {"pool": int(pool.shape[0]), "batch_size": bs, "throughput_reps": opts.throughput_reps,
                   "latency_calls": opts.latency_calls, "latency_warmup": opts.latency_warmup,
                   "screen_pool": opts.screen_pool, "screen_reps": opts.screen_reps},
        "options": opts.to_json(),
        "subgraph_score": score_name,
        "flops_unit": "FLOPs per image = 2 x MACs (torch.utils.flop_counter)",
        "seconds": seconds,
    }


@torch.inference_mode()
def _static_calib_top1(tail: nn.Module, h: torch.Tensor, labels: torch.Tensor, bs: int, dev: torch.device,
                       bf16: bool) -> float:
    preds = []
    for s in range(0, h.shape[0], bs):
        with autocast(dev, bf16):
            preds.append(tail(h[s : s + bs]).float().argmax(1).cpu())
    return 100.0 * float((torch.cat(preds) == labels).double().mean())


def resolve_bn_samples(bundle, bn_samples: int | None) -> int:
    """``bn_samples`` when given; else the bundle's calibration decision (``bn.json`` of ``sinf build``):
    its sample count when re-estimation won, 0 when it lost; else ``DEFAULT_BN_SAMPLES``."""
    if bn_samples is not None:
        return check_bn_samples(bn_samples)
    if bundle is not None and bundle.has("bn"):
        d = bundle.json("bn.json")
        return int(d.get("bn_samples", DEFAULT_BN_SAMPLES)) if d.get("use") else 0
    return DEFAULT_BN_SAMPLES


def resolve_score(bundle, score: str) -> str:
    """``score``, or for 'auto' the DCS variant with the best mean calibration accuracy in the bundle's
    oracle grid among those whose scores the bundle holds ('dcs' without a grid)."""
    if score != "auto":
        return score
    if bundle is None or not bundle.has("grid"):
        return "dcs"
    from .bundle import score_methods
    from .comparison import choose_dcs_variant, grid_table

    grid = bundle.json("grid.json")
    held = score_methods(bundle)
    tap = (grid.get("taps") or [grid.get("tap")])[0]  # the grid's first stem boundary (not always the router's tap)
    calib = {m: v for m, v in grid_table(grid, tap, "calib").items() if m in held}
    return choose_dcs_variant(calib) or "dcs"


def _fit_stats(exp, bundle, opts: BenchOptions, prog: ProgressFn):
    """``ActivationStats`` of the fit split: the bundle's, else the disk cache (computed when missing)."""
    from .stats import ActivationStats, cached_stats

    if bundle is not None and bundle.has("stats"):
        return ActivationStats.from_tensors(bundle.tensors("stats.safetensors"))
    fit = exp.splits.fit
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        prog("statistics (fit)", done[0], len(fit))

    stats, _, _ = cached_stats(exp.model_name, exp.model, exp.train, "fit", indices=fit, batch_size=opts.batch_size,
                               device=exp.device, on_batch=on_batch, root=opts.cache_dir)
    return stats


def _cluster_scores(exp, bundle, score: str, opts: BenchOptions, prog: ProgressFn) -> dict[int, dict[str, torch.Tensor]]:
    """{cluster: {layer: Tensor[C]}} of ``score``: the bundle's when it has them, else the score
    cache (computed on the fit split when missing)."""
    from .bundle import load_scores, score_methods

    if bundle is not None and score in score_methods(bundle):
        return load_scores(bundle, score)
    from .scores.cache import load_or_compute_scores

    res = load_or_compute_scores([score], exp.model, exp.model_name, exp.fit_data(), "fit", exp.hierarchy,
                                 options=opts.score_options or None, root=opts.cache_dir, batch_size=opts.batch_size,
                                 device=exp.device, on_progress=lambda s, d, t: prog(f"scores: {s}", d, t))
    table = res[score]["scores"]
    return {int(m): table[m] for m in table}


def _global_scores(exp, opts: BenchOptions, prog: ProgressFn) -> dict[str, dict[str, torch.Tensor]]:
    """{method: {layer: Tensor[C]}} of every global (all-classes) score in ``opts.static_scores``."""
    from .scores.cache import load_or_compute_scores

    res = load_or_compute_scores(list(opts.static_scores), exp.model, exp.model_name, exp.fit_data(), "fit",
                                 exp.hierarchy, options=opts.score_options or None, targets=[None],
                                 root=opts.cache_dir, batch_size=opts.batch_size, device=exp.device,
                                 on_progress=lambda s, d, t: prog(f"global scores: {s}", d, t))
    return {m: res[m]["scores"][None] for m in opts.static_scores}


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    """The bench table as fixed-width text (also used in docs)."""
    lines = [f"{result['model']} on {result['dataset']} (report split, {result['splits']['report']} images); "
             f"{result['hardware']['cpu']}, {result['hardware']['threads']} threads, torch {result['hardware']['torch']}, "
             f"bf16 {result['hardware']['bf16']}",
             f"{'':<8} {'top1 %':>7} {'d top1':>7} {'MFLOPs':>8} {'x FLOPs':>8} {'params':>9} {'bs1 ms':>8} "
             f"{'x bs1':>6} {'img/s':>8} {'x img/s':>8} {'route%':>7} {'exit%':>6} {'fallb%':>7}"]
    for name in CONTENDERS:
        r = result[name]
        if r.get("throughput_ips") is None:
            lines.append(f"{name:<8} {'(no point within the budget)':>40}")
            continue

        def pct(v):
            return "" if v is None else f"{100 * v:.1f}"

        lines.append(f"{name:<8} {r['top1']:7.2f} {r['top1_delta']:+7.2f} {r['flops'] / 1e6:8.1f} {r['flops_ratio']:8.3f} "
                     f"{r['params']:9d} {r['latency_ms_bs1']:8.2f} {r['latency_speedup']:6.2f} {r['throughput_ips']:8.1f} "
                     f"{r['throughput_ratio']:8.3f} {pct(r.get('route_rate')):>7} {pct(r.get('exit_rate')):>6} "
                     f"{pct(r.get('fallback_rate')):>7}")
    for m in MODES:
        op = result[m].get("operating_point")
        if op:
            lines.append(f"  {m}: {_point_label(op)}; route accuracy "
                         f"{result[m].get('route_accuracy')}; calibration top-1 {op['top1']:.2f} %")
    st = result["static"]
    if st.get("score"):
        lines.append(f"  static: score {st['score']} from {st['tap']}, r = {st['r']:.3f}, matched to "
                     f"{st['matched_mode']} ({st['target_flops'] / 1e6:.1f} MFLOPs)")
    t = result["target"]
    if t.get("best_mode"):
        lines.append(f"  best mode: {t['best_mode']} at {t['top1_delta']:+.2f} points, {t['throughput_ratio']:.3f}x "
                     f"base throughput; target (>= -{t['budget_points']} points, >= {t['throughput_ratio_needed']}x): "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
