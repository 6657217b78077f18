"""The network-selection contender ``select`` (``selection``): the cheaper networks of
``BenchOptions.chain`` run first, cheapest first, each gated by its calibrated confidence; the base model
answers what reaches it. Its combinations ``select+sinf`` / ``select+exit`` / ``select+cascade`` serve
what reaches the last network with that mode at its own chosen point (its gates chosen for the pair). As for every mode, the gates' temperatures are fitted and the thresholds swept on
calibration, the cheapest points within the guarded budget are timed against the base on calibration
images, and the fastest measured one is served; costs count every network that ran."""

from __future__ import annotations

import statistics

import torch
from torch import nn

from ..cost import model_cost
from ..errors import SinfError
from ..evaluate import collect_logits
from ..selection import Gate, NetworkSelection, Stage, fit_gate, sweep_chain
from ..timing import interleaved_throughput, paired_ratios
from .contenders import _images_on
from .costs import sample_flops
from .metrics import _per_cluster
from .options import MODES, SELECT
from .reproduce import pin_candidates
from .sweep import _round_point, candidates_within_budget, pick_fastest



def chain_networks(exp, names, device) -> list[tuple[str, nn.Module]]:
    """The registry models ``names`` (cheapest first), checked to serve the benchmark's data and splits."""
    from ..experiment import check_model_fits_data
    from ..models.registry import MODELS, get_entry, load_model
    from ..models.specs import is_spec

    base = MODELS.get(exp.model_name)  # None for a model outside the registry (e.g. a user's)
    out = []
    for name in names:
        if name == exp.model_name:
            raise SinfError(f"the chain lists the benchmarked model {name!r} itself; it is always the last network")
        if is_spec(name):
            raise SinfError(f"chain network {name!r} is a model spec, which has no registered weights; the chain "
                            "takes registry models with weights (see `sinf models`)")
        e = get_entry(name)
        if base is not None and e.dataset != base.dataset:
            raise SinfError(f"chain network {name!r} is for {e.dataset!r}, the benchmark runs on {base.dataset!r}")
        if e.protocol == "pretrained" and exp.splits.protocol == "heldout":
            raise SinfError(f"chain network {name!r} was trained on all of train, which holds this benchmark's "
                            "calibration split: its gate would be chosen on images it has seen")
        model = load_model(name).to(device).eval()
        check_model_fits_data(model, name, exp.train)
        out.append((name, model))
    return out


def _lasts(r, x_calib) -> list[dict]:
    """What may answer last in the chain: the base model (``select``) and every mode at its chosen point
    (``select+exit``, ...), each with its calibration predictions, cost per input, serving callables and
    parameters."""
    rt = r.rt
    base_cost = model_cost(r.model, r.input_shape)
    out = [{"name": SELECT, "mode": None, "pred": r.base_pred, "flops": float(base_cost.flops),
            "one": r.base_fns[1], "pool": None, "params": int(base_cost.params), "name_last": r.exp.model_name}]
    for m in MODES:
        if m not in r.chosen:
            continue
        eng, costs = r.engines[r.chosen[m]["engine"]]
        res = eng.run_pool(x_calib, rt.batch_size)
        out.append({"name": f"{SELECT}+{m}", "mode": m, "pred": res.pred.cpu(),
                    "flops": sample_flops(costs, res.mode_per_sample, res.route),
                    "one": (lambda e: lambda x: e.run(x).pred)(eng),
                    "pool": (lambda e: lambda x: e.run_pool(x, rt.batch_size).pred)(eng),
                    "params": int(costs.params()), "name_last": f"{r.exp.model_name} ({m})"})
    return out


