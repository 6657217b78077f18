"""The baseline filter scores DCS must beat (METHOD.md section 4), behind the ``ScoreSpec`` contract.

Weights only (same for every cluster): ``l1`` (Li et al. 2017: L1 norm of the conv filter, bias
excluded), ``bn_gamma`` (|gamma| of the BN after the conv, network slimming). Seeded: ``random``.
Data-dependent, cluster-conditioned (only the cluster's samples when a cluster is scored):
``mean_act`` (mean of a_l), ``apoz`` (1 - average percentage of zeros of A_l), ``taylor`` (Molchanov
et al. 2017: |mean over positions of A * dL/dA| per sample, averaged; the loss is the cross-entropy
restricted to the cluster's classes), ``hrank`` (Lin et al. 2020: mean rank of the H x W maps),
``chip`` (Sui et al. 2021: mean drop in nuclear norm of the [C, HW] map matrix when the channel is
removed), ``tvs`` (TVSPrune, Murti et al. ICLR 2023, see ``tvs_finish``), ``std`` (standard deviation
of a_l over the target's samples: what a channel loses when mean replacement sets it to its mean).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data import iterate_batches
from ..errors import SinfError
from .base import COMMON_DEFAULTS, ScoreJob, ScoreTable, class_group, normalise_max
from .feature_maps import ClassMapSums, ClassVectorSums, rows_key


# ------------------------------------------------------------------ weights only
def l1_finish(job: ScoreJob, red: dict) -> ScoreTable:
    s = {l.name: l.conv.weight.detach().abs().sum(dim=(1, 2, 3)).float().cpu() for l in job.layers}
    return {t: {k: v.clone() for k, v in s.items()} for t in job.targets}


def bn_gamma_finish(job: ScoreJob, red: dict) -> ScoreTable:
    s = {l.name: l.bn.weight.detach().abs().float().cpu() for l in job.layers}
    return {t: {k: v.clone() for k, v in s.items()} for t in job.targets}


def random_seed(seed: int, target, layer_index: int) -> int:
    return int(seed) * 1_000_003 + (0 if target is None else int(target) + 1) * 10_007 + layer_index


def random_finish(job: ScoreJob, red: dict) -> ScoreTable:
    seed = int(job.options["seed"])
    out: ScoreTable = {}
    for t in job.targets:
        out[t] = {}
        for i, l in enumerate(job.layers):
            g = torch.Generator().manual_seed(random_seed(seed, t, i))
            out[t][l.name] = torch.rand(l.channels, generator=g)
    return out


# ------------------------------------------------------------------ per-class vector sums
def _cap(job: ScoreJob, key: str | None) -> int | None:
    """The per-class sample cap: ``max_per_class``, or the smaller of it and ``key`` (0/None = no cap)."""
    caps = [int(job.options[k]) for k in ("max_per_class", key) if k and job.options.get(k)]
    return min(caps) if caps else None


def _vector_reducer(job: ScoreJob, fn: str, cap_key: str | None = None) -> tuple[str, ClassVectorSums]:
    rows = job.rows(_cap(job, cap_key))
    return f"vec:{fn}:{rows_key(rows)}", ClassVectorSums(rows, [l.name for l in job.layers], job.hierarchy.num_classes, fn)


def _group_table(job: ScoreJob, red: ClassVectorSums, what: str, transform=None) -> ScoreTable:
    out: ScoreTable = {}
    for t in job.targets:
        out[t] = {}
        for l in job.layers:
            v = class_group(red.sums[l.name], red.counts[l.name], job.classes_of(t), what).to(torch.float32)
            out[t][l.name] = transform(v) if transform else v
    return out


def _stats_table(job: ScoreJob, what: str) -> ScoreTable:
    st = job.stats
    missing = [l.name for l in job.layers if l.name not in st.layers]
    if missing:
        raise SinfError(f"the activation statistics do not cover layers {missing}; recompute them for all layers")
    out: ScoreTable = {}
    for t in job.targets:
        classes = job.classes_of(t)
        if float(st.count[classes].sum()) <= 0:
            raise SinfError(f"the activation statistics have no samples of the classes of target {t}")
        out[t] = {}
        for l in job.layers:
            if what == "mean":
                v = st.group_mean(l.name, classes)
            elif what == "std":
                v = st.group_var(l.name, classes).sqrt()
            else:
                v = 1.0 - st.group_zero_fraction(l.name, classes)
            out[t][l.name] = torch.as_tensor(v).to(torch.float32).cpu()
    return out


def mean_act_reducers(job: ScoreJob) -> dict:
    return {} if job.stats is not None else dict([_vector_reducer(job, "mean")])


def mean_act_finish(job: ScoreJob, red: dict) -> ScoreTable:
    if job.stats is not None:
        return _stats_table(job, "mean")
    return _group_table(job, next(iter(red.values())), "mean activation")


def std_reducers(job: ScoreJob) -> dict:
    return {} if job.stats is not None else dict([_vector_reducer(job, "mean"), _vector_reducer(job, "mean_sq")])


def std_finish(job: ScoreJob, red: dict) -> ScoreTable:
    """sqrt(E[a_l^2] - E[a_l]^2) over the samples of each target's classes."""
    if job.stats is not None:
        return _stats_table(job, "std")
    mean = next(r for r in red.values() if getattr(r, "fn_name", None) == "mean")
    sq = next(r for r in red.values() if getattr(r, "fn_name", None) == "mean_sq")
    out: ScoreTable = {}
    for t in job.targets:
        out[t] = {}
        for l in job.layers:
            m = class_group(mean.sums[l.name], mean.counts[l.name], job.classes_of(t), "std")
            m2 = class_group(sq.sums[l.name], sq.counts[l.name], job.classes_of(t), "std")
            out[t][l.name] = (m2 - m * m).clamp_min(0).sqrt().to(torch.float32)
    return out


