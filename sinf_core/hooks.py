"""Forward hooks that expose A_l = relu(bn_l(conv_l(x))) of prunable layers, always removed."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from .models import PrunableLayer, SinfModel


@contextlib.contextmanager
def activations(
    model: SinfModel,
    layers: Sequence[PrunableLayer] | None,
    callback: Callable[[PrunableLayer, torch.Tensor], None],
) -> Iterator[None]:
    """While active, every forward pass calls ``callback(layer, A)`` with A = relu(BN output),
    shape [N, C, H, W], for each of ``layers`` (default: all prunable layers). The callback must not
    keep A (reduce it to what it needs). Hooks are removed on exit, even on error."""
    layers = list(model.prunable_layers() if layers is None else layers)
    handles = []
    try:
        for layer in layers:
            def hook(_mod, _inp, out, layer=layer):
                callback(layer, torch.relu(out))
            handles.append(layer.bn.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
