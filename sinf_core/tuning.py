"""Tuning a routed model in a second: what SINF Studio's Pruning and Live pages compute, from the
calibration split's outputs at one tap, computed once.

``CalibrationOutputs`` holds, for every calibration image, the stem output at the tap and what the
fixed parts of the network say about it: the base model's prediction (and its prediction restricted
to the image's own cluster, the oracle baseline), the route head's and the exit head's calibrated
confidence and argmax. ``sinf build`` stores them in the bundle (the ``studio`` step, stem features
as per-channel uint8: ``quantize_features``) so a page never runs the stem over the split again.

``evaluate_schedule`` then builds one configuration's subgraphs once and runs only tails: every
calibration image through its own cluster's subgraph (oracle accuracy per cluster) and through the
subgraph of the cluster the router picked (what routing will answer), sharing the pass where both are
the same subgraph. ``threshold_curves`` sweeps gamma and tau over the result with the benchmark's own
decision rule (``bench.sweep_tap``): accuracy, exit / route / fallback rates and expected FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .artifacts import BENCH, ROUTER, STUDIO as STUDIO_JSON, STUDIO_HEADS, studio_calib_file
from .bench.heads import heads_from_tensors, heads_to_tensors  # noqa: F401  (re-exported)
from .bench.precompute import _head_outputs
from .bench.sweep import ScheduleData, TapData, sweep_tap
from .cost import Cost, module_cost, stem_cost, stem_output, tail_cost
from .data import Hierarchy, ImageDataset, iterate_batches
from .errors import SinfError
from .models import SinfModel
from .router import RouteHead
from .runtime import Runtime
from .subgraph.reuse import FirstUnitReuse
from .subgraph.slicing import build_subgraph
from .subgraph.spec import SubgraphSpec

QUANT_LEVELS = 255  # uint8 codes per channel between the channel's minimum and maximum
CURVE_STEPS = 51  # gamma / tau grid of the threshold curves: 0, 0.02, ..., 1
_FIELDS = ("labels", "base_pred", "base_cluster_pred", "route_conf", "route_pred", "exit_conf", "exit_pred")


def quantize_features(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel affine uint8 codes of ``h`` [N, C, ...]: ``codes`` uint8, ``low`` / ``step`` float32 [C]
    (value = low + step x code; the error is at most step / 2, step = channel range / 255)."""
    if h.ndim < 2 or h.shape[0] == 0:
        raise SinfError(f"features to quantize must be [N, C, ...] with N >= 1, got {list(h.shape)}")
    h = h.detach().float().cpu()
    per_channel = h.transpose(0, 1).reshape(h.shape[1], -1)
    low, high = per_channel.min(1).values, per_channel.max(1).values
    step = ((high - low) / QUANT_LEVELS).clamp_min(1e-12)
    shape = (1, -1) + (1,) * (h.ndim - 2)
    codes = ((h - low.view(shape)) / step.view(shape)).round_().clamp_(0, QUANT_LEVELS).to(torch.uint8)
    return {"codes": codes.contiguous(), "low": low.contiguous(), "step": step.contiguous()}


