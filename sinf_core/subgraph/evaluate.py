"""Per-cluster evaluation (oracle-routed accuracy, parameters, FLOPs) and the tail-versus-subgraph
wall-clock comparison."""

from __future__ import annotations

import statistics
from typing import Callable, Mapping

import numpy as np
import torch

from ..cost import count_flops, module_cost, stem_cost, stem_output, tail_cost
from ..data import Hierarchy, ImageDataset, iterate_batches
from ..device import timed
from ..errors import SinfError
from ..models import SinfModel
from ..runtime import Runtime
from .slicing import Subgraph, build_subgraph
from .spec import SubgraphSpec


def _resolve_cluster(key: int | str, hierarchy: Hierarchy) -> int:
    if isinstance(key, str) and not key.lstrip("-").isdigit():
        if key not in hierarchy.cluster_names:
            raise SinfError(f"unknown cluster {key!r}; clusters: {', '.join(hierarchy.cluster_names)}")
        return hierarchy.cluster_names.index(key)
    m = int(key)
    if not 0 <= m < hierarchy.num_clusters:
        raise SinfError(f"cluster index {m} out of range 0..{hierarchy.num_clusters - 1}")
    return m


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate_cluster_subgraphs(
    model: SinfModel,
    specs_by_cluster: Mapping[int | str, SubgraphSpec],
    data: ImageDataset,
    hierarchy: Hierarchy | None = None,
    rt: Runtime | None = None,
    baseline: bool = False,
    on_batch: Callable[[int], None] | None = None,
    stem_cache: dict | None = None,
) -> dict:
    """Oracle-routed accuracy, parameters and FLOPs of each cluster's subgraph.

    ``stem_cache``: a dict reused across calls on the same ``data`` (e.g. a grid of schedules): the
    stem output of every sample at each tap is computed once, kept there, and sliced afterwards.

    Every sample of cluster m (by its true label and ``hierarchy``, default ``data.hierarchy``) goes
    through the stem once and then through m's subgraph; the prediction is the argmax of its logits
    (with a restricted head: among m's head classes). Samples are visited grouped by cluster, so most
    batches feed one subgraph. ``baseline=True`` also runs the unpruned tail on the same stem
    features and scores it the same way (restricted to the spec's classes).

    Returns ``{"clusters": [per cluster], "mean": {...}, "stem": Cost, "tail": Cost, ...}``. Per
    cluster: n, accuracy (% or None when the cluster has no samples), params / flops of the subgraph,
    flops_with_stem, params_with_stem, flop_ratio (subgraph / unpruned tail). FLOPs are per image, 2 x
    MACs (see ``sinf_core.cost``). The means are unweighted over clusters; accuracy means skip
    clusters with no samples (listed in ``empty_clusters``). Clusters without a spec are not evaluated.
    """
    hierarchy = hierarchy or data.hierarchy
    if hierarchy.class_names != data.hierarchy.class_names:
        raise SinfError("the hierarchy is for a different set of classes than the data")
    if not specs_by_cluster:
        raise SinfError("no subgraph specs to evaluate")
    rt = Runtime.resolve(rt, model)
    device, batch_size, bf16 = rt.device, rt.batch_size, rt.bf16
    model = model.to(device).eval()
    specs = {_resolve_cluster(k, hierarchy): s for k, s in specs_by_cluster.items()}
    subs = {m: build_subgraph(model, s).to(device).eval() for m, s in specs.items()}

    # Costs per image (float32 counts; the FLOP counter is independent of bf16).
    taps = sorted({s.tap for s in specs.values()}, key=lambda x: (x is not None, x or ""))
    stem = {tap: stem_cost(model, tap) for tap in taps}
    tail = {tap: tail_cost(model, tap) for tap in taps}
    sub_cost = {m: module_cost(subs[m], stem_output(model, specs[m].tap)) for m in specs}

    cl_of_sample = hierarchy.cluster_array()[data.labels.numpy()]
    wanted = np.isin(cl_of_sample, list(specs))
    order = np.flatnonzero(wanted)
    order = order[np.argsort(cl_of_sample[order], kind="stable")]
    correct = {m: 0 for m in specs}
    base_correct = {m: 0 for m in specs}
    count = {m: 0 for m in specs}
    cl_t = torch.as_tensor(cl_of_sample)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x, y = next(iterate_batches(data, len(idx), idx, device))
        cl = cl_t[torch.as_tensor(idx)].to(device)
        present = sorted(int(m) for m in torch.unique(cl).tolist())
        with torch.inference_mode(), rt.autocast():
            for tap in taps:
                members = [m for m in present if specs[m].tap == tap]
                if not members:
                    continue
                if stem_cache is not None and tap is not None:
                    if tap not in stem_cache:
                        stem_cache[tap] = torch.cat([model.forward_stem(xb, tap) for xb, _ in
                                                     iterate_batches(data, batch_size, None, device)])
                    h = stem_cache[tap].index_select(0, torch.as_tensor(idx, device=device))
                else:
                    h = x if tap is None else model.forward_stem(x, tap)
                base_logits = None
                if baseline:
                    base_logits = (model(h) if tap is None else model.forward_tail(h, tap)).float()
                for m in members:
                    sel = (cl == m).nonzero().flatten()
                    logits = subs[m](h.index_select(0, sel)).float()
                    ym = y.index_select(0, sel)
                    correct[m] += int((logits.argmax(1) == ym).sum())
                    count[m] += int(sel.numel())
                    if base_logits is not None:
                        bl = base_logits.index_select(0, sel)
                        if specs[m].classes is not None:
                            cls = torch.as_tensor(specs[m].classes, device=bl.device)
                            pred = cls[bl.index_select(1, cls).argmax(1)]
                        else:
                            pred = bl.argmax(1)
                        base_correct[m] += int((pred == ym).sum())
        if on_batch:
            on_batch(len(idx))

    rows = []
    for m in sorted(specs):
        spec, n = specs[m], count[m]
        c, st, tl = sub_cost[m], stem[specs[m].tap], tail[specs[m].tap]
        row = {
            "cluster": hierarchy.cluster_names[m], "index": m, "n": n,
            "accuracy": round(100.0 * correct[m] / n, 4) if n else None,
            "params": c.params, "flops": c.flops,
            "params_with_stem": c.params + st.params, "flops_with_stem": c.flops + st.flops,
            "flop_ratio": c.flops / tl.flops if tl.flops else None,
            "param_ratio": c.params / tl.params if tl.params else None,
            "kept": spec.kept_counts(), "tap": spec.tap,
        }
        if baseline:
            row["base_accuracy"] = round(100.0 * base_correct[m] / n, 4) if n else None
        rows.append(row)
    mean = {key: _mean([r[key] for r in rows]) for key in
            ("accuracy", "params", "flops", "params_with_stem", "flops_with_stem", "flop_ratio", "param_ratio")}
    if baseline:
        mean["base_accuracy"] = _mean([r["base_accuracy"] for r in rows])
    total = sum(count.values())
    return {
        "clusters": rows,
        "mean": mean,
        "pooled_accuracy": round(100.0 * sum(correct.values()) / total, 4) if total else None,
        "n": total,
        "empty_clusters": [r["cluster"] for r in rows if r["n"] == 0],
        "stem": {str(k): v.to_json() for k, v in stem.items()},
        "tail": {str(k): v.to_json() for k, v in tail.items()},
        "flops_unit": "FLOPs per image = 2 x MACs (torch.utils.flop_counter)",
        "bf16": bool(bf16),
    }


