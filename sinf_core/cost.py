"""Parameters and FLOPs of models, stems, tails and subgraphs.

FLOPs are counted by torch's own ``torch.utils.flop_counter.FlopCounterMode`` and reported exactly as
torch counts them: **2 x multiply-accumulates** for convolutions and matrix products (conv, linear,
matmul/bmm); element-wise work (BatchNorm, ReLU, pooling, residual adds, bias adds) is not counted.
So a conv contributes ``2 * Cin/groups * Cout * kh * kw * Hout * Wout`` per image and a linear layer
``2 * in_features * out_features``. Divide by 2 for the MAC figures papers usually quote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import SinfError
from .models import SinfModel

Shape = Sequence[int] | None  # (C, H, W) of one image; None: the model's own ``input_shape``


@dataclass(frozen=True)
class Cost:
    """Parameters (count of scalars) and FLOPs per image (2 x MACs, see the module docstring)."""

    params: int
    flops: int

    def to_json(self) -> dict:
        return asdict(self)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.flops + other.flops)


def _unique_params(modules: Iterable[nn.Module]) -> dict[int, nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return seen


def count_params(module: nn.Module | Iterable[nn.Module]) -> int:
    """Number of parameter scalars (buffers such as BN running statistics are not counted); a
    parameter shared between modules is counted once."""
    mods = [module] if isinstance(module, nn.Module) else list(module)
    return int(sum(p.numel() for p in _unique_params(mods).values()))


def count_flops(fn_or_module: Callable[[torch.Tensor], object], example_input: torch.Tensor) -> int:
    """FLOPs of one call ``fn_or_module(example_input)`` as ``FlopCounterMode`` counts them
    (2 x MACs of conv / linear / matmul; element-wise ops are free). The count is for the whole
    ``example_input`` batch: pass a batch of one for per-image FLOPs. Runs under ``no_grad``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn_or_module(example_input)
    return int(counter.get_total_flops())


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def example_input(model: nn.Module, input_shape: Shape = None) -> torch.Tensor:
    """Zeros [1, *input_shape] on the model's device (default: its ``input_shape``, the images it was
    built for; a plain module without one needs ``input_shape``)."""
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise SinfError(f"{type(model).__name__} does not say what images it takes: pass input_shape (C, H, W)")
    return torch.zeros(1, *shape, device=_device_of(model))


@torch.no_grad()
def stem_output(model: SinfModel, tap: str | int | None, input_shape: Shape = None) -> torch.Tensor:
    """An example stem output [1, C, H, W] at ``tap`` (the input itself when ``tap`` is None)."""
    x = example_input(model, input_shape)
    return x if tap is None else model.forward_stem(x, tap)


def _stem_modules(model: SinfModel, tap: str | int | None) -> list[nn.Module]:
    if tap is None:
        return []
    t = model.unit_index(tap)
    return [m for _, m in model.units()[: t + 1]]


def stem_cost(model: SinfModel, tap: str | int | None, input_shape: Shape = None) -> Cost:
    """Units 0..tap: their parameters and per-image FLOPs (zero when ``tap`` is None)."""
    if tap is None:
        return Cost(0, 0)
    params = count_params(_stem_modules(model, tap))
    flops = count_flops(lambda x: model.forward_stem(x, tap), example_input(model, input_shape))
    return Cost(params, flops)


def tail_cost(model: SinfModel, tap: str | int | None, input_shape: Shape = None) -> Cost:
    """The unpruned tail (units after ``tap`` plus the head): parameters and per-image FLOPs.
    With ``tap`` None the tail is the whole model."""
    stem_ids = set(_unique_params(_stem_modules(model, tap)))
    params = int(sum(p.numel() for i, p in _unique_params([model]).items() if i not in stem_ids))
    h = stem_output(model, tap, input_shape)
    fn = model if tap is None else (lambda z: model.forward_tail(z, tap))
    return Cost(params, count_flops(fn, h))


def model_cost(model: nn.Module, input_shape: Shape = None) -> Cost:
    """A whole model on one image of ``input_shape`` (default: the model's)."""
    return Cost(count_params(model), count_flops(model, example_input(model, input_shape)))


def module_cost(module: nn.Module, example: torch.Tensor) -> Cost:
    """Any module (e.g. a ``Subgraph``) on ``example`` (a batch of one for per-image FLOPs)."""
    return Cost(count_params(module), count_flops(module, example))
