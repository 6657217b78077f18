"""The contract every SINF model follows.

A model is an ordered list of *units* followed by a *head*: ``logits = head(u_n(...u_1(x)))``.
Units share their parameters with the model (they are views of its modules, so state-dict keys stay
those of the public releases). The stem/tail split at unit ``t`` runs units ``0..t`` as the stem and
units ``t+1..n`` plus the head as the tail. Prunable layers are the convs whose output channels can
be removed without touching the residual stream (METHOD.md notation, forward order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.core import DEFAULT_IMAGE_SIZE
from ..errors import SinfError

# (C, H, W) of a model built with no data at hand; a model built for a data set (``load_model`` /
# ``build_model`` with ``input_shape``, as ``open_experiment`` does) has the data's instead.
DEFAULT_INPUT_SHAPE = (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable conv. ``name`` is its module path (e.g. ``layer3.4.conv1`` or ``features.40``).

    ``bn`` is the BatchNorm right after it; A_l (METHOD.md) is ``relu(bn(conv(x)))``. ``unit`` is the
    index of the unit that holds it. ``role`` says what kind of layer it is: ``vgg``, ``basic``
    (BasicBlock conv1), ``bottleneck1`` / ``bottleneck2`` (Bottleneck conv1 / conv2), ``graph`` (found on a
    traced graph, ``GraphModel``).

    How its channels are consumed: ``reader`` is the one layer that reads them (a conv, or the linear
    layer after a flatten), ``reader_bn`` the BatchNorm right after a bias-free reader (where a mean fill
    is folded), ``through`` the channel-wise steps between A_l and the reader, in order: depthwise convs
    and their BatchNorms (sliced with the layer) and parameter-free steps (pools, activations).
    """

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    unit: int
    role: str
    reader: nn.Module | None = None
    reader_bn: nn.BatchNorm2d | None = None
    through: tuple[nn.Module | Callable, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.conv.out_channels)


class SinfModel(nn.Module):
    """Base class: subclasses build ``self._units`` (list of (name, module)) and implement ``head``.

    ``input_shape``: (C, H, W) of the images it runs on, decided once with its data (``load_model``'s
    ``input_shape``); every FLOP count, export, engine and upload reads it from here."""

    num_classes: int
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE

    def units(self) -> list[tuple[str, nn.Module]]:
        return list(self._unit_list)

    def unit_names(self) -> list[str]:
        return [n for n, _ in self._unit_list]

    def unit_index(self, name_or_index: str | int) -> int:
        names = self.unit_names()
        if isinstance(name_or_index, int):
            if not -len(names) <= name_or_index < len(names):
                raise SinfError(f"unit index {name_or_index} out of range 0..{len(names) - 1}")
            return name_or_index % len(names)
        if name_or_index not in names:
            raise SinfError(f"unknown tap {name_or_index!r}; units are: {', '.join(names)}")
        return names.index(name_or_index)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head_module(self) -> nn.Module:
        """A module computing exactly ``head`` from the model's own layers (copied into subgraphs)."""
        raise NotImplementedError

    def classifier_layer(self) -> nn.Linear:
        """The final linear layer (its input is the penultimate feature)."""
        raise NotImplementedError

    def prunable_layers(self) -> list[PrunableLayer]:
        raise NotImplementedError

    def prunable_layer(self, name: str) -> PrunableLayer:
        for layer in self.prunable_layers():
            if layer.name == name:
                return layer
        known = ", ".join(l.name for l in self.prunable_layers())
        raise SinfError(f"no prunable layer named {name!r}; known: {known}")

    def forward_stem(self, x: torch.Tensor, tap: str | int) -> torch.Tensor:
        """Units 0..tap (inclusive)."""
        t = self.unit_index(tap)
        for _, unit in self._unit_list[: t + 1]:
            x = unit(x)
        return x

    def forward_tail(self, h: torch.Tensor, tap: str | int) -> torch.Tensor:
        """Units after ``tap``, then the head: logits."""
        t = self.unit_index(tap)
        for _, unit in self._unit_list[t + 1 :]:
            h = unit(h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, unit in self._unit_list:
            x = unit(x)
        return self.head(x)
