"""BatchNorm statistics of a pruned subgraph: re-estimated on fit samples as the base model's statistics
corrected by the shift the pruning causes (``estimate_bn_stats``), and the samples (``BatchNormSamples``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..config import DEFAULT_BN_SAMPLES  # written once, in the light config module (the CLI's flags read it)
from ..data import Hierarchy, ImageDataset, iterate_batches
from ..errors import SinfError
from ..models import SinfModel
from ..runtime import Runtime
from .reuse import FirstUnitReuse
from .slicing import Subgraph, build_subgraph
from .spec import SubgraphSpec, _tail_batchnorm_kept


def check_bn_samples(n) -> int:
    """Fit images per cluster for BatchNorm re-estimation: 0 (off) or at least 2."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or n == 1:
        raise SinfError(f"bn_samples must be 0 (keep the base model's BatchNorm statistics) or an integer >= 2, got {n!r}")
    return int(n)


def _stats(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in module.modules() if isinstance(bn, nn.BatchNorm2d)]


@torch.no_grad()
def _batch_statistics(sub: Subgraph, h: torch.Tensor, batch_size: int, reuse: FirstUnitReuse | None = None,
                      reuse_key=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm of ``sub.units`` (module order): the mean and variance of its input over ``h``,
    every BatchNorm normalising with its batch statistics (``sub`` is modified: pass a throwaway copy).
    ``reuse``: the first unit's outputs and statistics are taken from it (under ``reuse_key``) when
    that unit and ``h`` are the same as in its last pass there."""
    bns = [m for m in sub.units.modules() if isinstance(m, nn.BatchNorm2d)]
    sub.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    if not len(sub.units):
        return []
    batches = [h[start : start + batch_size] for start in range(0, len(h), batch_size)]

    def first(unit: nn.Module):
        return [unit(x) for x in batches], _stats(unit)

    outs, first_stats = first(sub.units[0]) if reuse is None else reuse.outputs(
        reuse_key, sub.units[0], (h, batch_size), first)
    for x in outs:
        sub.features(x, 1)
    return first_stats + _stats(sub.units[1:])


def unpruned_batch_statistics(model: SinfModel, tap: str | None, h: torch.Tensor,
                              batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What ``estimate_bn_stats`` measures on the unpruned tail after ``tap`` over ``h``; it depends
    on the tap and the samples only, so callers that prune one sample set many ways compute it once."""
    whole = SubgraphSpec("unpruned tail", tap)  # a throwaway spec: keeps everything, the name is a label
    return _batch_statistics(build_subgraph(model, whole), h.float(), batch_size)


@torch.no_grad()
def estimate_bn_stats(model: SinfModel, spec: SubgraphSpec, h: torch.Tensor, batch_size: int = 256,
                      unpruned: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> SubgraphSpec:
    """``spec`` with re-estimated BatchNorm statistics (field ``bn``) for every BatchNorm after its tap.

    Removing channels changes what every later BatchNorm sees while its running statistics still
    describe the unpruned network; on a network without skip connections the mismatch compounds
    layer by layer (VGG16-BN, 5 consecutively pruned layers: every prediction the same class). Both
    the subgraph and the unpruned tail run on ``h`` [N, ...] (stem outputs at the tap of fit-split
    samples, e.g. the cluster's own) with batch statistics, and each BatchNorm gets the base model's
    statistics corrected by what the pruning changed on those samples (kept channels):
    mean = mean_base + (mean_pruned - mean_unpruned), var = var_base * var_pruned / var_unpruned.
    Measuring the change, rather than taking the samples' own statistics, keeps the normalisation the
    later layers were trained with: normalising a VGG16 subgraph to its cluster's own statistics cost
    14 points of oracle accuracy with no channel removed at all. ``unpruned``: the unpruned tail's
    statistics over the same ``h`` (``unpruned_batch_statistics``), computed here when None. No
    weight changes; ``model`` and ``spec`` are not modified."""
    return estimate_bn_stats_built(model, spec, h, batch_size, unpruned)[0]


def estimate_bn_stats_built(model: SinfModel, spec: SubgraphSpec, h: torch.Tensor, batch_size: int = 256,
                            unpruned: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                            reuse: FirstUnitReuse | None = None, reuse_key=None) -> tuple[SubgraphSpec, "Subgraph"]:
    """``estimate_bn_stats`` and the subgraph of the returned spec, built once: the module the
    statistics pass ran, with the new statistics set (equal to ``build_subgraph`` of the spec).
    ``reuse`` / ``reuse_key``: see ``_batch_statistics`` (the same statistics, computed once)."""
    if h.shape[0] < 2:
        raise SinfError("re-estimating BatchNorm statistics needs at least 2 samples")
    h = h.float()
    sub = build_subgraph(model, dataclasses.replace(spec, bn={}))
    bns = [m for m in sub.units.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(bn.momentum, bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None) for bn in bns]
    pruned = _batch_statistics(sub, h, batch_size, reuse, reuse_key)
    full = unpruned if unpruned is not None else unpruned_batch_statistics(model, spec.tap, h, batch_size)
    out = {}
    for (name, base_bn, kept), (mp, vp), (mu, vu), bn, (momentum, tracked) in zip(
            _tail_batchnorm_kept(model, spec), pruned, full, bns, saved):
        mb, vb = base_bn.running_mean, base_bn.running_var
        if kept is not None:
            idx = torch.as_tensor(kept, dtype=torch.long, device=mb.device)
            mu, vu, mb, vb = (t.index_select(0, idx) for t in (mu, vu, mb, vb))
        mean, var = mb + mp - mu, (vb * vp / vu.clamp_min(1e-12)).clamp_min(0.0)
        out[name] = {"mean": mean.tolist(), "var": var.tolist()}
        bn.running_mean, bn.running_var = mean.to(bn.running_mean.dtype), var.to(bn.running_var.dtype)
        bn.momentum = momentum
        if tracked is not None:
            bn.num_batches_tracked = tracked
    return dataclasses.replace(spec, bn=out), sub.train(model.training)


class BatchNormSamples:
    """Fit-split samples for ``estimate_bn_stats``: up to ``per_cluster`` random images of each
    cluster (fixed by ``seed``), with their stem outputs computed once per tap and kept.

    ``features(tap, m)``: the stem outputs of cluster m's samples; ``features(tap)``: of all samples
    (every cluster, for a network that serves all classes)."""

    def __init__(self, model: SinfModel, data: ImageDataset, hierarchy: Hierarchy | None = None,
                 per_cluster: int = DEFAULT_BN_SAMPLES, seed: int = 0, rt: Runtime | None = None):
        if check_bn_samples(per_cluster) == 0:
            raise SinfError("BatchNorm re-estimation needs at least 2 samples per cluster, got 0")
        hierarchy = hierarchy or data.hierarchy
        self.model, self.data, self.rt = model, data, Runtime.resolve(rt, model)
        self.per_cluster = int(per_cluster)
        cluster = hierarchy.cluster_array()[data.labels.numpy()]
        rng = np.random.default_rng(seed)
        self.indices = {m: np.sort(rng.permutation(np.flatnonzero(cluster == m))[: self.per_cluster])
                        for m in range(hierarchy.num_clusters)}
        self._stem: dict[str | None, tuple[torch.Tensor, dict[int, slice]]] = {}
        self._unpruned: dict[tuple[str | None, int | None], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.reuse = FirstUnitReuse()  # a run of configurations (a grid, a tuning session) shares first units

    @torch.no_grad()
    def _at(self, tap: str | None) -> tuple[torch.Tensor, dict[int, slice]]:
        if tap not in self._stem:
            device = self.rt.device
            was_training = self.model.training
            self.model.eval()
            parts = [x if tap is None else self.model.forward_stem(x, tap)
                     for x, _ in iterate_batches(self.data, self.rt.batch_size, self.order(), device)]
            self.model.train(was_training)
            self.set_features(tap, torch.cat(parts))
        return self._stem[tap]

    def order(self) -> np.ndarray:
        """Indices into the data of every sample, cluster by cluster (the row order of ``features(tap)``)."""
        return np.concatenate([self.indices[m] for m in sorted(self.indices)])

    def set_features(self, tap: str | None, h: torch.Tensor) -> None:
        """Use ``h`` [len(order()), ...] as the samples' stem outputs at ``tap`` (e.g. stored ones)."""
        if h.shape[0] != len(self.order()):
            raise SinfError(f"stored BatchNorm sample features have {h.shape[0]} rows, the samples are {len(self.order())}")
        spans, start = {}, 0
        for m in sorted(self.indices):
            spans[m] = slice(start, start + len(self.indices[m]))
            start += len(self.indices[m])
        self._stem[tap] = (h.float(), spans)

    def features(self, tap: str | None, cluster: int | None = None) -> torch.Tensor:
        h, spans = self._at(tap)
        if cluster is None:
            return h
        if int(cluster) not in spans:
            raise SinfError(f"cluster index {cluster} out of range 0..{len(spans) - 1}")
        return h[spans[int(cluster)]]

    def estimate(self, spec: SubgraphSpec, cluster: int | None = None) -> SubgraphSpec:
        """``estimate_bn_stats`` of ``spec`` on cluster ``cluster``'s samples (None: all samples); the
        unpruned tail's statistics over them are computed once per (tap, cluster) and kept."""
        return self.estimate_built(spec, cluster)[0]

    def estimate_built(self, spec: SubgraphSpec, cluster: int | None = None) -> tuple[SubgraphSpec, "Subgraph"]:
        """``estimate`` and the subgraph of the returned spec (``estimate_bn_stats_built``)."""
        h = self.features(spec.tap, cluster)
        key = (spec.tap, None if cluster is None else int(cluster))
        if key not in self._unpruned:
            self._unpruned[key] = unpruned_batch_statistics(self.model, spec.tap, h, self.rt.batch_size)
        return estimate_bn_stats_built(self.model, spec, h, self.rt.batch_size, self._unpruned[key], self.reuse, key)
