"""The static pruning comparator: one network pruned from a tap by one removed fraction, matched in
FLOPs to a routed operating point."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..cost import count_flops, stem_cost, stem_output, tail_cost
from ..models import SinfModel
from ..runtime import Runtime
from ..subgraph.schedule import first_pruned_index, keep_indices, model_schedule
from ..subgraph.slicing import build_subgraph
from ..subgraph.spec import SubgraphSpec


class StaticNet(nn.Module):
    """One statically pruned network: the unpruned stem up to ``tap`` (the base model's own units,
    shared) followed by a pruned tail (a ``Subgraph`` with the full head). ``forward(x)``: images ->
    logits [N, classes]."""

    def __init__(self, model: SinfModel, tap: str | None, tail: nn.Module):
        super().__init__()
        t = -1 if tap is None else model.unit_index(tap)
        self.stem = nn.ModuleList([m for _, m in model.units()[: t + 1]])
        self.tail = tail
        self.tap = tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.stem:
            x = unit(x)
        return self.tail(x)


def _schedule_flops(model: SinfModel, model_name: str, tap: str | None, scores: Mapping[str, torch.Tensor],
                    kept: Mapping[str, int], input_shape: Sequence[int] | None,
                    fill: Mapping[str, torch.Tensor] | None = None) -> tuple[int, SubgraphSpec]:
    keep = keep_indices(scores, kept)
    spec = SubgraphSpec(model_name, tap, keep, None, {k: fill[k].tolist() for k in keep} if fill else {})
    sub = build_subgraph(model, spec)
    return count_flops(sub, stem_output(model, tap, input_shape)), spec


def static_for_flops(
    model: SinfModel,
    model_name: str,
    tap: str | None,
    scores: Mapping[str, torch.Tensor],
    target_flops: float,
    multiple_of: int | None = None,
    input_shape: Sequence[int] | None = None,
    iterations: int = 30,
    fill: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Prune every layer after ``tap`` by one removed fraction r (kept = ceil((1 - r) C), rounded up to
    ``multiple_of``) chosen by bisection so the network's FLOPs per image (stem + pruned tail) come as
    close to ``target_flops`` as one channel step allows without exceeding it: bisection finds the
    smallest r whose FLOPs are <= target, then channels (``multiple_of`` at a time) are added back,
    layer by layer in forward order, while the total stays <= target. ``scores``: {layer: Tensor[C]}
    (global, not cluster conditioned) choose which channels stay; ``fill``: {layer: Tensor[C]} mean
    activations for mean replacement of the removed channels (None: zero).

    Returns {spec, r, flops, target_flops, reachable}: ``reachable`` is False when even r = 0.99 stays
    above the target (the spec is then the most pruned one) or r = 0 is already below it (no pruning).
    """
    stem = stem_cost(model, tap, input_shape).flops if tap is not None else 0
    target = float(target_flops)
    layers = model.prunable_layers()
    first = first_pruned_index(model, tap)
    names = [l.name for l in layers[first:]]
    chans = {l.name: l.channels for l in layers}

    memo: dict[tuple, tuple[int, SubgraphSpec]] = {}

    def flops_of(kept: Mapping[str, int]) -> tuple[int, SubgraphSpec]:
        key = tuple(sorted(kept.items()))
        if key not in memo:  # bisection visits few distinct schedules: build each once
            f, spec = _schedule_flops(model, model_name, tap, scores, kept, input_shape, fill)
            memo[key] = (stem + f, spec)
        return memo[key]

    def sched(r: float) -> dict[str, int]:
        return model_schedule(model, tap, r, r, multiple_of)

    f0, spec0 = flops_of(sched(0.0))
    if not names or f0 <= target:
        return {"spec": spec0, "r": 0.0, "flops": int(f0), "target_flops": target, "reachable": f0 <= target}
    r_max = 0.99
    fmax, specmax = flops_of(sched(r_max))
    if fmax > target:
        return {"spec": specmax, "r": r_max, "flops": int(fmax), "target_flops": target, "reachable": False}
    lo, hi = 0.0, r_max  # flops(lo) > target >= flops(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if flops_of(sched(mid))[0] <= target:
            hi = mid
        else:
            lo = mid
    kept = sched(hi)
    upper = sched(lo)  # one step less pruned: above the target
    step = int(multiple_of or 1)
    best, best_spec = flops_of(kept)
    for name in names:
        while kept[name] < min(upper[name], chans[name]):
            trial = dict(kept)
            trial[name] = min(chans[name], kept[name] + step)
            f, spec = flops_of(trial)
            if f > target:
                break
            kept, best, best_spec = trial, f, spec
    return {"spec": best_spec, "r": hi, "flops": int(best), "target_flops": target, "reachable": True}


def channel_step_flops(model: SinfModel, tap: str | None, input_shape: Sequence[int] | None = None,
                       multiple_of: int | None = None) -> int:
    """The largest FLOPs change from removing ``multiple_of`` (default 1) output channels of one
    prunable layer after ``tap`` (its conv and its consumer's input), measured with the FLOP counter
    on the unpruned tail versus a tail with that layer cut."""
    base = tail_cost(model, tap, input_shape).flops
    first = first_pruned_index(model, tap)
    step = int(multiple_of or 1)
    worst = 0
    for layer in model.prunable_layers()[first:]:
        if layer.channels <= step:
            continue
        keep = {layer.name: list(range(layer.channels - step))}
        sub = build_subgraph(model, SubgraphSpec("step", tap, keep, None))
        worst = max(worst, base - count_flops(sub, stem_output(model, tap, input_shape)))
    return int(worst)


@torch.inference_mode()
def _static_calib_top1(tail: nn.Module, h: torch.Tensor, labels: torch.Tensor, rt: Runtime) -> float:
    preds = []
    for b in rt.batches(h.shape[0]):
        with rt.autocast():
            preds.append(tail(h[b]).float().argmax(1).cpu())
    return 100.0 * float((torch.cat(preds) == labels).double().mean())
