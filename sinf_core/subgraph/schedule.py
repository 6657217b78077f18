"""The retention schedule (METHOD.md section 5), kept indices from filter scores, and one spec per
cluster (``make_cluster_specs``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch

from ..data import Hierarchy
from ..errors import SinfError
from ..models import SinfModel
from .slicing import Subgraph, build_subgraph
from .spec import SubgraphSpec

if TYPE_CHECKING:
    from ..stats import ActivationStats
    from .batchnorm import BatchNormSamples


def _check_ratio(name: str, r: float) -> float:
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise SinfError(f"{name} must be a number in [0, 1), got {r!r}") from None
    if not (0.0 <= r < 1.0):  # also rejects NaN
        raise SinfError(f"{name} must be a removed fraction in [0, 1) (e.g. 0.5 = remove half), got {r}")
    return r


def removed_fractions(n_layers: int, first: int, r_M: float, r_L: float) -> list[float]:
    """r_l for layers ``first..n_layers-1``: r_M + (r_L - r_M)(l - M)/(L - M) (METHOD.md section 5).
    A single pruned layer (M == L) gets r_L."""
    r_M, r_L = _check_ratio("r_M", r_M), _check_ratio("r_L", r_L)
    if not 0 <= first <= n_layers:
        raise SinfError(f"first pruned layer index {first} out of range 0..{n_layers}")
    last = n_layers - 1
    if first == last:
        return [r_L]
    return [r_M + (r_L - r_M) * (l - first) / (last - first) for l in range(first, n_layers)]


def kept_count(channels: int, r: float, multiple_of: int | None = None) -> int:
    """ceil((1 - r) * C), optionally rounded *up* to a multiple of ``multiple_of`` (never above C),
    never below 1."""
    c = int(channels)
    if c < 1:
        raise SinfError(f"a layer needs at least one channel, got {channels}")
    keep = math.ceil((1.0 - r) * c - 1e-9)  # tolerance: (1 - 0.3) * 10 is 7.000000000000001
    if multiple_of is not None:
        if int(multiple_of) < 1:
            raise SinfError(f"multiple_of must be a positive integer, got {multiple_of}")
        m = int(multiple_of)
        keep = m * math.ceil(keep / m)
    return int(min(c, max(1, keep)))


def retention_schedule(
    layers: Sequence[str],
    first: int,
    r_M: float,
    r_L: float,
    multiple_of: int | None = None,
    channels: Sequence[int] | None = None,
) -> dict[str, int]:
    """Kept channel counts for the pruned layers ``layers[first:]`` (forward order; ``first`` = M, the
    first layer after the tap, as an index into ``layers``; L = the last layer). ``channels[i]`` is
    C of ``layers[i]``. r_l is interpolated linearly from r_M at M to r_L at L; the layer keeps
    ceil((1 - r_l) C_l) channels (see ``kept_count``). Layers before ``first`` are the shared stem and
    are not in the result; ``first == len(layers)`` gives ``{}`` (nothing left to prune).
    Per-cluster overrides are simply a call with that cluster's (r_M, r_L)."""
    layers = list(layers)
    if channels is None:
        raise SinfError("retention_schedule needs the channel count of every layer (channels=...)")
    channels = [int(c) for c in channels]
    if len(channels) != len(layers):
        raise SinfError(f"got {len(channels)} channel counts for {len(layers)} layers")
    if len(set(layers)) != len(layers):
        raise SinfError("layer names in a retention schedule must be unique")
    rs = removed_fractions(len(layers), int(first), r_M, r_L)
    return {layers[first + i]: kept_count(channels[first + i], r, multiple_of) for i, r in enumerate(rs)}


def first_pruned_index(model: SinfModel, tap: str | int | None) -> int:
    """Index into ``model.prunable_layers()`` of the first layer after ``tap`` (M); len(...) when none."""
    layers = model.prunable_layers()
    t = -1 if tap is None else model.unit_index(tap)
    for i, layer in enumerate(layers):
        if layer.unit > t:
            return i
    return len(layers)


