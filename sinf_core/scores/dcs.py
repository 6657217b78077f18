"""DCS, the Discriminative Capability Score (METHOD.md section 3), per cluster and layer.

F^j = AdaptiveAvgPool_{p x p}(A_l(x_j)) over channels (C * p^2 features) for the cluster's training
samples, standardised; W* = the weights of a linear probe that separates the cluster's own classes
(L2-regularised multinomial logistic regression, lbfgs; or shrinkage LDA); DCS(c) = Frobenius norm of
the block of W* that reads channel c, divided by the layer's maximum. A cluster with one class has
nothing to discriminate and falls back to its mean activation (also divided by the layer's maximum).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import SinfError
from .base import COMMON_DEFAULTS, ScoreJob, ScoreTable, class_group, normalise_max
from .feature_maps import ClassVectorSums, PooledFeatures, rows_key

DEFAULTS = {**COMMON_DEFAULTS, "p": 2, "probe": "logreg", "C": 1.0, "max_iter": 300, "tol": 1e-4}
PROBES = ("logreg", "lda")


def check_options(opts: dict) -> None:
    if opts["probe"] not in PROBES:
        raise SinfError(f"DCS probe must be one of {', '.join(PROBES)}, got {opts['probe']!r}")
    if int(opts["p"]) < 1:
        raise SinfError(f"DCS pooling size p must be at least 1, got {opts['p']}")
    if float(opts["C"]) <= 0:
        raise SinfError(f"DCS regularisation C (inverse strength) must be > 0, got {opts['C']}")


def reducers(job: ScoreJob) -> dict:
    check_options(job.options)
    rows = job.rows()
    names = [l.name for l in job.layers]
    key = rows_key(rows)
    out = {f"pooled:p={int(job.options['p'])}:{key}": PooledFeatures(rows, names, job.options["p"])}
    if any(len(job.classes_of(t)) < 2 for t in job.targets):  # the single-class fallback
        out[f"vec:mean:{key}"] = ClassVectorSums(rows, names, job.hierarchy.num_classes, "mean")
    return out


def rank01(v: torch.Tensor) -> torch.Tensor:
    """Ranks of v scaled to [0, 1] (0 = smallest), float32."""
    return v.argsort().argsort().to(torch.float32) / max(1, v.numel() - 1)


def std_weighted_reducers(job: ScoreJob) -> dict:
    from .baselines import std_reducers

    return {**reducers(job), **std_reducers(job)}


def std_weighted_finish(job: ScoreJob, red: dict) -> ScoreTable:
    """DCS weighted by spread (``dcs_std``): rank01(DCS) x rank01(std of a_l over the target's samples).
    With mean replacement a removed channel keeps its mean and loses only its spread around it, so a
    channel is worth keeping when it both separates the cluster's classes and varies."""
    from .baselines import std_finish

    dcs, spread = finish(job, red), std_finish(job, red)
    return {t: {name: rank01(v) * rank01(spread[t][name]) for name, v in per.items()} for t, per in dcs.items()}


def probe_weights(x: np.ndarray, y: np.ndarray, probe: str, C: float, max_iter: int, tol: float) -> np.ndarray:
    """Standardise x [N, F] per feature and fit the probe on labels y; returns W* [K', F] (K' = 1 for
    two classes, else the number of classes). Constant features get weight 0."""
    mu = x.mean(0)
    sd = x.std(0)
    sd[sd <= 1e-12 * max(1.0, float(np.abs(mu).max(initial=0.0)))] = np.inf  # constant -> standardised to 0
    xs = (x - mu) / sd
    if probe == "lda":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    else:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        # lbfgs stops at tol after ~20-50 iterations on ResNet-56 features (max_iter is only a bound);
        # a ConvergenceWarning would repeat for hundreds of fits, so it is silenced here.
        warnings.simplefilter("ignore")
        clf.fit(xs, y)
    w = np.asarray(clf.coef_, dtype=np.float64)
    w[:, ~np.isfinite(sd)] = 0.0
    return w


def channel_block_norms(w: np.ndarray, channels: int) -> torch.Tensor:
    """Frobenius norm of each channel's block of W* [K', C * cells] (channel-major columns) -> [C]."""
    k = w.shape[0]
    blocks = w.reshape(k, channels, -1)
    return torch.as_tensor(np.sqrt((blocks ** 2).sum(axis=(0, 2))), dtype=torch.float32)


def finish(job: ScoreJob, red: dict) -> ScoreTable:
    pooled = next(r for r in red.values() if isinstance(r, PooledFeatures))
    means = next((r for r in red.values() if isinstance(r, ClassVectorSums) and r.fn_name == "mean"), None)
    table: ScoreTable = {t: {} for t in job.targets}
    total, done = len(job.targets) * len(job.layers), 0
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small dense problems: one BLAS thread is several times faster than two
        for layer in job.layers:
            done = _fit_layer(job, layer, pooled, means, table, done, total)
    return table


def _fit_layer(job: ScoreJob, layer, pooled: PooledFeatures, means, table: ScoreTable, done: int, total: int) -> int:
    """Fill ``table[t][layer.name]`` for every target; returns the updated progress count."""
    opts = job.options
    feats, labels = pooled.features(layer.name)
    x_all, y_all = feats.numpy().astype(np.float64), labels.numpy()
    for t in job.targets:
        classes = job.classes_of(t)
        if len(classes) < 2:
            a = class_group(means.sums[layer.name], means.counts[layer.name], classes, "DCS (mean-activation fallback)")
            table[t][layer.name] = normalise_max(a.to(torch.float32).clamp_min(0))
        else:
            sel = np.isin(y_all, classes)
            present = np.unique(y_all[sel])
            if len(present) < 2:
                raise SinfError(f"DCS for cluster {t}: the data has samples of {len(present)} of its "
                                f"{len(classes)} classes; a probe needs at least two")
            w = probe_weights(x_all[sel], y_all[sel], opts["probe"], float(opts["C"]),
                              int(opts["max_iter"]), float(opts["tol"]))
            table[t][layer.name] = normalise_max(channel_block_norms(w, layer.channels))
        done += 1
        job.progress("dcs probes", done, total)
    return done