def apoz_reducers(job: ScoreJob) -> dict:
    return {} if job.stats is not None else dict([_vector_reducer(job, "zero")])


def apoz_finish(job: ScoreJob, red: dict) -> ScoreTable:
    if job.stats is not None:
        return _stats_table(job, "zero")
    return _group_table(job, next(iter(red.values())), "APoZ", lambda v: 1.0 - v)


def hrank_reducers(job: ScoreJob) -> dict:
    return dict([_vector_reducer(job, "rank", "hrank_per_class")])


def hrank_finish(job: ScoreJob, red: dict) -> ScoreTable:
    return _group_table(job, next(iter(red.values())), "HRank")


def chip_reducers(job: ScoreJob) -> dict:
    return dict([_vector_reducer(job, "chip", "chip_per_class")])


def chip_finish(job: ScoreJob, red: dict) -> ScoreTable:
    return _group_table(job, next(iter(red.values())), "CHIP")


# ------------------------------------------------------------------ TVS
TVS_POINTS = ("bn", "relu")
TVS_MEASURES = ("mean_distance", "bhattacharyya")


def tvs_reducers(job: ScoreJob) -> dict:
    o = job.options
    if o["tvs_point"] not in TVS_POINTS:
        raise SinfError(f"tvs_point must be one of {', '.join(TVS_POINTS)}, got {o['tvs_point']!r}")
    if o["tvs_measure"] not in TVS_MEASURES:
        raise SinfError(f"tvs_measure must be one of {', '.join(TVS_MEASURES)}, got {o['tvs_measure']!r}")
    rows = job.rows()
    names = [l.name for l in job.layers]
    out = {f"maps:{o['tvs_point']}:{rows_key(rows)}": ClassMapSums(rows, names, job.hierarchy.num_classes, o["tvs_point"])}
    if any(len(job.classes_of(t)) < 2 for t in job.targets):
        k, r = _vector_reducer(job, "mean")
        out[k] = r
    return out


def tvs_layer(sums: torch.Tensor, sumsq: torch.Tensor, counts: torch.Tensor, classes: list[int], measure: str) -> torch.Tensor:
    """TVS of one layer for a set of classes (at least two with samples), [C] (before max-normalising).

    Per channel c and class i, the class-conditional mean map mu_{i,c} (flattened H*W = D values).
    'mean_distance' (TVSPrune's released code): min over class pairs of ||mu_i,c - mu_j,c||_2, which
    orders channels exactly as the Hellinger lower bound H^2 = 1 - exp(-||dmu||^2 / 8) on the TV
    distance between Gaussian class-conditionals with a shared identity covariance.
    'bhattacharyya': Gaussian class-conditionals N(mu_i,c, s_i,c^2 I_D) with each class's own
    per-position variance; min over pairs of the Bhattacharyya distance
    D_B = ||dmu||^2 / (4 (s_i^2 + s_j^2)) - (D/2) log(2 s_i s_j / (s_i^2 + s_j^2)), a monotone
    transform of the same Hellinger bound (H^2 = 1 - exp(-D_B)) that does not saturate at 1 in floats.
    """
    cls = [c for c in classes if counts[c] > 0]
    if len(cls) < 2:
        raise SinfError(f"TVS needs samples of at least two classes; the data has {len(cls)} of {classes}")
    n = counts[cls].view(-1, 1)
    mu = (sums[cls].flatten(2).to(torch.float64) / n.view(-1, 1, 1)).transpose(0, 1)  # [C, k, D]
    sq = (mu * mu).sum(-1)  # [C, k]
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * (mu @ mu.transpose(1, 2))).clamp_min(0)  # [C, k, k]
    k = len(cls)
    iu = torch.triu_indices(k, k, offset=1)
    if measure == "mean_distance":
        pair = d2[:, iu[0], iu[1]].sqrt()
    else:
        d = mu.shape[-1]
        var = ((sumsq[cls] / n) - sq.transpose(0, 1)).clamp_min(0) / d  # [k, C]
        var = var.transpose(0, 1).clamp_min(1e-12)  # [C, k]
        vi, vj = var[:, iu[0]], var[:, iu[1]]
        pair = d2[:, iu[0], iu[1]] / (4 * (vi + vj)) - 0.5 * d * torch.log(2 * (vi * vj).sqrt() / (vi + vj))
    return pair.min(dim=1).values.to(torch.float32)


