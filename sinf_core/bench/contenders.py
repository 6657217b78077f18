"""Every contender readied alike (BatchNorm folding, channels_last, device) and wrapped as the callables
the timing primitives run (bf16 autocast alike)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data import ImageDataset, normalise
from ..device import autocast
from ..engine import SemanticInference
from ..fusion import prepare_for_inference
from .precompute import _prep


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