def run_select(r) -> None:
    """Fit, sweep, screen and choose the ``select`` contender and its combinations (the last network at a
    mode's chosen point: ``select+exit``, ...); their report-split metrics and callables go into
    ``r.results`` / ``r.finals`` (after ``_report_accuracy``, before the timing)."""
    opts = r.opts
    if not opts.chain:
        return
    C, rt = r.contenders, r.rt
    bs = rt.batch_size
    nets = chain_networks(r.exp, opts.chain, rt.device)
    labels = r.calib.labels.clone()
    costs = [model_cost(m, r.input_shape) for _, m in nets]
    stages, gates = [], []
    for (name, m), c in zip(nets, costs):  # decisions on the unfolded networks, as for every mode
        lg = collect_logits(rt.ready(m), r.calib, rt=rt)
        g = fit_gate(lg, labels)
        conf, pred = g.confidence(lg)
        stages.append(Stage(name, pred, float(c.flops), conf))
        gates.append(g)
    lasts = _lasts(r, _images_on(r.calib, None, r.dev))

    def logits_of(net: nn.Module):
        def f(x):
            with rt.autocast():
                return net(x).float()
        return f

    gated = [logits_of(C.ready(m)) for _, m in nets]
    fns = {"base": r.base_fns[0]}
    variants = []
    for last in lasts:
        name = last["name"]
        chain_stages = stages + [Stage(last["name_last"], last["pred"], last["flops"])]
        points = [{**p, "mode": name} for p in sweep_chain(labels, r.base_pred, chain_stages)]
        cands = candidates_within_budget(points, r.base_top1_calib, opts.budget, opts.candidates_per_mode, r.z)
        if name in opts.pinned:  # an earlier run's choice (``bench.reproduce``)
            cands = pin_candidates(points, name, opts.pinned)
        elif SELECT in opts.pinned:  # reproducing a run from before the combinations: only ``select`` was chosen
            cands = [] if name != SELECT else pin_candidates(points, SELECT, opts.pinned)
        r.log(f"{name}: {len(points)} points over {' -> '.join(s.name for s in chain_stages)}, {len(cands)} timed")
        chains = [NetworkSelection(gated, [Gate(g.temperature, t) for g, t in zip(gates, p["thresholds"])],
                                   last["one"], last["pool"]) for p in cands]
        for i, ch in enumerate(chains):
            fns[f"{name}#{i}"] = (lambda c: lambda x: c.run_pool(rt.layout(x), bs).pred)(ch)
        variants.append((last, chain_stages, cands, chains))
    if len(fns) == 1:
        return
    tp = interleaved_throughput(fns, r.screen_pool, opts.screen_reps, 1, rt.device, r.prog)
    labels_r, clusters_r = r.report.labels.clone(), r.report.cluster_labels.clone()
    for last, chain_stages, cands, chains in variants:
        name = last["name"]
        if not cands:
            continue
        ratios = [statistics.median(paired_ratios(tp, f"{name}#{i}")) for i in range(len(cands))]
        r.screen[name] = [{**_round_point(p), "ips": round(tp[f"{name}#{i}"]["ips"], 2), "ratio_to_base": round(v, 4)}
                          for i, (p, v) in enumerate(zip(cands, ratios))]
        k = pick_fastest(cands, ratios, r.base_top1_calib, opts.budget, r.z)
        if k is None:
            continue
        chosen, chain = cands[k], chains[k]
        res = chain.run_pool(rt.layout(r.x_report), bs)
        shares = res.shares() + [0.0] * (len(chain_stages) - len(res.shares()))
        if last["mode"] is None:
            last_flops = float(last["flops"])
        else:  # the last engine's own decisions on the report images that reached it
            reached = (res.stage == len(chain_stages) - 1).to(r.x_report.device)
            last_flops = float(r.results[last["mode"]]["flops"]) if not reached.any() else _engine_flops(r, last["mode"], r.x_report[reached])
        # every network counts for the inputs that reached it: 1 - the shares answered before it
        flops = sum((1.0 - sum(shares[:j])) * s.flops for j, s in enumerate(chain_stages[:-1]))
        flops += (1.0 - sum(shares[:-1])) * last_flops
        r.results[name] = {
            "top1": round(100.0 * float((res.pred == labels_r).double().mean()), 4),
            "per_cluster": _per_cluster(res.pred, labels_r, clusters_r, r.hier.cluster_names),
            "flops": round(flops, 1), "params": int(sum(c.params for c in costs) + last["params"]),
            "networks": [s.name for s in chain_stages], "answered": [round(v, 4) for v in shares],
            "gate_temperatures": [round(g.temperature, 4) for g in gates],
            "operating_point": {**_round_point(chosen), "screen_ratio": round(ratios[k], 4)},
            "calib_top1": round(chosen["top1"], 4), "calib_flops": round(chosen["flops"], 1), "n": len(labels_r)}
        if last["mode"] is not None:
            r.results[name]["last_operating_point"] = r.results[last["mode"]]["operating_point"]
        r.finals[name] = ((lambda c: lambda x: c.run_pool(rt.layout(x), bs).pred)(chain),
                          (lambda c: lambda x: c.run(rt.layout(x)).pred)(chain))
        r.log(f"chosen {name}: thresholds {chosen['thresholds']}, calibration top-1 {chosen['top1']:.2f} % "
              f"(standard error of the difference from base {chosen['top1_se']:.2f}), {chosen['flops'] / 1e6:.1f} MFLOPs, "
              f"screened {ratios[k]:.3f}x base; report top-1 {r.results[name]['top1']:.2f} %")


def _engine_flops(r, mode: str, x: torch.Tensor) -> float:
    """Mean FLOPs per input of ``mode``'s chosen engine over the images ``x``, from its decisions."""
    eng, costs = r.engines[r.chosen[mode]["engine"]]
    res = eng.run_pool(x, r.rt.batch_size)
    return float(sample_flops(costs, res.mode_per_sample, res.route).mean())