def compare_tail_speed(
    model: SinfModel,
    spec: SubgraphSpec | None = None,
    x: torch.Tensor | None = None,
    reps: int = 20,
    warmup: int = 3,
    rt: Runtime | None = None,
    subgraph: Subgraph | None = None,
    fold_bn: bool = False,
) -> dict:
    """Wall-clock of the unpruned tail versus the subgraph on the same stem features, side by side.

    ``x``: a normalised image batch [N, 3, H, W] on ``rt``'s device (bf16 and channels-last from ``rt``;
    default: the model's device, NCHW); the stem runs once, then the
    two tails alternate (ABBA order over repetitions, so drift hits both alike). Reports medians in
    ms, ``time_ratio`` = subgraph / tail (< 1: the subgraph is faster), ``speedup`` = tail / subgraph,
    and per-image FLOPs with ``flop_ratio`` = subgraph / tail. ``fold_bn``: both tails run with their
    BatchNorms folded into the convs (``fusion.fold_batchnorm``), as ``sinf bench`` runs them.
    """
    if x is None or x.ndim != 4:
        raise SinfError("compare_tail_speed needs an image batch [N, 3, H, W]")
    if reps < 1 or warmup < 0:
        raise SinfError("reps must be >= 1 and warmup >= 0")
    model = model.eval()
    if subgraph is None:
        if spec is None:
            raise SinfError("compare_tail_speed needs a spec or a built subgraph")
        subgraph = build_subgraph(model, spec)
    tap = subgraph.tap
    subgraph = subgraph.eval()
    rt = rt or Runtime(device=x.device, channels_last=False)
    device, bf16, channels_last = rt.device, rt.bf16, rt.channels_last
    base = model
    if fold_bn or channels_last:  # on copies (folding makes its own): the caller's modules stay as they are
        base, subgraph = (rt.ready(m, fold_bn) for m in (model, subgraph))
    x = rt.inputs(x)
    with torch.inference_mode(), rt.autocast():
        h = x if tap is None else base.forward_stem(x, tap)
    tail_fn = run_tail_fn(base, tap)

    def run_tail() -> torch.Tensor:
        return tail_fn(h)

    def run_sub() -> torch.Tensor:
        return subgraph(h)

    def clock(fn: Callable[[], torch.Tensor]) -> float:
        with torch.inference_mode():
            t0 = timed(device)
            with rt.autocast():
                fn()
            return (timed(device) - t0) * 1000.0

    for _ in range(warmup):
        clock(run_tail)
        clock(run_sub)
    t_tail, t_sub = [], []
    for i in range(reps):
        if i % 2 == 0:
            t_tail.append(clock(run_tail))
            t_sub.append(clock(run_sub))
        else:
            t_sub.append(clock(run_sub))
            t_tail.append(clock(run_tail))
    h1 = h[:1].float()
    tail_flops = count_flops(tail_fn, h1)
    sub_flops = count_flops(subgraph, h1)
    tail_ms, sub_ms = statistics.median(t_tail), statistics.median(t_sub)
    return {
        "batch": int(x.shape[0]), "reps": int(reps), "tap": tap, "bf16": bool(bf16), "channels_last": bool(channels_last),
        "fold_bn": bool(fold_bn), "threads": torch.get_num_threads(),
        "tail_ms": tail_ms, "subgraph_ms": sub_ms,
        "time_ratio": sub_ms / tail_ms, "speedup": tail_ms / sub_ms,
        "tail_flops": tail_flops, "subgraph_flops": sub_flops, "flop_ratio": sub_flops / tail_flops,
        "tail_ms_all": t_tail, "subgraph_ms_all": t_sub,
    }


def run_tail_fn(model: SinfModel, tap: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The unpruned tail as a function of the stem output (the whole model when ``tap`` is None)."""
    return model if tap is None else (lambda h: model.forward_tail(h, tap))
