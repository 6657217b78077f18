"""The benchmark's route and early-exit heads at every swept tap: reused from a bundle, from the disk
cache, or trained in one loop and cached."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..artifacts import CACHE_BENCH, EXIT, HEADS_META, ROUTER, STUDIO, STUDIO_HEADS, model_cache_folder
from ..cost import model_cost, stem_cost
from ..errors import SinfError
from ..io import cache_dir
from ..models import SinfModel
from ..models.base import DEFAULT_INPUT_SHAPE
from ..router import ExitPredictor, RouteHead, RoutePredictor, TapHeads, default_taps, fit_heads
from .options import BenchOptions, LogFn, ProgressFn


def default_bench_taps(model: SinfModel, candidates: Sequence[str] | None = None,
                       input_shape: Sequence[int] | None = None, low: float = 0.6, high: float = 0.95) -> list[str]:
    """The taps worth sweeping: among ``candidates`` (default ``default_taps(model)``), those whose stem
    holds between ``low`` and ``high`` of the model's FLOPs. Earlier taps give heads too weak to exit or
    route confidently (ResNet-56 layer2.x exit heads: ~21 % top-1) and cost the most to train; later
    ones leave too little to save. Falls back to all candidates when none qualifies."""
    cands = list(candidates) if candidates else default_taps(model)
    total = model_cost(model, input_shape).flops
    keep = [t for t in cands if low <= stem_cost(model, t, input_shape).flops / total <= high]
    return keep or cands


def _cache_root(options: BenchOptions) -> Path:
    return cache_dir(options.cache_dir) / CACHE_BENCH


def _head_params(options: BenchOptions) -> dict:
    return {"max_fit_samples": options.head_fit_samples, "epochs": options.head_epochs,
            "accuracy_target": options.route_target, "random_state": options.seed, "distill": options.head_distill}


def _cached_heads(folder: Path, key: str) -> list[tuple[Path, dict]]:
    """(folder, meta) of every cached head set of this parameter ``key`` under ``folder``."""
    import json

    out = []
    for d in sorted(folder.glob(f"heads-{key}-*")):
        try:
            meta = json.loads((d / HEADS_META).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("key") == key:
            out.append((d, meta))
    return out


def heads_to_tensors(heads: Mapping[str, Mapping[str, RouteHead]]) -> tuple[dict[str, torch.Tensor], dict]:
    """{kind: {tap: head}} -> (flat tensors ``kind::tap::param``, their shapes as JSON)."""
    tensors, shapes = {}, {}
    for kind, per_tap in heads.items():
        for tap, head in per_tap.items():
            for k, v in head.state_dict().items():
                tensors[f"{kind}::{tap}::{k}"] = v.detach().to("cpu", copy=True).contiguous()
            shapes.setdefault(kind, {})[tap] = {"in_channels": head.in_channels, "num_outputs": head.num_outputs,
                                                "hidden": head.hidden, "temperature": float(head.temperature)}
    return tensors, shapes


def heads_from_tensors(tensors: Mapping[str, torch.Tensor], shapes: Mapping, where: str) -> dict[str, dict[str, RouteHead]]:
    out: dict[str, dict[str, RouteHead]] = {}
    try:
        for kind, per_tap in shapes.items():
            for tap, sh in per_tap.items():
                head = RouteHead(int(sh["in_channels"]), int(sh["num_outputs"]), int(sh["hidden"]))
                prefix = f"{kind}::{tap}::"
                head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
                out.setdefault(str(kind), {})[str(tap)] = head.eval()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SinfError(f"{where} does not hold valid heads ({exc}); rebuild the bundle's studio step") from exc
    return out


class _StoredHeads:
    """Heads a bundle stores (its studio step's copy of the benchmark's heads) as a source like a TapHeads."""

    def __init__(self, heads: Mapping[str, RouteHead], accuracy: Mapping, temperature: Mapping):
        self.heads_, self.calib_accuracy_, self.temperature_ = dict(heads), dict(accuracy), dict(temperature)

    def head(self, tap: str) -> RouteHead:
        return self.heads_[tap]


def stored_bench_heads(bundle, params: Mapping, exit_hidden: int) -> tuple[_StoredHeads, _StoredHeads] | None:
    """(route, exit) heads ``bundle`` stores from its benchmark (the studio step), when they were trained
    with these parameters (``head_summary.params``); else None. A shipped bundle's benchmark thus runs on
    the heads it was measured with, on any machine, without training them again."""
    if bundle is None or not bundle.has("studio"):
        return None
    info = bundle.json(STUDIO)
    summary = info.get("head_summary") or {}
    if summary.get("params") != {**params, "exit_hidden": exit_hidden}:
        return None
    heads = heads_from_tensors(bundle.tensors(STUDIO_HEADS), info.get("heads", {}), STUDIO_HEADS)
    route, exit_ = (_StoredHeads(heads.get(k, {}), summary.get(f"{k}_calib_accuracy", {}),
                                 summary.get(f"{k}_temperature", {})) for k in ("route", "exit"))
    return route, exit_


def fit_bench_heads(
    exp,
    taps: Sequence[str],
    options: BenchOptions,
    router: RoutePredictor | None = None,
    on_progress: ProgressFn | None = None,
    log: LogFn = lambda s: None,
    bundle=None,
) -> tuple[dict[str, RouteHead], dict[str, RouteHead], dict]:
    """Route and exit heads at every tap of ``taps``: route heads from ``router`` where it has them
    (e.g. a bundle's), the others and every exit head taken from ``bundle``'s stored benchmark heads
    (``stored_bench_heads``) or from the on-disk cache when a head of the same training parameters
    exists for that tap, and the rest trained in one loop (fit split subsample, temperatures on
    calibration) and cached. Returns ({tap: route head}, {tap: exit head},
    summary with the calibration accuracy of each)."""
    from ..bundle import sha256_json, state_dict_sha256

    model = exp.model.eval()
    sha = state_dict_sha256(model)
    params = _head_params(options)
    key = sha256_json({"model": sha, "params": params, "exit_hidden": options.exit_hidden,
                       "splits": exp.splits.summary(), "n_train": len(exp.train),
                       "hierarchy": exp.hierarchy.to_json(),
                       # the image size only when not the default one: the keys of 32x32 runs stay those of before
                       **({} if exp.input_shape == DEFAULT_INPUT_SHAPE
                          else {"input_shape": list(exp.input_shape)})})[:16]
    root = _cache_root(options) / model_cache_folder(exp.model_name, sha)
    need_route = [t for t in taps if router is None or t not in router.heads_]
    route_src: dict[str, TapHeads] = {t: router for t in taps if t not in need_route}
    exit_src: dict[str, TapHeads] = {}
    stored = stored_bench_heads(bundle, params, options.exit_hidden)
    if stored is not None:
        exit_src.update({t: stored[1] for t in taps if t in stored[1].heads_})
        route_src.update({t: stored[0] for t in need_route if t in stored[0].heads_})
    from_bundle = {"exit": sorted(exit_src, key=taps.index), "route": [t for t in need_route if t in route_src]}
    if options.cache and root.is_dir():
        for folder, meta in _cached_heads(root, key):
            try:
                if any(t in meta.get("exit_taps", []) and t not in exit_src for t in taps):
                    ep = ExitPredictor.load(folder, EXIT)
                    exit_src.update({t: ep for t in taps if t in ep.heads_ and t not in exit_src})
                if any(t in meta.get("route_taps", []) and t not in route_src for t in need_route):
                    rp = RoutePredictor.load(folder, ROUTER)
                    route_src.update({t: rp for t in need_route if t in rp.heads_ and t not in route_src})
            except SinfError as exc:
                log(f"heads: ignoring unusable cache {folder} ({exc})")
    todo_exit = [t for t in taps if t not in exit_src]
    todo_route = [t for t in need_route if t not in route_src]
    if todo_exit or todo_route:
        t0 = time.perf_counter()
        preds: list[TapHeads] = []
        if todo_exit:
            preds.append(ExitPredictor(taps=todo_exit, hidden=options.exit_hidden, **params))
        if todo_route:
            preds.append(RoutePredictor(taps=todo_route, **params))
        fit_heads(preds, model, exp.fit_data(), exp.calib_data(), exp.runtime, on_progress)
        for p in preds:
            (exit_src if isinstance(p, ExitPredictor) else route_src).update({t: p for t in p.taps_})
        log(f"heads: fitted {len(todo_exit)} exit + {len(todo_route)} route heads in {time.perf_counter() - t0:.0f} s")
        if options.cache:
            folder = root / f"heads-{key}-{sha256_json([todo_exit, todo_route])[:8]}"
            folder.mkdir(parents=True, exist_ok=True)
            for p in preds:
                p.save(folder, EXIT if isinstance(p, ExitPredictor) else ROUTER)
            from ..io import write_json

            write_json(folder / HEADS_META, {"key": key, "exit_taps": todo_exit, "route_taps": todo_route,
                                              "params": params, "exit_hidden": options.exit_hidden})
    elif from_bundle["exit"] or from_bundle["route"]:
        log(f"heads: the bundle's benchmark heads (exit at {', '.join(from_bundle['exit']) or 'no tap'}, route at "
            f"{', '.join(from_bundle['route']) or 'no tap'}); the rest from the router or the cache under {root}")
    else:
        log(f"heads: all cached under {root}")
    route_heads = {t: route_src[t].head(t) for t in taps}
    exit_heads = {t: exit_src[t].head(t) for t in taps}
    summary = {"route_calib_accuracy": {t: route_src[t].calib_accuracy_[t] for t in taps},
               "exit_calib_accuracy": {t: exit_src[t].calib_accuracy_[t] for t in taps},
               "route_temperature": {t: route_src[t].temperature_[t] for t in taps},
               "exit_temperature": {t: exit_src[t].temperature_[t] for t in taps},
               "route_from_bundle": [t for t in taps if t not in need_route],
               "stored_in_bundle": from_bundle,
               "trained_now": {"exit": todo_exit, "route": todo_route},
               "params": {**params, "exit_hidden": options.exit_hidden},
               "cache": str(root) if options.cache else None}
    return route_heads, exit_heads, summary
