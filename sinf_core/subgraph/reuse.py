"""Reuse across configurations: the first unit after the tap, computed once for a run of configurations.

Tuning evaluates one configuration after another on the same inputs. The retention schedule gives
the first pruned layer the removed fraction r_M whatever r_L is, so moving r_L (or overriding another
cluster) leaves each subgraph's first unit as it was: the same modules with the same tensors. Its
outputs over the same inputs are then the same, and a ``FirstUnitReuse`` hands them back instead of
running the unit again (on VGG16-BN at features.24 that unit is half of a subgraph's convolution work).
Reuse is decided by comparing the unit exactly (module types, settings, train / eval modes and every
tensor), never by a name or a configuration key, so a changed unit is always run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn

DEFAULT_REUSE_BYTES = 512 * 2**20  # outputs kept at most (all entries together); larger ones are not kept


def unit_fingerprint(unit: nn.Module) -> tuple:
    """What decides what ``unit`` computes: its structure and settings (repr), each submodule's type and
    mode, and a copy of every parameter and buffer (copied: the caller may change them afterwards)."""
    modes = tuple((type(m), m.training) for m in unit.modules())
    tensors = {k: v.detach().clone() for k, v in unit.state_dict(keep_vars=True).items()}
    return repr(unit), modes, tensors


def same_fingerprint(a: tuple, b: tuple) -> bool:
    if a[0] != b[0] or a[1] != b[1] or a[2].keys() != b[2].keys():
        return False
    return all(x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
               for x, y in ((a[2][k], b[2][k]) for k in a[2]))


@dataclass
class _Entry:
    source: tuple  # the inputs the outputs were computed on (kept alive: compared by identity / value)
    unit: tuple  # unit_fingerprint of the first unit
    outputs: list[torch.Tensor]
    extra: Any
    nbytes: int


def _same_source(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x is not y and not (x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor) or x != y:
            return False
    return True


class FirstUnitReuse:
    """The first unit's outputs of the last subgraph run under each key (e.g. a cluster), reused when
    the next subgraph under that key has an equal first unit and runs on the same inputs.

    ``source``: a tuple that says what the inputs are: tensors are the same object or equal, other
    items equal (e.g. the batch size, which fixes the batches). At most ``max_bytes`` of outputs are
    kept over all keys; an entry that would pass it is computed and not kept."""

    def __init__(self, max_bytes: int = DEFAULT_REUSE_BYTES):
        self.max_bytes = int(max_bytes)
        self._last: dict[Hashable, _Entry] = {}
        self.hits = self.misses = 0

    def outputs(self, key: Hashable, unit: nn.Module, source: tuple,
                compute: Callable[[nn.Module], tuple[Sequence[torch.Tensor], Any]]) -> tuple[list[torch.Tensor], Any]:
        """(outputs, extra) of ``compute(unit)`` (outputs: the unit's output per batch; extra: anything
        measured with them, e.g. its BatchNorm statistics), or the kept ones when they still hold."""
        fp = unit_fingerprint(unit)
        e = self._last.get(key)
        if e is not None and _same_source(e.source, source) and same_fingerprint(e.unit, fp):
            self.hits += 1
            return e.outputs, e.extra
        self.misses += 1
        self._last.pop(key, None)
        outputs, extra = compute(unit)
        outputs = list(outputs)
        nbytes = sum(o.numel() * o.element_size() for o in outputs)
        if nbytes + sum(x.nbytes for x in self._last.values()) <= self.max_bytes:
            self._last[key] = _Entry(source, fp, outputs, extra, nbytes)
        return outputs, extra

    def clear(self) -> None:
        self._last.clear()
