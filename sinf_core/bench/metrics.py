"""Report-split metrics of an engine's actual decisions."""

from __future__ import annotations

from typing import Sequence

import torch

from ..engine import EXIT, FALLBACK, ROUTE, InferenceResult
from .costs import PathCosts, decision_flops


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