def dequantize_features(codes: torch.Tensor, low: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The float32 features of ``quantize_features``' output."""
    shape = (1, -1) + (1,) * (codes.ndim - 2)
    return codes.float().mul_(step.view(shape)).add_(low.view(shape))


@dataclass
class CalibrationOutputs:
    """The calibration split seen from one tap (tensors on the CPU; route / exit fields None without
    that head). ``features`` float32 [N, ...]: stem outputs; ``labels`` / ``base_pred`` /
    ``base_cluster_pred`` / ``route_pred`` / ``exit_pred`` int64 [N]; ``route_conf`` / ``exit_conf``
    float32 [N] (calibrated top probabilities, computed as the engine does)."""

    tap: str
    features: torch.Tensor
    labels: torch.Tensor
    base_pred: torch.Tensor
    base_cluster_pred: torch.Tensor
    route_conf: torch.Tensor | None = None
    route_pred: torch.Tensor | None = None
    exit_conf: torch.Tensor | None = None
    exit_pred: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors (features as uint8 codes)."""
        out = {f"features.{k}": v for k, v in quantize_features(self.features).items()}
        for name in _FIELDS:
            v = getattr(self, name)
            if v is not None:
                out[name] = v.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tap: str, t: Mapping[str, torch.Tensor], where: str = "calibration outputs") -> "CalibrationOutputs":
        try:
            feats = dequantize_features(t["features.codes"], t["features.low"], t["features.step"])
            kw = {name: t.get(name) for name in _FIELDS}
        except KeyError as exc:
            raise SinfError(f"{where} lack {exc.args[0]!r}: rebuild the bundle's studio step") from exc
        n = feats.shape[0]
        for name, v in kw.items():
            if v is not None and v.shape[:1] != (n,):
                raise SinfError(f"{where}: {name} has {v.shape[0] if v.ndim else 0} rows, the features {n}")
        if kw["labels"] is None or kw["base_pred"] is None or kw["base_cluster_pred"] is None:
            raise SinfError(f"{where} lack the labels or the base model's predictions")
        return cls(tap, feats, **kw)

    @property
    def base_top1(self) -> float:
        return 100.0 * float((self.base_pred == self.labels).double().mean())


@torch.inference_mode()
def compute_calibration_outputs(
    model: SinfModel,
    data: ImageDataset,
    tap: str,
    hierarchy: Hierarchy,
    route_head: RouteHead | None = None,
    exit_head: RouteHead | None = None,
    rt: Runtime | None = None,
    on_batch=None,
) -> CalibrationOutputs:
    """One pass over ``data``: the stem at ``tap`` and the tail of the base model (BatchNorm folded,
    as every contender runs it), then the heads on the stored features; in float32 (the decisions'
    precision) whatever ``rt.bf16`` says."""
    if len(data) == 0:
        raise SinfError("no calibration images to compute outputs on")
    rt = Runtime.resolve(rt, model).with_(bf16=False)
    device = rt.device
    work = rt.ready(model, fold_bn=True)
    t = model.unit_index(tap)
    members = torch.as_tensor(np.stack([np.isin(np.arange(hierarchy.num_classes), hierarchy.members(m))
                                        for m in range(hierarchy.num_clusters)]), device=device)  # [K, C] bool
    cluster_of = torch.as_tensor(hierarchy.cluster_array(), device=device)
    feats, base, base_cl = [], [], []
    for x, y in iterate_batches(data, rt.batch_size, None, device):
        h = work.forward_stem(rt.layout(x), t)
        z = work.forward_tail(h, t).float()
        feats.append(h.float().contiguous().cpu())
        base.append(z.argmax(1).cpu())
        own = members[cluster_of[y]]  # [n, C]: the classes of each image's own cluster
        base_cl.append(z.masked_fill(~own, float("-inf")).argmax(1).cpu())
        if on_batch:
            on_batch(int(x.shape[0]))
    h = torch.cat(feats)
    out = CalibrationOutputs(tap, h, data.labels.clone().long(), torch.cat(base), torch.cat(base_cl))
    hd = rt.inputs(h)
    for kind, head in (("route", route_head), ("exit", exit_head)):
        if head is not None:
            conf, pred = _head_outputs(rt.ready(head), hd, rt)
            setattr(out, f"{kind}_conf", conf)
            setattr(out, f"{kind}_pred", pred)
    return out


class CostCache:
    """FLOPs and parameters of subgraphs by what they keep (channel counts per layer, head classes):
    counting is the slow part of a configuration, and clusters with the same counts cost the same."""

    def __init__(self, model: SinfModel, input_shape: Sequence[int] | None = None):
        self.model, self.input_shape = model, tuple(model.input_shape if input_shape is None else input_shape)
        self._costs: dict[tuple, Cost] = {}
        self._taps: dict[str, tuple[Cost, Cost, torch.Tensor]] = {}

    def tap(self, tap: str) -> tuple[Cost, Cost, torch.Tensor]:
        """(stem cost, unpruned tail cost, an example stem output) at ``tap``."""
        if tap not in self._taps:
            self._taps[tap] = (stem_cost(self.model, tap, self.input_shape), tail_cost(self.model, tap, self.input_shape),
                               stem_output(self.model, tap, self.input_shape))
        return self._taps[tap]

    def head(self, head: RouteHead | None, tap: str) -> Cost:
        """A route / exit head's cost at ``tap`` (counted once per head)."""
        if head is None:
            return Cost(0, 0)
        key = ("head", id(head), tap)
        if key not in self._costs:
            self._costs[key] = module_cost(head, self.tap(tap)[2])
        return self._costs[key]

    def subgraph(self, spec: SubgraphSpec, module: nn.Module) -> Cost:
        key = (spec.tap, tuple(sorted(spec.kept_counts().items())), None if spec.classes is None else len(spec.classes))
        if key not in self._costs:
            self._costs[key] = module_cost(module, self.tap(spec.tap)[2])
        return self._costs[key]


@torch.inference_mode()
def evaluate_schedule(
    model: SinfModel,
    specs: Mapping[int, SubgraphSpec],
    outputs: CalibrationOutputs,
    hierarchy: Hierarchy,
    costs: CostCache,
    r_M: float,
    r_L: float,
    rt: Runtime | None = None,
    fold_bn: bool = False,
    routed: bool = True,
    built: Mapping[int, nn.Module] | None = None,
    reuse: FirstUnitReuse | None = None,
) -> dict:
    """One configuration (a spec per cluster at ``outputs.tap``) on the calibration outputs.

    Returns ``{"clusters": rows, "mean": {...}, "stem": Cost json, "tail": Cost json, "schedule":
    ScheduleData}``: per cluster (the rows of ``evaluate_cluster_subgraphs``) n, accuracy (%, oracle
    routing: each image through its own cluster's subgraph), base_accuracy (the unpruned tail
    restricted to the same classes), params / flops of the subgraph, flops_with_stem,
    params_with_stem, flop_ratio, kept; ``schedule.pred``: each image's prediction by the subgraph
    of the cluster the router picked (-1 without a router). ``fold_bn``: fold each subgraph's BatchNorms
    first (as served; the same predictions up to float rounding; folding 20 subgraphs costs more than it
    saves on 5,000 tails). ``routed=False``: skip the routed predictions (``schedule.pred`` all -1), for
    a mode that never routes. ``built``: each cluster's subgraph already built from its spec (as
    ``make_cluster_specs(..., built=...)`` fills it), so it is not built again. ``reuse``: kept across
    the configurations of one tuning session on these outputs (keyed by cluster), so a subgraph whose
    first unit did not change (r_L moved, another cluster overridden) takes that unit's outputs from it."""
    tap = outputs.tap
    if any(s.tap != tap for s in specs.values()):
        raise SinfError(f"every spec must start after tap {tap!r}")
    rt = Runtime.resolve(rt, model).with_(bf16=False)
    device, batch_size = rt.device, rt.batch_size
    stem, tail, _ = costs.tap(tap)
    subs, sub_cost = {}, {}
    for m, s in specs.items():
        sub = built[m] if built is not None and built.get(m) is not None else build_subgraph(model, s)
        sub_cost[m] = costs.subgraph(s, sub)  # counted unfolded, as every cost in the project
        if fold_bn:
            subs[m] = rt.ready(sub, fold_bn=True)
        else:  # built here or handed over for this evaluation: readied in place, not copied
            sub = sub.to(device).eval()
            subs[m] = sub.to(memory_format=torch.channels_last) if rt.channels_last else sub
    labels = outputs.labels
    true_cluster = torch.as_tensor(hierarchy.cluster_array())[labels]
    routed_to = outputs.route_pred if outputs.route_pred is not None and routed else torch.full_like(labels, -1)
    oracle = torch.full_like(labels, -1)
    routed_pred = torch.full_like(labels, -1)
    h_all = outputs.features
    for m, sub in subs.items():
        own = true_cluster == m
        need = own | (routed_to == m)
        idx = need.nonzero().flatten()
        preds = torch.empty(idx.shape[0], dtype=torch.long)
        pieces = [idx[s : s + batch_size] for s in range(0, idx.shape[0], batch_size)]
        if reuse is None or not len(sub.units):
            logits = (sub(rt.inputs(h_all.index_select(0, p))) for p in pieces)
        else:
            firsts, _ = reuse.outputs(m, sub.units[0], (h_all, idx, batch_size, str(device), rt.channels_last),
                                      lambda unit: ([unit(rt.inputs(h_all.index_select(0, p))) for p in pieces], None))
            logits = (sub.logits(sub.features(x, 1)) for x in firsts)
        for s, out in zip(range(0, idx.shape[0], batch_size), logits):
            preds[s : s + out.shape[0]] = out.float().argmax(1).cpu()
        oracle[idx[own[idx]]] = preds[own[idx]]
        routed_pred[idx[(routed_to == m)[idx]]] = preds[(routed_to == m)[idx]]
    rows = []
    for m in sorted(specs):
        sel = true_cluster == m
        n = int(sel.sum())
        c = sub_cost[m]
        rows.append({
            "cluster": hierarchy.cluster_names[m], "index": m, "n": n,
            "accuracy": round(100.0 * float((oracle[sel] == labels[sel]).double().mean()), 4) if n else None,
            "base_accuracy": round(100.0 * float((outputs.base_cluster_pred[sel] == labels[sel]).double().mean()), 4)
            if n else None,
            "params": c.params, "flops": c.flops, "params_with_stem": c.params + stem.params,
            "flops_with_stem": c.flops + stem.flops, "flop_ratio": c.flops / tail.flops if tail.flops else None,
            "kept": specs[m].kept_counts(), "tap": tap,
        })

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    schedule = ScheduleData(float(r_M), float(r_L), dict(specs),
                            tuple(sub_cost.get(m, tail) for m in range(hierarchy.num_clusters)), routed_pred)
    return {"clusters": rows,
            "mean": {k: mean(k) for k in ("accuracy", "base_accuracy", "params", "flops", "params_with_stem",
                                          "flops_with_stem", "flop_ratio")},
            "stem": {tap: stem.to_json()}, "tail": {tap: tail.to_json()}, "schedule": schedule,
            "n": len(outputs)}


def threshold_curves(
    outputs: CalibrationOutputs,
    costs: CostCache,
    route_head: RouteHead | None,
    exit_head: RouteHead | None,
    schedule: ScheduleData | None,
    gamma: float = 1.0,
    tau: float = 1.0,
    steps: int = CURVE_STEPS,
) -> list[dict]:
    """The operating points along both threshold lines through (gamma, tau), by the benchmark's rule
    (``bench.sweep_tap``): gamma on a grid of ``steps`` values in [0, 1] (plus gamma itself) at tau, and
    tau on that grid at gamma; each point a dict with mode, gamma, tau, top1 (%), top1_se, flops
    (expected per input, heads included), exit_rate, route_rate, fallback_rate. Modes without their
    head are left out; the exit mode's points do not depend on gamma."""
    grid = sorted({round(i / (steps - 1), 4) for i in range(steps)} | {round(float(gamma), 4)})
    tgrid = sorted({round(i / (steps - 1), 4) for i in range(steps)} | {round(float(tau), 4)})
    tap = outputs.tap
    stem, tail, _ = costs.tap(tap)
    n = len(outputs)
    has_route = outputs.route_pred is not None and schedule is not None
    has_exit = outputs.exit_pred is not None
    td = TapData(
        tap,
        outputs.route_conf if has_route else torch.zeros(n), outputs.route_pred if has_route else torch.zeros(n, dtype=torch.long),
        outputs.exit_conf if has_exit else torch.zeros(n), outputs.exit_pred if has_exit else torch.full((n,), -1),
        stem, tail, costs.head(route_head, tap), costs.head(exit_head, tap),
        [schedule] if has_route else [])
    seen, points = set(), []
    lines = [(grid, [round(float(tau), 4)] if has_exit else [1.0])]
    if has_exit:
        lines.append(([round(float(gamma), 4)], tgrid))
    for gammas, taus in lines:
        for p in sweep_tap(outputs.labels, outputs.base_pred, td, gammas, taus):
            if p["mode"] in ("exit", "cascade") and not has_exit:
                continue
            key = (p["mode"], p["gamma"], p["tau"])
            if key not in seen:
                seen.add(key)
                points.append(p)
    return points


def point_at(points: Sequence[dict], mode: str, gamma: float | None, tau: float | None) -> dict | None:
    """The point of ``mode`` nearest to (gamma, tau) in ``points`` (None when the mode has none)."""
    own = [p for p in points if p["mode"] == mode]
    if not own:
        return None

    def dist(p: dict) -> float:
        return (abs((p["gamma"] or 0.0) - (gamma or 0.0)) if p["gamma"] is not None else 0.0) + \
            (abs((p["tau"] or 0.0) - (tau or 0.0)) if p["tau"] is not None else 0.0)

    return min(own, key=dist)


# --------------------------------------------------------------------------------------------------
# The bundle's studio step: the benchmark's heads and the calibration outputs at its operating points
# --------------------------------------------------------------------------------------------------
HEAD_KINDS = ("route", "exit")
studio_outputs_file = studio_calib_file  # the studio step's calibration outputs at a tap (artifacts names it)


def bn_sample_set(exp, per_cluster: int, seed: int = 0):
    """The fit images on which subgraph BatchNorm statistics are re-estimated, as the benchmark picks them."""
    from .subgraph.batchnorm import BatchNormSamples

    return BatchNormSamples(exp.model, exp.fit_data(), exp.hierarchy, per_cluster, seed, exp.runtime)


def chosen_points(bench: Mapping) -> dict[str, dict]:
    """{mode: operating point} of a benchmark result (the points chosen on calibration)."""
    out = {}
    for mode in ("sinf", "exit", "cascade"):
        p = (bench.get(mode) or {}).get("operating_point") if isinstance(bench.get(mode), Mapping) else None
        if isinstance(p, Mapping) and p.get("tap"):
            out[mode] = dict(p)
    return out


def studio_artifacts(exp, bundle, on_progress=None, log=lambda s: None) -> dict:
    """The ``studio`` step's files: the benchmark's route and exit heads at its taps (from the
    benchmark's head cache, trained there when missing), the chosen operating points, and at the tap
    of the best mode's point the calibration outputs. (The BatchNorm samples' stem outputs are not
    stored: 5,120 images through the stem take seconds, as much disk as the calibration outputs.)"""
    from .bench.heads import fit_bench_heads
    from .bench.options import BenchOptions
    from .router import RoutePredictor

    bench = bundle.json(BENCH)
    opts = BenchOptions.from_dict(bench.get("options"))
    taps = list(bench.get("taps") or [])
    if not taps:
        raise SinfError("the bundle's benchmark names no taps; rerun its bench step")
    router = RoutePredictor.load(bundle.root, ROUTER) if bundle.has("router") else None
    route_heads, exit_heads, summary = fit_bench_heads(exp, taps, opts, router, on_progress, log, bundle)
    heads = {"route": route_heads, "exit": exit_heads}
    tensors, shapes = heads_to_tensors(heads)
    points = chosen_points(bench)
    # stored for the tap the app opens on (the best mode's point): about 4 kB per image there; the
    # pages compute other taps' outputs once when asked
    best = points.get(bench.get("best_mode")) or next(iter(points.values()), None)
    out_taps = [best["tap"]] if best else []
    files: dict = {STUDIO_HEADS: tensors}
    calib = exp.calib_data()
    for i, tap in enumerate(out_taps):
        done = [0]

        def on_batch(n: int, i=i, tap=tap) -> None:
            done[0] += n
            if on_progress:
                on_progress(f"studio: calibration outputs at {tap}", done[0], len(calib))

        outs = compute_calibration_outputs(exp.model, calib, tap, exp.hierarchy, route_heads[tap], exit_heads[tap],
                                           exp.runtime, on_batch=on_batch)
        files[studio_outputs_file(tap)] = outs.to_tensors()
        log(f"studio: calibration outputs at {tap} (base calibration top-1 {outs.base_top1:.2f} %)")
    files[STUDIO_JSON] = {"format": 1, "taps": taps, "heads": shapes, "points": points, "output_taps": out_taps,
                          "score": bench.get("subgraph_score"), "bn_seed": opts.seed,
                          "options": {k: bench["options"].get(k) for k in ("fill", "bn_samples", "multiple_of")},
                          "head_summary": {k: v for k, v in summary.items() if k != "cache"}}
    return files


__all__ = ["CalibrationOutputs", "CostCache", "compute_calibration_outputs", "evaluate_schedule", "threshold_curves",
           "point_at", "studio_artifacts", "heads_to_tensors", "heads_from_tensors", "chosen_points",
           "studio_outputs_file", "bn_sample_set", "STUDIO_JSON", "STUDIO_HEADS", "quantize_features", "dequantize_features", "CURVE_STEPS", "QUANT_LEVELS"]
