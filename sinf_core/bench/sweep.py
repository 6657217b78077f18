"""The operating-point sweep on the calibration split: every (tap, r_M, r_L, gamma, tau) point's top-1 and
expected FLOPs as a vectorised combination of precomputed arrays, the Pareto fronts and the choice."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..cost import Cost
from ..errors import SinfError
from ..subgraph.spec import SubgraphSpec
from ..evaluate import paired_se as _paired_se


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
        if k in q:
            q[k] = round(q[k], 4)
    if "answered" in q:
        q["answered"] = [round(v, 4) for v in q["answered"]]
    return q
