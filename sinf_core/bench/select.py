"""The network-selection contender ``select`` (``selection``): the cheaper networks of
``BenchOptions.chain`` run first, cheapest first, each gated by its calibrated confidence; the base model
answers what reaches it. As for every mode, the gates' temperatures are fitted and the thresholds swept on
calibration, the cheapest points within the guarded budget are timed against the base on calibration
images, and the fastest measured one is served; costs count every network that ran."""

from __future__ import annotations

import statistics

from torch import nn

from ..cost import model_cost
from ..errors import SinfError
from ..evaluate import collect_logits
from ..selection import Gate, NetworkSelection, Stage, fit_gate, sweep_chain
from ..timing import interleaved_throughput, paired_ratios
from .metrics import _per_cluster
from .options import SELECT
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


def run_select(r) -> None:
    """Fit, sweep, screen and choose the ``select`` contender; its report-split metrics and callables go
    into ``r.results`` / ``r.finals`` (after ``_report_accuracy``, before the timing)."""
    opts = r.opts
    if not opts.chain:
        return
    C, rt = r.contenders, r.rt
    bs = rt.batch_size
    nets = chain_networks(r.exp, opts.chain, rt.device)
    labels = r.calib.labels.clone()
    costs = [model_cost(m, r.input_shape) for _, m in nets]
    base_cost = model_cost(r.model, r.input_shape)
    stages, gates = [], []
    for (name, m), c in zip(nets, costs):  # decisions on the unfolded networks, as for every mode
        lg = collect_logits(rt.ready(m), r.calib, rt=rt)
        g = fit_gate(lg, labels)
        conf, pred = g.confidence(lg)
        stages.append(Stage(name, pred, float(c.flops), conf))
        gates.append(g)
    stages.append(Stage(r.exp.model_name, r.base_pred, float(base_cost.flops)))
    points = sweep_chain(labels, r.base_pred, stages)
    cands = candidates_within_budget(points, r.base_top1_calib, opts.budget, opts.candidates_per_mode, r.z)
    if SELECT in opts.pinned:  # an earlier run's choice (``bench.reproduce``)
        cands = pin_candidates(points, SELECT, opts.pinned)
    r.log(f"select: {len(points)} points over {' -> '.join(s.name for s in stages)}, {len(cands)} timed")
    if not cands:
        return
    def logits_of(net: nn.Module):
        def f(x):
            with rt.autocast():
                return net(x).float()
        return f

    gated = [logits_of(C.ready(m)) for _, m in nets]
    last = r.base_fns[1]  # the base model as every contender runs it: argmax of one batch

    def chain_of(p: dict) -> NetworkSelection:
        return NetworkSelection(gated, [Gate(g.temperature, t) for g, t in zip(gates, p["thresholds"])], last)

    chains = [chain_of(p) for p in cands]

    def pool_fn(ch):
        return lambda x: ch.run_pool(rt.layout(x), bs).pred

    fns = {"base": r.base_fns[0], **{f"{SELECT}#{i}": pool_fn(ch) for i, ch in enumerate(chains)}}
    tp = interleaved_throughput(fns, r.screen_pool, opts.screen_reps, 1, rt.device, r.prog)
    ratios = [statistics.median(paired_ratios(tp, f"{SELECT}#{i}")) for i in range(len(cands))]
    r.screen[SELECT] = [{**_round_point(p), "ips": round(tp[f"{SELECT}#{i}"]["ips"], 2), "ratio_to_base": round(v, 4)}
                        for i, (p, v) in enumerate(zip(cands, ratios))]
    k = pick_fastest(cands, ratios, r.base_top1_calib, opts.budget, r.z)
    if k is None:
        return
    chosen, chain = cands[k], chains[k]
    labels_r, clusters_r = r.report.labels.clone(), r.report.cluster_labels.clone()
    res = chain.run_pool(rt.layout(r.x_report), bs)
    shares = res.shares() + [0.0] * (len(stages) - len(res.shares()))
    # every network counts for the inputs that reached it: 1 - the shares answered before it
    flops = sum((1.0 - sum(shares[:k])) * s.flops for k, s in enumerate(stages))
    r.results[SELECT] = {
        "top1": round(100.0 * float((res.pred == labels_r).double().mean()), 4),
        "per_cluster": _per_cluster(res.pred, labels_r, clusters_r, r.hier.cluster_names),
        "flops": round(flops, 1), "params": int(sum(c.params for c in costs) + base_cost.params),
        "networks": [s.name for s in stages], "answered": [round(v, 4) for v in shares],
        "gate_temperatures": [round(g.temperature, 4) for g in gates],
        "operating_point": {**_round_point(chosen), "screen_ratio": round(ratios[k], 4)},
        "calib_top1": round(chosen["top1"], 4), "calib_flops": round(chosen["flops"], 1), "n": len(labels_r)}
    r.finals[SELECT] = (pool_fn(chain), lambda x: chain.run(rt.layout(x)).pred)
    r.log(f"chosen select: thresholds {chosen['thresholds']}, calibration top-1 {chosen['top1']:.2f} % "
          f"(standard error of the difference from base {chosen['top1_se']:.2f}), {chosen['flops'] / 1e6:.1f} MFLOPs, "
          f"screened {ratios[k]:.3f}x base; report top-1 {r.results[SELECT]['top1']:.2f} %")