def model_schedule(
    model: SinfModel, tap: str | int | None, r_M: float, r_L: float, multiple_of: int | None = None
) -> dict[str, int]:
    """``retention_schedule`` over ``model``'s prunable layers after ``tap``."""
    layers = model.prunable_layers()
    return retention_schedule([l.name for l in layers], first_pruned_index(model, tap), r_M, r_L,
                              multiple_of, [l.channels for l in layers])


def keep_indices(scores: Mapping[str, torch.Tensor], kept: Mapping[str, int]) -> dict[str, list[int]]:
    """Per layer in ``kept``: the indices of the ``kept[layer]`` highest scores, sorted ascending.
    Ties go to the lower channel index (stable sort), so the result is deterministic."""
    out: dict[str, list[int]] = {}
    for name, k in kept.items():
        if name not in scores:
            raise SinfError(f"no scores for layer {name!r}")
        s = torch.as_tensor(scores[name]).detach().flatten().to("cpu", torch.float64)
        k = int(k)
        if not 1 <= k <= s.numel():
            raise SinfError(f"layer {name!r}: cannot keep {k} of {s.numel()} channels")
        if torch.isnan(s).any():
            raise SinfError(f"layer {name!r}: scores contain NaN")
        order = torch.sort(s, descending=True, stable=True).indices[:k]
        out[name] = sorted(int(i) for i in order)
    return out


# --------------------------------------------------------------------------------------------------
# One spec per cluster
# --------------------------------------------------------------------------------------------------


def make_cluster_specs(
    model: SinfModel,
    base_model: str,
    tap: str | None,
    scores_by_cluster: Mapping[int, Mapping[str, torch.Tensor]],
    hierarchy: Hierarchy,
    r_M: float,
    r_L: float,
    multiple_of: int | None = None,
    overrides: Mapping[int, tuple[float, float]] | None = None,
    restricted: bool = True,
    fill_stats: "ActivationStats | None" = None,
    bn_samples: "BatchNormSamples | None" = None,
    on_progress: Callable[[int, int], None] | None = None,
    built: dict[int, "Subgraph"] | None = None,
) -> dict[int, SubgraphSpec]:
    """One spec per cluster index in ``scores_by_cluster``: the schedule (r_M, r_L), or the cluster's
    ``overrides[m]``, applied to the cluster's scores; head restricted to the cluster's classes
    unless ``restricted`` is False. With ``fill_stats`` (activation statistics of the fit split),
    removed channels are replaced by their mean activation over the cluster's classes (mean
    replacement) instead of by zero. With ``bn_samples``, each subgraph's BatchNorm statistics are
    re-estimated on its cluster's fit samples (``estimate_bn_stats``; a cluster with fewer than 2
    keeps the base model's); ``on_progress(done, total)``
    is called after each cluster. ``built``: a dict that receives each cluster's subgraph, built once
    (the BatchNorm pass's own build, with the new statistics set; else built here), for a caller that
    evaluates the specs next."""
    specs = {}
    for m, scores in scores_by_cluster.items():
        if not 0 <= int(m) < hierarchy.num_clusters:
            raise SinfError(f"cluster index {m} out of range 0..{hierarchy.num_clusters - 1}")
        rm, rl = (overrides or {}).get(m, (r_M, r_L))
        kept = model_schedule(model, tap, rm, rl, multiple_of)
        keep = keep_indices(scores, kept)
        members = hierarchy.members(int(m))
        fill = {} if fill_stats is None else {
            name: fill_stats.group_mean(name, members).tolist() for name, idx in keep.items()}
        spec = SubgraphSpec(base_model, tap, keep, members if restricted else None, fill)
        if bn_samples is not None and len(bn_samples.indices[int(m)]) >= 2:  # else: the base statistics
            spec, sub = bn_samples.estimate_built(spec, int(m))
        else:
            sub = build_subgraph(model, spec) if built is not None else None
        if built is not None:
            built[int(m)] = sub
        specs[int(m)] = spec
        if on_progress:
            on_progress(len(specs), len(scores_by_cluster))
    return specs
