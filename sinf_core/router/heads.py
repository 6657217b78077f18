"""Heads on the stem's output and the small pure functions around them (``sinf_core.router``).

A *head*: 3x3 conv (to ``hidden`` channels, no bias) + BN + ReLU + global average pool + linear to K
outputs, on the features at a tap. Also: one stem pass to several taps, temperature scaling (LBFGS on
the NLL of log T) and the choice of the attachment point.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset
from ..errors import SinfError
from ..models import SinfModel

FORMAT = "sinf-heads"
FORMAT_VERSION = 1
TARGETS = ("cluster", "class")

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


# --------------------------------------------------------------------------------------------
# The head module and small pure functions
# --------------------------------------------------------------------------------------------


class RouteHead(nn.Module):
    """conv3x3(C_in -> hidden) + BN + ReLU + global average pool + Linear(hidden -> K).

    ``forward(h)``: stem features [N, C_in, H, W] -> raw logits [N, K]. ``temperature`` (a scalar
    buffer, saved with the weights) divides the logits in ``calibrated_logits`` / ``proba``.
    """

    def __init__(self, in_channels: int, num_outputs: int, hidden: int = 64):
        super().__init__()
        if in_channels < 1 or num_outputs < 1 or hidden < 1:
            raise SinfError("a head needs at least one input channel, one output and one hidden channel")
        self.in_channels, self.num_outputs, self.hidden = int(in_channels), int(num_outputs), int(hidden)
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, num_outputs)
        self.register_buffer("temperature", torch.ones(()))
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.bn(self.conv(h)))
        return self.fc(z.mean(dim=(2, 3)))

    def calibrated_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits / T as float32 [N, K]."""
        return self(h).float() / self.temperature.float()

    def proba(self, h: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled probabilities, float32 [N, K]."""
        return torch.softmax(self.calibrated_logits(h), dim=1)


def forward_taps(model: SinfModel, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
    """One stem pass: the outputs of units ``taps`` (indices, any order) for input ``x`` [N, 3, H, W].

    Runs units 0..max(taps) once; returns the features in the order of ``taps``.
    """
    if not taps:
        return []
    want = {t: None for t in taps}
    last = max(taps)
    h = x
    for i, (_, unit) in enumerate(model.units()[: last + 1]):
        h = unit(h)
        if i in want:
            want[i] = h
    return [want[t] for t in taps]


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` [N] under softmax(logits [N, K] / T)."""
    return float(F.cross_entropy(logits.double() / float(temperature), labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017), by LBFGS on log T.

    ``logits`` [N, K] (any float dtype), ``labels`` [N]. Returns 1.0 for an empty input.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise SinfError(f"temperature fit needs logits [N, K] and labels [N], got {tuple(logits.shape)} / {tuple(labels.shape)}")
    if len(labels) == 0:
        return 1.0
    z = logits.detach().double().cpu()
    y = labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(-6.0, 6.0).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(-6.0, 6.0).exp())
    if not math.isfinite(t):
        return 1.0
    return t if nll(z, y, t) <= nll(z, y, 1.0) else 1.0


def choose_tap(taps: Sequence[str], accuracy: dict[str, float], target: float) -> tuple[str, bool]:
    """The earliest tap (``taps`` in forward order) whose accuracy reaches ``target``.

    When none does, the most accurate one (the earliest among equals). Returns (tap, target reached).
    """
    if not taps:
        raise SinfError("no candidate taps to choose from")
    for tap in taps:
        if accuracy[tap] >= target:
            return tap, True
    best = max(accuracy[t] for t in taps)
    return next(t for t in taps if accuracy[t] == best), False


def default_taps(model: SinfModel, n: int = 6, start_fraction: float = 0.5) -> list[str]:
    """``n`` candidate taps spread evenly over the deeper part of the units that leave at least one
    prunable layer after them (from ``start_fraction`` of the way in; never the first unit), always
    including the deepest such unit. Early taps rarely route well (METHOD.md section 11) and their
    heads cost the most to train (the largest feature maps), so the default scan starts mid-network;
    pass ``taps`` explicitly to scan from the input side."""
    names = model.unit_names()
    prunable_units = [l.unit for l in model.prunable_layers()]
    if not prunable_units:
        raise SinfError("the model has no prunable layers, so there is nothing to route to")
    last = max(prunable_units) - 1  # a tap must leave the last prunable unit in the tail
    cands = list(range(1, last + 1)) or [0]
    cands = cands[min(len(cands) - 1, int(math.floor(start_fraction * len(cands)))) :]
    if n >= len(cands):
        return [names[i] for i in cands]
    pos = np.unique(np.round(np.linspace(0, len(cands) - 1, n)).astype(int))
    return [names[cands[p]] for p in pos]


def _targets(data: ImageDataset, target: str) -> torch.Tensor:
    return data.cluster_labels if target == "cluster" else data.labels


def _output_names(data: ImageDataset, target: str) -> list[str]:
    return list(data.hierarchy.cluster_names if target == "cluster" else data.hierarchy.class_names)

