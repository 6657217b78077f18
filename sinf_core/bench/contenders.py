"""Every contender readied alike (BatchNorm folding, channels_last, device) and wrapped as the callables
the timing primitives run (bf16 autocast alike)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data import ImageDataset, normalise
from ..engine import SemanticInference
from ..runtime import Runtime


class _Contenders:
    """Readies every contender's modules alike (``ready``: on the runtime, BatchNorm folded when
    ``fold_bn``) and builds the callables the timing primitives run (the runtime's autocast alike)."""

    def __init__(self, rt: Runtime, fold_bn: bool):
        self.rt, self.fold = rt, fold_bn

    def ready(self, module: nn.Module) -> nn.Module:
        """``module`` as the contenders run it (a folded copy when folding)."""
        return self.rt.ready(module, self.fold)

    def plain(self, net: nn.Module) -> tuple[Callable, Callable]:
        """(pool fn, single fn) for a plain network (already ``ready``): fixed batches, argmax,
        predictions on the CPU."""
        rt = self.rt

        def one(x: torch.Tensor) -> torch.Tensor:
            with rt.autocast():
                return net(rt.layout(x)).float().argmax(1)

        def pool(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([one(chunk) for chunk in x.split(rt.batch_size)]).cpu()

        return pool, lambda x: one(x).cpu()

    def engine(self, eng: SemanticInference) -> tuple[Callable, Callable]:
        bs = self.rt.batch_size
        return (lambda x: eng.run_pool(x, bs).pred), (lambda x: eng.run(x).pred)


def _images_on(data: ImageDataset, n: int | None, device: torch.device) -> torch.Tensor:
    k = len(data) if n is None else min(n, len(data))
    return normalise(data.images[:k].to(device), data.mean, data.std)
