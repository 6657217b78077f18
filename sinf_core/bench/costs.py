"""Per-image cost of every path through a routed classifier and the expected FLOPs per input
(METHOD.md section 9)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..cost import Cost, module_cost, stem_output
from ..engine import FALLBACK, ROUTE
from ..errors import SinfError
from ..models import SinfModel


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


def sample_flops(costs: PathCosts, mode_per_sample: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
    """float64 [N]: each input's FLOPs from its actual decisions, by the rule of ``expected_flops`` (stem and
    exit head for every input, the router where it ran, the routed cluster's subgraph or the tail); their
    mean is ``decision_flops``. What a routed engine costs per input as the last network of a chain."""
    mode = mode_per_sample.long().cpu()
    route = route.long().cpu()
    out = torch.full((int(mode.shape[0]),), float(costs.stem.flops + (costs.exit.flops if costs.exit is not None else 0.0)),
                     dtype=torch.float64)
    if costs.router is not None:
        out += (route >= 0).double() * float(costs.router.flops)
    out += (mode == FALLBACK).double() * float(costs.tail.flops)
    routed = mode == ROUTE
    if routed.any():
        out[routed] += torch.from_numpy(costs.sub_flops())[route[routed]]
    return out


def head_cost(head: nn.Module, model: SinfModel, tap: str, input_shape: Sequence[int] | None = None) -> Cost:
    """Parameters and per-image FLOPs of a head on the stem output at ``tap``."""
    with torch.no_grad():
        h = stem_output(model, tap, input_shape)
    return module_cost(head.eval(), h)
