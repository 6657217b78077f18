"""Filter overlap (METHOD.md section 2): which channels each class / cluster relies on, per layer.

S_{s,l} = the top q % of layer l's channels ranked by the mean of a_l over the samples of s (a class
or a cluster); overlap(s, t, l) = |S_s n S_t| / |S_s u S_t| (Jaccard). The depth profile gives, per
layer, the mean overlap over class pairs of the same cluster and over pairs from different clusters.
Everything is vectorised: sets are boolean matrices [sets, C] and intersections one matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import Hierarchy
from .errors import SinfError
from .stats import ActivationStats


def top_q_count(channels: int, q: float) -> int:
    """How many channels the top ``q`` % of ``channels`` holds: ceil(q/100 * C), at least 1."""
    if not 0.0 < q <= 100.0:
        raise SinfError(f"q must be a percentage in (0, 100], got {q}")
    return max(1, min(channels, math.ceil(q / 100.0 * channels - 1e-9)))


def top_q_sets(means: torch.Tensor, q: float) -> torch.Tensor:
    """Boolean [S, C]: row s marks the top q % channels of ``means[s]`` ([S, C]); ties go to the lower
    channel index (stable), so the sets are deterministic."""
    if means.ndim != 2:
        raise SinfError(f"expected [sets, channels] means, got shape {tuple(means.shape)}")
    if torch.isnan(means).any():
        raise SinfError("some classes or clusters have no samples (NaN means): cannot rank their channels")
    k = top_q_count(means.shape[1], q)
    order = torch.argsort(means, dim=1, descending=True, stable=True)[:, :k]
    sets = torch.zeros(means.shape, dtype=torch.bool, device=means.device)
    sets.scatter_(1, order, True)
    return sets


def jaccard(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise Jaccard of boolean set matrices a [S, C] and b [T, C] (default a): float64 [S, T].
    Two empty sets have overlap 1."""
    b = a if b is None else b
    fa, fb = a.to(torch.float64), b.to(torch.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))


def cluster_means(stats: ActivationStats, hierarchy: Hierarchy, layer: str) -> torch.Tensor:
    """Mean of a_l over each cluster's samples (sample-weighted over its classes), float64 [G, C]."""
    if hierarchy.num_classes != stats.num_classes:
        raise SinfError(f"hierarchy has {hierarchy.num_classes} classes, the statistics {stats.num_classes}")
    onehot = torch.zeros(hierarchy.num_clusters, stats.num_classes, dtype=torch.float64)
    onehot[torch.as_tensor(hierarchy.cluster_array()), torch.arange(stats.num_classes)] = 1.0
    if layer not in stats.sum:
        raise SinfError(f"no statistics for layer {layer!r}; known: {', '.join(stats.layers)}")
    return (onehot @ stats.sum[layer]) / (onehot @ stats.count)[:, None]


def class_sets(stats: ActivationStats, layer: str, q: float = 20.0) -> torch.Tensor:
    """Boolean [K, C]: top-q % channels of each class at ``layer``."""
    return top_q_sets(stats.class_mean(layer), q)


def cluster_sets(stats: ActivationStats, hierarchy: Hierarchy, layer: str, q: float = 20.0) -> torch.Tensor:
    """Boolean [G, C]: top-q % channels of each cluster at ``layer``."""
    return top_q_sets(cluster_means(stats, hierarchy, layer), q)


def chance_jaccard(channels: int, k: int) -> float:
    """Expected Jaccard of two independent uniformly random k-subsets of ``channels`` (reference line)."""
    # |S n T| is hypergeometric(C, k, k); J = i / (2k - i).
    total = math.comb(channels, k)
    return sum(math.comb(k, i) * math.comb(channels - k, k - i) / total * i / (2 * k - i)
               for i in range(max(0, 2 * k - channels), k + 1))


def pair_means(j: torch.Tensor, clusters: torch.Tensor) -> tuple[float, float]:
    """(mean over same-cluster pairs i != j, mean over different-cluster pairs) of a symmetric class
    matrix ``j`` [K, K] given cluster ids [K]. NaN where there is no such pair."""
    same = clusters[:, None] == clusters[None, :]
    off = ~torch.eye(len(clusters), dtype=torch.bool, device=j.device)
    w, b = j[same & off], j[~same]
    return (float(w.mean()) if w.numel() else float("nan"), float(b.mean()) if b.numel() else float("nan"))


@dataclass
class OverlapReport:
    """Per-layer Jaccard matrices and the depth profile."""

    q: float
    layers: list[str]
    class_names: tuple[str, ...]
    cluster_names: tuple[str, ...]
    class_jaccard: dict[str, torch.Tensor]  # float64 [K, K] per layer
    cluster_jaccard: dict[str, torch.Tensor]  # float64 [G, G] per layer
    profile: list[dict]  # per layer: layer, channels, k, within, between, gap, cluster_offdiag, chance

    def to_json(self, include_class_matrices: bool = False) -> dict:
        out = {
            "q": self.q,
            "layers": self.layers,
            "cluster_names": list(self.cluster_names),
            "depth_profile": self.profile,
            "cluster_jaccard": {l: _round(self.cluster_jaccard[l]) for l in self.layers},
        }
        if include_class_matrices:
            out["class_names"] = list(self.class_names)
            out["class_jaccard"] = {l: _round(self.class_jaccard[l]) for l in self.layers}
        return out


def _num(x: float, digits: int = 4) -> float | None:
    """Rounded, with NaN (no such pair) as None so the JSON stays valid."""
    return None if math.isnan(x) else round(x, digits)


def _round(t: torch.Tensor, digits: int = 4) -> list:
    return [[round(float(v), digits) for v in row] for row in t.tolist()]


def filter_overlap(stats: ActivationStats, hierarchy: Hierarchy, q: float = 20.0,
                   layers: list[str] | None = None) -> OverlapReport:
    """Class and cluster Jaccard matrices for every layer, and the depth profile (METHOD.md section 2)."""
    layers = list(stats.layers if layers is None else layers)
    clusters = torch.as_tensor(hierarchy.cluster_array())
    if len(clusters) != stats.num_classes:
        raise SinfError(f"hierarchy has {len(clusters)} classes, the statistics {stats.num_classes}")
    cj, gj, profile = {}, {}, []
    g = hierarchy.num_clusters
    for layer in layers:
        cs = class_sets(stats, layer, q)
        cj[layer] = jaccard(cs)
        gj[layer] = jaccard(cluster_sets(stats, hierarchy, layer, q))
        within, between = pair_means(cj[layer], clusters)
        c = stats.channels(layer)
        k = top_q_count(c, q)
        off = gj[layer][~torch.eye(g, dtype=torch.bool)]
        profile.append({
            "layer": layer, "channels": c, "k": k,
            "within": _num(within), "between": _num(between), "gap": _num(within - between),
            "cluster_offdiag": round(float(off.mean()), 4) if off.numel() else None,
            "chance": round(chance_jaccard(c, k), 4),
        })
    return OverlapReport(q, layers, hierarchy.class_names, hierarchy.cluster_names, cj, gj, profile)
