"""Inference-time rewrite: fold each BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm2d is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with
scaled weights and a shifted bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). Folding removes a
full read and write of every feature map per BatchNorm; on CPU that is a large share of the time of
the wide, shallow layers of CIFAR networks (VGG16-BN's 32x32 layers are memory-bound), so it changes
where the time goes, not only how much there is.

Which BatchNorm follows which convolution is read off the module's ``torch.fx`` graph: a BatchNorm2d
whose input is a Conv2d's output, where that output feeds nothing else. The rewrite works on a deep
copy, keeps the module tree (units, taps, attributes) and replaces each folded BatchNorm by
``nn.Identity``. A module ``torch.fx`` cannot trace is returned as an unfolded copy, with the reason.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models import SinfModel


class _Tracer(fx.Tracer):
    """A tracer that also walks containers not installed in the module tree (a ``SinfModel`` calls
    its units, slices of its Sequentials, which are not); leaf modules keep their qualified names."""

    def path_of_module(self, mod: nn.Module) -> str:
        try:
            return super().path_of_module(mod)
        except NameError:
            if self.is_leaf_module(mod, ""):
                raise
            return f"<unit {type(mod).__name__}>"


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for every BatchNorm2d fed only by a Conv2d whose output feeds
    nothing else, both called once per forward pass, as qualified names in ``module``. Raises whatever ``torch.fx`` tracing raises for an untraceable module."""
    graph = _Tracer().trace(module)
    named = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(named.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(named.get(src.target), nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((src.target, node.target))  # each module called once: folding changes nothing else
    return pairs


def _all_modules(root: nn.Module) -> Iterable[nn.Module]:
    """Every module reachable from ``root``: its registered tree plus, for a ``SinfModel``, the unit
    containers it keeps outside the tree (slices of its Sequentials)."""
    seen: dict[int, nn.Module] = {id(m): m for m in root.modules()}
    if isinstance(root, SinfModel):
        for _, unit in root.units():
            for m in unit.modules():
                seen.setdefault(id(m), m)
    return seen.values()


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int, str | None]:
    """An eval-mode copy of ``module`` with every conv -> BatchNorm pair folded into the conv.

    Returns (copy, number of BatchNorms folded, None) or, when the module cannot be traced,
    (unfolded eval copy, 0, reason). ``module`` itself is never changed. The copy computes the same
    function up to float rounding (about 1e-6 relative in float32)."""
    out = copy.deepcopy(module).eval()
    try:
        pairs = conv_bn_pairs(out)
    except Exception as e:  # torch.fx raises many kinds for dynamic control flow
        return out, 0, f"{type(e).__name__}: {e}"
    if not pairs:
        return out, 0, None
    named = dict(out.named_modules())
    swap: dict[int, nn.Module] = {}
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = named[conv_name], named[bn_name]
            swap[id(conv)] = fuse_conv_bn_eval(conv, bn)
            swap[id(bn)] = nn.Identity()
    for parent in _all_modules(out):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in swap:
                parent._modules[name] = swap[id(child)]
    return out, len(pairs), None


def _is_ready(module: nn.Module, channels_last: bool, device: torch.device | str | None) -> bool:
    """Whether readying ``module`` would change nothing: every module in eval mode and every tensor
    already where (device) and how (memory format) ``nn.Module.to`` would put it."""
    if any(m.training for m in module.modules()):
        return False
    dev = None if device is None else torch.device(device)
    if dev is not None and dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    for t in list(module.parameters()) + list(module.buffers()):
        if dev is not None and (t.device.type != dev.type or (dev.index is not None and t.device.index != dev.index)):
            return False
        if channels_last and t.dim() == 4 and t.to(memory_format=torch.channels_last) is not t:
            return False
    return True


def prepare_for_inference(module: nn.Module, fold_bn: bool = False, channels_last: bool = False,
                          device: torch.device | str | None = None) -> nn.Module:
    """``module`` ready to run: eval mode, on ``device`` (None: where it is), its BatchNorms folded
    (``fold_batchnorm``) and channels_last when asked. The caller's module is never changed: a module
    already ready (eval, on ``device``, in the asked memory format, nothing to fold) is returned as it
    is, so readied modules can be shared; anything else is readied on a copy."""
    if fold_bn:
        module = fold_batchnorm(module)[0]  # a copy
    elif not _is_ready(module, channels_last, device):
        module = copy.deepcopy(module)
    else:
        return module
    if device is not None:
        module = module.to(device)
    module = module.eval()
    return module.to(memory_format=torch.channels_last) if channels_last else module
