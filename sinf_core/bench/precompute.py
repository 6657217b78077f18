"""Precompute on a split: the stem features at every swept tap, the heads' calibrated outputs and the
routed subgraphs' predictions that the sweep combines."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..cost import module_cost, stem_cost, stem_output, tail_cost
from ..data import ImageDataset, iterate_batches
from ..errors import SinfError
from ..models import SinfModel
from ..router import RouteHead, forward_taps
from ..runtime import Runtime
from ..subgraph.batchnorm import BatchNormSamples
from ..subgraph.schedule import make_cluster_specs
from ..subgraph.slicing import build_subgraph
from ..subgraph.spec import SubgraphSpec
from .costs import head_cost
from .sweep import ScheduleData, TapData


@torch.inference_mode()
def stem_features(model: SinfModel, data: ImageDataset, taps: Sequence[str],
                  rt: Runtime | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One pass over ``data``: the stem output at every tap ({tap: [N, ...]} on ``rt.device``) and the
    base model's predictions [N] (CPU), the tail run from the deepest tap; progress as 'stem features'."""
    rt = Runtime.resolve(rt, model)
    if len(data) == 0:
        raise SinfError("no samples to run the stem on")
    units = sorted({model.unit_index(t) for t in taps})
    names = model.unit_names()
    feats: dict[int, list[torch.Tensor]] = {u: [] for u in units}
    preds = []
    done = 0
    for x, _ in iterate_batches(data, rt.batch_size, None, rt.device):
        with rt.autocast():
            hs = forward_taps(model, rt.layout(x), units)
            for u, h in zip(units, hs):
                feats[u].append(h)
            preds.append(model.forward_tail(hs[-1], units[-1]).float().argmax(1).cpu())
        done += x.shape[0]
        rt.progress("stem features", done, len(data))
    return {names[u]: torch.cat(v) for u, v in feats.items()}, torch.cat(preds)


@torch.inference_mode()
def _head_outputs(head: RouteHead, h: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated top probability and argmax [N] (CPU), computed exactly as the engine does."""
    confs, preds = [], []
    head = head.to(rt.device).eval()
    for b in rt.batches(h.shape[0]):
        with rt.autocast():
            z = head(h[b]).float()
        p = torch.softmax(z / head.temperature.float(), dim=1)
        c, k = p.max(1)
        confs.append(c.cpu())
        preds.append(k.cpu())
    return torch.cat(confs), torch.cat(preds)


@torch.inference_mode()
def routed_predictions(subgraphs: Mapping[int, nn.Module], h: torch.Tensor, route: torch.Tensor,
                       rt: Runtime) -> torch.Tensor:
    """For every sample i, the prediction [N] (CPU) of ``subgraphs[route[i]]`` on ``h[i]``, run in
    groups of one cluster (``rt.batch_size`` at a time); -1 where the cluster has no subgraph."""
    out = torch.full((h.shape[0],), -1, dtype=torch.long)
    route_dev = route.to(h.device)
    for m, sub in subgraphs.items():
        idx = (route_dev == int(m)).nonzero().flatten()
        for piece in idx.split(rt.batch_size):
            with rt.autocast():
                z = sub(h.index_select(0, piece)).float()
            out[piece.cpu()] = z.argmax(1).cpu()
    return out


def build_subgraphs(model: SinfModel, specs: Mapping[int, SubgraphSpec], rt: Runtime) -> dict[int, nn.Module]:
    return {m: rt.ready(build_subgraph(model, s)) for m, s in specs.items()}


def tap_sweep_data(
    model: SinfModel,
    model_name: str,
    tap: str,
    h: torch.Tensor,
    route_head: RouteHead,
    exit_head: RouteHead,
    cluster_scores: Mapping[int, Mapping[str, torch.Tensor]],
    hierarchy,
    schedules: Sequence[tuple[float, float]],
    multiple_of: int | None = None,
    rt: Runtime | None = None,
    work: SinfModel | None = None,
    input_shape: Sequence[int] | None = None,
    fill_stats=None,
    bn_samples: BatchNormSamples | None = None,
) -> TapData:
    """Everything ``sweep_tap`` needs at ``tap`` from the stem features ``h`` [N, ...] of a split:
    the heads' calibrated confidences and predictions, the path costs, and per (r_M, r_L) schedule the
    cluster subgraphs (restricted heads, ``cluster_scores``) and each sample's prediction by the
    subgraph of the cluster the router picked. ``work``: the copy of ``model`` that runs (e.g. in
    channels_last); costs are counted on ``model``. ``fill_stats``: fit-split ``ActivationStats`` for
    mean replacement of removed channels (None: zero). ``bn_samples``: fit samples on which each
    subgraph's BatchNorm statistics are re-estimated (None: the base model's)."""
    rt = Runtime.resolve(rt, model)
    work = model if work is None else work
    input_shape = tuple(model.input_shape if input_shape is None else input_shape)
    rc, rp = _head_outputs(route_head, h, rt)
    ec, ep = _head_outputs(exit_head, h, rt)
    td = TapData(tap, rc, rp, ec, ep, stem_cost(model, tap, input_shape), tail_cost(model, tap, input_shape),
                 head_cost(route_head, model, tap, input_shape), head_cost(exit_head, model, tap, input_shape))
    example = stem_output(model, tap, input_shape)
    for r_M, r_L in schedules:
        specs = make_cluster_specs(model, model_name, tap, cluster_scores, hierarchy, r_M, r_L, multiple_of,
                                   fill_stats=fill_stats, bn_samples=bn_samples)
        subs = build_subgraphs(work, specs, rt)
        costs = tuple(module_cost(subs[m], example) for m in range(hierarchy.num_clusters))
        pred = routed_predictions(subs, h, rp, rt)
        td.schedules.append(ScheduleData(float(r_M), float(r_L), specs, costs, pred))
    return td
