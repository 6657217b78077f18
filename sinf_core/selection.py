"""Network selection: a chain of networks, cheapest first, each answering what it is sure of.

Every input runs the first network; its gate accepts the answer when the network's *calibrated*
confidence (the top softmax probability of its logits divided by a temperature fitted on the
calibration split) is at least the link's threshold, and sends the input on to the next network
otherwise. The last network answers everything that reaches it; it may be a plain network or any
routed engine (SINF, early exit, cascade) given by its predictions and its cost per input.

Everything here is plain arrays: ``gate_outputs`` turns one network's logits on a split into
(confidence, prediction); ``sweep_chain`` gives the calibration top-1 and the expected FLOPs of every
threshold setting (vectorised; costs count every network that ran); ``NetworkSelection`` runs a
chosen setting on images, batch by batch, sending only the unsure inputs on. Which setting to serve
is the benchmark's decision (calibration split, guarded accuracy budget, measured speed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import SinfError
from .evaluate import paired_se
from .router import fit_temperature

SELECT_GRID = tuple(round(i / 100, 2) for i in range(0, 101))  # thresholds of a two-network chain
SELECT_GRID_COARSE = tuple(round(i / 20, 2) for i in range(0, 21))  # per link, for longer chains


@dataclass
class Gate:
    """One link's gate: accept when softmax(logits / temperature).max() >= threshold (1.0: never)."""

    temperature: float = 1.0
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise SinfError(f"a gate's temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0):
            raise SinfError(f"a gate's threshold must be in [0, 1], got {self.threshold!r}")

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated confidence [N], predicted class [N])."""
        conf, pred = torch.softmax(logits.float() / float(self.temperature), dim=1).max(dim=1)
        return conf, pred

    def accepts(self, conf: torch.Tensor) -> torch.Tensor:
        return (conf >= self.threshold) & (self.threshold < 1.0)


def fit_gate(calib_logits: torch.Tensor, labels: torch.Tensor) -> Gate:
    """A gate whose temperature is fitted on calibration logits (NLL, as the router's heads are)."""
    return Gate(temperature=float(fit_temperature(calib_logits, labels)))


@dataclass
class Stage:
    """One network of the chain on one split: its calibrated confidence and prediction per sample
    (``conf`` is unused for the last network) and its cost per input (FLOPs: a number, or a tensor
    [N] when the cost depends on the input, as for a routed engine)."""

    name: str
    pred: torch.Tensor
    flops: float | torch.Tensor
    conf: torch.Tensor | None = None


def _cost(flops: float | torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(flops, dtype=torch.float64)
    return t.expand(n) if t.ndim == 0 else t


def sweep_chain(labels: torch.Tensor, base_pred: torch.Tensor, stages: Sequence[Stage],
                grid: Sequence[float] | None = None) -> list[dict]:
    """Calibration top-1 (%) and expected FLOPs per input of every threshold setting of the chain.

    ``stages``: cheapest first; all but the last need ``conf``. ``grid``: the thresholds tried at each
    link (default ``SELECT_GRID`` for two networks, ``SELECT_GRID_COARSE`` per link for longer chains);
    a threshold of 1 never accepts. Each point: mode 'select', thresholds (one per link), top1, top1_se
    (standard error, points, of the paired difference from ``base_pred``), flops (every network that
    ran: a network's cost counts for every input that reached it), answered (share per network)."""
    if len(stages) < 2:
        raise SinfError("network selection needs at least two networks")
    n = int(labels.shape[0])
    if n == 0:
        raise SinfError("the sweep needs at least one calibration sample")
    for s in stages[:-1]:
        if s.conf is None:
            raise SinfError(f"network {s.name!r} needs a gate confidence")
    for s in stages:
        if s.pred.shape[0] != n:
            raise SinfError(f"network {s.name!r}: {s.pred.shape[0]} predictions for {n} samples")
    links = len(stages) - 1
    grid = list(grid if grid is not None else (SELECT_GRID if links == 1 else SELECT_GRID_COARSE))
    base_ok = base_pred == labels
    oks = [s.pred == labels for s in stages]
    costs = [_cost(s.flops, n) for s in stages]
    points = []
    for ts in itertools.product(grid, repeat=links):
        remaining = torch.ones(n, dtype=torch.bool)
        ok = torch.zeros(n, dtype=torch.bool)
        flops = torch.zeros(n, dtype=torch.float64)
        answered = []
        for k, s in enumerate(stages):
            flops += torch.where(remaining, costs[k], torch.zeros((), dtype=torch.float64))
            take = remaining if k == links else remaining & (s.conf >= ts[k]) & (ts[k] < 1.0)
            ok |= take & oks[k]
            answered.append(float(take.double().mean()))
            remaining &= ~take
        points.append({"mode": "select", "networks": [s.name for s in stages], "thresholds": [float(t) for t in ts],
                       "top1": 100.0 * float(ok.double().mean()), "top1_se": 100.0 * float(paired_se(ok, base_ok)),
                       "flops": float(flops.mean()), "answered": answered})
    return points


@dataclass
class SelectionResult:
    pred: torch.Tensor  # int64 [N]
    stage: torch.Tensor  # int64 [N]: which network answered (0 = the first)

    def shares(self) -> list[float]:
        n = max(1, int(self.stage.numel()))
        k = int(self.stage.max()) + 1 if self.stage.numel() else 0
        return [float((self.stage == i).sum()) / n for i in range(k)]


class NetworkSelection:
    """A chain served: ``networks[:-1]`` return logits and are gated by ``gates`` (one per link);
    ``last`` maps the inputs that reach it to predicted classes [M] (a network's argmax, or a routed
    engine's ``predict``); ``last_pool``, when given, maps all the inputs that reach it in throughput mode
    (a routed engine's ``run_pool``, which groups over the whole pool), else ``last`` runs chunk by chunk.
    Inputs are normalised images; only unsure ones go on to the next network."""

    def __init__(self, networks: Sequence[Callable[[torch.Tensor], torch.Tensor]], gates: Sequence[Gate],
                 last: Callable[[torch.Tensor], torch.Tensor],
                 last_pool: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if len(networks) != len(gates) or not networks:
            raise SinfError(f"network selection needs one gate per gated network, got {len(networks)} networks "
                            f"and {len(gates)} gates")
        self.networks, self.gates, self.last, self.last_pool = list(networks), list(gates), last, last_pool

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> SelectionResult:
        n = x.shape[0]
        pred = torch.full((n,), -1, dtype=torch.long, device=x.device)
        stage = torch.full((n,), len(self.networks), dtype=torch.long, device=x.device)
        idx = torch.arange(n, device=x.device)
        h = x
        for k, (net, gate) in enumerate(zip(self.networks, self.gates)):
            if idx.numel() == 0:
                break
            conf, p = gate.confidence(net(h))
            take = gate.accepts(conf)
            pred[idx[take]] = p[take]
            stage[idx[take]] = k
            keep = ~take
            idx, h = idx[keep], h[keep]
        if idx.numel():
            pred[idx] = self.last(h).to(pred.device)
        return SelectionResult(pred.cpu(), stage.cpu())

    @torch.inference_mode()
    def run_pool(self, images: torch.Tensor, batch_size: int | None = 256) -> SelectionResult:
        """Throughput mode, as the routed engine's: each network runs over all the inputs that reach it, in
        chunks of ``batch_size`` (so the later networks see full batches of the unsure inputs, not the
        unsure part of each batch); ``batch_size=None``: the input is one batch."""
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SinfError(f"batch size must be a positive integer, got {batch_size!r}")
        n = images.shape[0]
        if batch_size is None or batch_size >= n:
            return self.run(images)
        pred = torch.full((n,), -1, dtype=torch.long, device=images.device)
        stage = torch.full((n,), len(self.networks), dtype=torch.long, device=images.device)
        idx = torch.arange(n, device=images.device)
        h = images
        for k, (net, gate) in enumerate(zip(self.networks, self.gates)):
            if idx.numel() == 0:
                break
            outs = [gate.confidence(net(c)) for c in h.split(batch_size)]
            conf, p = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
            take = gate.accepts(conf)
            pred[idx[take]] = p[take]
            stage[idx[take]] = k
            keep = ~take
            idx, h = idx[keep], h[keep]
        if idx.numel():
            out = (self.last_pool(h) if self.last_pool is not None
                   else torch.cat([self.last(c) for c in h.split(batch_size)]))
            pred[idx] = out.to(pred.device)
        return SelectionResult(pred.cpu(), stage.cpu())

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images).pred


def argmax_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> model(x).argmax(1)``: a plain network as the chain's last link."""
    return lambda x: model(x).argmax(1)
