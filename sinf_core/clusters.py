"""Semantic clusters (METHOD.md section 1): the data set's hierarchy, or data-driven ones, and 2-D maps.

- ``hierarchy``: the data set's own class hierarchy (CIFAR-100: its 20 superclasses).
- ``ward``: agglomerative clustering (Ward linkage) of the L2-normalised class prototypes (mean
  penultimate feature per class; statistics over the fit split may be used).
- ``spectral``: spectral clustering of the symmetrised confusion matrix (affinity between classes i
  and j = how often either is mistaken for the other). It looks at model outputs, so its confusion
  matrix comes from the calibration split (METHOD.md section 0).

All return a ``Hierarchy``; ``adjusted_rand`` compares two of them; ``umap_map`` gives 2-D maps of the
class prototypes and of a per-image feature sample (umap-learn, fixed ``random_state``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .data import Hierarchy
from .errors import SinfError
from .stats import ActivationStats

METHODS = ("hierarchy", "ward", "spectral")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero). [N, D] -> [N, D] float64."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def class_prototypes(stats: ActivationStats) -> np.ndarray:
    """L2-normalised mean penultimate feature per class, float64 [K, D]. Every class must have samples."""
    proto = stats.class_prototypes().numpy()
    missing = np.flatnonzero(stats.count.numpy() == 0)
    if len(missing):
        raise SinfError(f"no samples of classes {missing[:8].tolist()} in the statistics: cannot form their prototypes")
    return l2_normalise(proto)


def canonical_labels(assignment: Sequence[int]) -> np.ndarray:
    """Cluster ids renumbered by first appearance (class order), so equal partitions get equal arrays."""
    assignment = np.asarray(assignment)
    _, first = np.unique(assignment, return_index=True)
    order = np.argsort(np.argsort(first))
    remap = dict(zip(np.unique(assignment).tolist(), order.tolist()))
    return np.array([remap[a] for a in assignment.tolist()], dtype=np.int64)


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise SinfError(f"the number of clusters must be between 1 and the number of classes ({n}), got {k}")


def ward_assignment(prototypes: np.ndarray, k: int) -> np.ndarray:
    """Ward agglomerative clustering of (already normalised) prototypes [K, D] into ``k`` clusters.
    Deterministic. Returns int64 [K] cluster ids (canonical order)."""
    from sklearn.cluster import AgglomerativeClustering

    prototypes = np.asarray(prototypes, dtype=np.float64)
    _check_k(k, len(prototypes))
    if k == 1:
        return np.zeros(len(prototypes), dtype=np.int64)
    labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(prototypes)
    return canonical_labels(labels)


def confusion_affinity(confusion: np.ndarray) -> np.ndarray:
    """Symmetrised confusion as a class affinity, float64 [K, K].

    ``confusion[i, j]``: how many samples of class i went to class j (counts, or summed probabilities).
    Rows are turned into rates (so classes with more samples do not weigh more), then
    A = (R + R^T) / 2 with a zero diagonal (being right about a class says nothing about its neighbours).
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise SinfError(f"a confusion matrix must be square, got shape {c.shape}")
    rows = c.sum(1, keepdims=True)
    if (rows == 0).any():
        raise SinfError(f"classes {np.flatnonzero(rows[:, 0] == 0)[:8].tolist()} have no samples in the confusion matrix")
    r = c / rows
    a = (r + r.T) / 2.0
    np.fill_diagonal(a, 0.0)
    return a


SPECTRAL_LABELS = ("cluster_qr", "kmeans", "discretize")


def spectral_assignment(affinity: np.ndarray, k: int, random_state: int = 0,
                        assign_labels: str = "cluster_qr") -> np.ndarray:
    """Spectral clustering (normalised Laplacian, ``affinity='precomputed'``) of a symmetric
    non-negative class affinity [K, K] into ``k`` clusters. Returns int64 [K] (canonical order).

    ``assign_labels``: how the spectral embedding becomes clusters (sklearn). Default ``cluster_qr``:
    no iterations and no seed dependence; on ResNet-56 / CIFAR-100 (K=20) it gave ARI 0.444 vs the
    superclasses where k-means gave 0.365-0.431 over seeds 0-3 (docs/foundation.md)."""
    from sklearn.cluster import SpectralClustering

    a = np.asarray(affinity, dtype=np.float64)
    _check_k(k, len(a))
    if not np.allclose(a, a.T) or (a < 0).any():
        raise SinfError("the affinity for spectral clustering must be symmetric and non-negative")
    if assign_labels not in SPECTRAL_LABELS:
        raise SinfError(f"unknown label assignment {assign_labels!r}; choose one of {', '.join(SPECTRAL_LABELS)}")
    if k == 1:
        return np.zeros(len(a), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=random_state,
                                    assign_labels=assign_labels, n_init=10).fit_predict(a)
    return canonical_labels(labels)