def tvs_finish(job: ScoreJob, red: dict) -> ScoreTable:
    maps = next(r for r in red.values() if isinstance(r, ClassMapSums))
    means = next((r for r in red.values() if isinstance(r, ClassVectorSums)), None)
    out: ScoreTable = {}
    for t in job.targets:
        out[t] = {}
        classes = job.classes_of(t)
        for l in job.layers:
            if len(classes) < 2:  # nothing to separate: mean activation, like DCS
                v = class_group(means.sums[l.name], means.counts[l.name], classes, "TVS (mean-activation fallback)")
                out[t][l.name] = normalise_max(v.to(torch.float32).clamp_min(0))
            else:
                out[t][l.name] = normalise_max(tvs_layer(maps.sums[l.name], maps.sumsq[l.name],
                                                         maps.counts[l.name], classes, job.options["tvs_measure"]))
    return out


# ------------------------------------------------------------------ Taylor (needs gradients: its own pass)
def taylor_pass(job: ScoreJob, rows: np.ndarray, restrict: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: per-class sums [K, C] of |mean_{h,w}(A * dL/dA)| per sample, and counts [K].

    The loss is the summed cross-entropy (so each sample's gradient is its own); with ``restrict`` each
    sample's logits are restricted to the classes of its own cluster (cluster-conditioned Taylor)."""
    model, device = job.model, job.device
    k = job.hierarchy.num_classes
    cl = torch.as_tensor(job.hierarchy.cluster_array(), device=device)
    names = [l.name for l in job.layers]
    sums = {n: torch.zeros(k, l.channels, dtype=torch.float64) for n, l in zip(names, job.layers)}
    counts = torch.zeros(k, dtype=torch.float64)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(_m, _i, out):
            captured[name] = out  # modified in place by the following ReLU: then it *is* A
        return hook

    handles = [l.bn.register_forward_hook(hook_for(l.name)) for l in job.layers]
    was_training = model.training
    model.eval()
    done = 0
    try:
        with torch.enable_grad():
            for x, y in iterate_batches(job.data, min(job.rt.batch_size, 128), rows, device):
                captured.clear()
                x = x.requires_grad_(True)
                with job.rt.autocast():
                    logits = model(x)
                logits = logits.float()
                if restrict:
                    same = cl[None, :] == cl[y][:, None]
                    logits = logits.masked_fill(~same, float("-inf"))
                loss = F.cross_entropy(logits, y, reduction="sum")
                zs = [captured[n] for n in names]
                grads = torch.autograd.grad(loss, zs)
                lab = y.cpu()
                for n, z, g in zip(names, zs, grads):
                    a = torch.relu(z.detach().float())
                    t = (a * g.float()).mean(dim=(2, 3)).abs().to(torch.float64).cpu()
                    sums[n].index_add_(0, lab, t)
                counts.index_add_(0, lab, torch.ones(len(lab), dtype=torch.float64))
                done += len(x)
                job.progress("taylor", done, len(rows))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (sums[n], counts) for n in names}


def taylor_finish(job: ScoreJob, red: dict) -> ScoreTable:
    out: ScoreTable = {}
    clusters = [t for t in job.targets if t is not None]
    if clusters:
        sub = ScoreJob(**{**job.__dict__, "targets": clusters})
        res = taylor_pass(job, sub.rows(), restrict=True)
        for t in clusters:
            out[t] = {n: class_group(s, c, job.classes_of(t), "Taylor").to(torch.float32) for n, (s, c) in res.items()}
    if None in job.targets:
        sub = ScoreJob(**{**job.__dict__, "targets": [None]})
        res = taylor_pass(job, sub.rows(), restrict=False)
        out[None] = {n: class_group(s, c, job.classes_of(None), "Taylor").to(torch.float32) for n, (s, c) in res.items()}
    return {t: out[t] for t in job.targets}


DEFAULTS = {
    "l1": {},
    "bn_gamma": {},
    "random": {"seed": 0},
    "mean_act": dict(COMMON_DEFAULTS),
    "std": dict(COMMON_DEFAULTS),
    "apoz": dict(COMMON_DEFAULTS),
    "taylor": dict(COMMON_DEFAULTS),
    "hrank": {**COMMON_DEFAULTS, "hrank_per_class": 20},
    "chip": {**COMMON_DEFAULTS, "chip_per_class": 10},
    "tvs": {**COMMON_DEFAULTS, "tvs_point": "bn", "tvs_measure": "mean_distance"},
}