def assignment_hierarchy(class_names: Sequence[str], assignment: Sequence[int], prefix: str = "cluster") -> Hierarchy:
    """A ``Hierarchy`` for a class -> cluster array; clusters named ``<prefix>_NN``."""
    labels = canonical_labels(assignment)
    k = int(labels.max()) + 1
    return Hierarchy.from_assignment(class_names, labels, [f"{prefix}_{m:02d}" for m in range(k)])


def cluster_classes(
    method: str,
    class_names: Sequence[str],
    k: int = 20,
    hierarchy: Hierarchy | None = None,
    fit_stats: ActivationStats | None = None,
    calib_stats: ActivationStats | None = None,
    soft: bool = False,
    random_state: int = 0,
    assign_labels: str = "cluster_qr",
) -> Hierarchy:
    """Clusters by ``method`` (one of METHODS).

    ``hierarchy``: the data set's own (method 'hierarchy'). ``fit_stats``: statistics with penultimate
    sums (method 'ward'). ``calib_stats``: statistics over the calibration split with the confusion
    matrix (method 'spectral'; ``soft=True`` uses summed softmax probabilities instead of argmax counts;
    ``assign_labels`` as in ``spectral_assignment``).
    """
    if method == "hierarchy":
        if hierarchy is None:
            raise SinfError("method 'hierarchy' needs the data set's hierarchy")
        return hierarchy
    if method == "ward":
        if fit_stats is None:
            raise SinfError("method 'ward' needs statistics with class prototypes")
        return assignment_hierarchy(class_names, ward_assignment(class_prototypes(fit_stats), k), "ward")
    if method == "spectral":
        if calib_stats is None:
            raise SinfError("method 'spectral' needs statistics over the calibration split")
        conf = calib_stats.prob_sum if soft else calib_stats.confusion
        if conf is None:
            raise SinfError("these statistics hold no confusion matrix")
        return assignment_hierarchy(class_names, spectral_assignment(confusion_affinity(conf.numpy()), k, random_state,
                                                                    assign_labels),
                                    "spectral")
    raise SinfError(f"unknown clustering method {method!r}; choose one of {', '.join(METHODS)}")


def adjusted_rand(a: Hierarchy | Sequence[int], b: Hierarchy | Sequence[int]) -> float:
    """Adjusted Rand index between two class partitions (1 = identical up to renaming, ~0 = chance)."""
    from sklearn.metrics import adjusted_rand_score

    la = a.cluster_array() if isinstance(a, Hierarchy) else np.asarray(a)
    lb = b.cluster_array() if isinstance(b, Hierarchy) else np.asarray(b)
    if len(la) != len(lb):
        raise SinfError(f"partitions cover different numbers of classes ({len(la)} vs {len(lb)})")
    return float(adjusted_rand_score(la, lb))


def majority_match(found: Hierarchy, reference: Hierarchy) -> list[dict]:
    """For each found cluster: its classes, the reference cluster most of them belong to, and that share."""
    ref = reference.cluster_array()
    rows = []
    for m, name in enumerate(found.cluster_names):
        members = found.members(m)
        counts = np.bincount(ref[members], minlength=reference.num_clusters)
        best = int(counts.argmax())
        rows.append({"cluster": name, "classes": [found.class_names[c] for c in members],
                     "majority": reference.cluster_names[best], "purity": round(float(counts[best]) / len(members), 3)})
    return rows


def umap_map(features: np.ndarray, random_state: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
             metric: str = "cosine") -> np.ndarray:
    """2-D UMAP embedding of [N, D] features (fixed ``random_state``: reproducible), float32 [N, 2].
    ``n_neighbors`` is capped at N - 1; very small N uses a random initialisation."""
    import umap

    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 3:
        raise SinfError(f"a 2-D map needs at least 3 points, got {n}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)), min_dist=min_dist,
                            metric=metric, random_state=random_state, init="spectral" if n > 10 else "random")
        return reducer.fit_transform(x).astype(np.float32)


def cluster_maps(stats: ActivationStats, random_state: int = 0) -> dict:
    """UMAP of the class prototypes ([K, 2]) and, when the statistics hold a per-image sample, of the
    sampled images' penultimate features ([S, 2], with their labels)."""
    out = {"classes": umap_map(class_prototypes(stats), random_state)}
    if stats.sample_features is not None:
        _, labels, feats = stats.sample()
        if len(feats) >= 3:
            out["samples"] = umap_map(l2_normalise(feats.numpy()), random_state)
            out["sample_labels"] = labels.numpy()
    return out
