"""What the Pruning and Live pages share: one configuration across pages, the benchmark's operating
points, the heads at every tap, calibration outputs, a configuration's evaluation and threshold curves,
the engine, and like-for-like timing. All computation is in ``sinf_core`` (``tuning``, ``timing``,
``engine``); this module only caches it per source and draws progress bars.

The configuration (``config``) is one dict per source in the session: score, r_M, r_L, overrides, fill,
bn, gamma, tau, tap, mode, multiple_of (``sinf_core.config`` validates it and holds its defaults). It
starts from the bundle's saved ``config.json``, else from the benchmark's chosen point of its best
mode; every page reads and writes the same dict, and Save writes it into the bundle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from sinf_core import artifacts as A
from sinf_core.config import FILLS, default_config, validate_config
from sinf_core.errors import SinfError

from . import state
from .state import Progress, Source, memo, step_key

MODE_LABELS = {"sinf": "SINF (route / fall back)", "cascade": "cascade (exit, route, fall back)",
               "exit": "early exit only"}


# ==================================================================================== bundle parts
def studio_info(src: Source) -> dict | None:
    return state.bundle_json(src, A.STUDIO)


def heads(src: Source) -> dict[str, dict[str, Any]]:
    """{"route": {tap: RouteHead}, "exit": {tap: RouteHead}}: the benchmark's heads (studio step) and
    the bundle router's / exit predictor's at their other taps."""
    from sinf_core.tuning import heads_from_tensors

    def compute() -> dict:
        out: dict[str, dict[str, Any]] = {"route": {}, "exit": {}}
        for kind, pred in (("route", state.router(src)), ("exit", state.exit_heads(src))):
            if pred is not None:
                out[kind].update({t: pred.head(t) for t in pred.taps_})
        info, t = studio_info(src), state.bundle_tensors(src, A.STUDIO_HEADS)
        if info is not None and t is not None:
            for kind, per_tap in heads_from_tensors(t, info.get("heads", {}), A.STUDIO_HEADS).items():
                out.setdefault(kind, {}).update(per_tap)
        return out

    return memo((src.key, "heads", step_key(src, "router"), step_key(src, "studio")), compute)


def head_taps(src: Source) -> list[str]:
    """Taps with a route head, in forward order (the taps a user can choose)."""
    model = state.experiment(src).model
    return sorted(heads(src)["route"], key=model.unit_index)


def operating_points(src: Source) -> dict[str, dict]:
    """{mode: the benchmark's operating point chosen on calibration} (empty without a benchmark)."""
    from sinf_core.tuning import chosen_points

    b = state.bench(src)
    return chosen_points(b) if isinstance(b, dict) else {}


def best_mode(src: Source) -> str | None:
    b = state.bench(src) or {}
    pts = operating_points(src)
    mode = b.get("best_mode") if isinstance(b, dict) else None
    return mode if mode in pts else next(iter(pts), None)


def point_config(src: Source, mode: str, base: dict | None = None) -> dict:
    """``base`` (default: the current configuration) moved to the benchmark's point of ``mode``: its
    tap, r_M, r_L, gamma, tau and the benchmark's score, fill, BatchNorm setting and channel rounding."""
    cfg = dict(base if base is not None else config(src))
    p = operating_points(src).get(mode)
    cfg["mode"] = mode
    if p is None:
        return cfg
    b = state.bench(src) or {}
    opts = b.get("options") or {}
    cfg["tap"] = p["tap"]
    if p.get("r_M") is not None:
        cfg["r_M"], cfg["r_L"] = float(p["r_M"]), float(p["r_L"])
    cfg["gamma"] = float(p["gamma"]) if p.get("gamma") is not None else 1.0
    cfg["tau"] = float(p["tau"]) if p.get("tau") is not None else 1.0
    if b.get("subgraph_score"):
        cfg["method"] = b["subgraph_score"]
    if opts.get("fill") in FILLS:
        cfg["fill"] = opts["fill"]
    if "bn_samples" in opts:
        cfg["bn"] = bool(opts["bn_samples"])
    if opts.get("multiple_of") is not None:
        cfg["multiple_of"] = int(opts["multiple_of"])
    cfg["overrides"] = {}
    return cfg


def at_point(src: Source, cfg: dict) -> bool:
    """Whether ``cfg`` is the benchmark's point of its mode."""
    mode = cfg.get("mode")
    if mode not in operating_points(src):
        return False
    ref = point_config(src, mode, cfg)
    return all(ref.get(k) == cfg.get(k) for k in ("tap", "r_M", "r_L", "gamma", "tau", "method", "overrides",
                                                  "multiple_of"))


# ==================================================================================== configuration
def _session_key(src: Source) -> tuple:
    return ("sinf_config", src.key)


def config(src: Source) -> dict:
    """The configuration of this session (see the module docstring)."""
    key = _session_key(src)
    if key not in st.session_state:
        saved = state.bundle_json(src, A.CONFIG)
        cfg = None
        if isinstance(saved, dict):
            try:
                cfg = validate_config(saved, str(Path(src.bundle) / A.CONFIG))
            except SinfError as exc:
                st.warning(f"The saved configuration is ignored: {exc}")
        if cfg is None:
            cfg = default_config()
            decided = state.bundle_json(src, A.BN)  # `sinf build` decides re-estimation on calibration
            if isinstance(decided, dict) and "use" in decided:
                cfg["bn"] = bool(decided["use"])
            mode = best_mode(src)
            if mode is not None:
                cfg = point_config(src, mode, cfg)
        taps = head_taps(src) if state.router(src) is not None or studio_info(src) else []
        if cfg.get("tap") is None or (taps and cfg["tap"] not in taps):
            cfg["tap"] = taps[-1] if taps else state.default_tap(src)
        cfg.setdefault("mode", "sinf")
        st.session_state[key] = cfg
        st.session_state[("sinf_config_version", src.key)] = 0
    return dict(st.session_state[key])


def set_config(src: Source, cfg: dict, external: bool = False) -> None:
    """Store ``cfg`` (validated). ``external``: it did not come from the widgets on screen (a reset,
    another page), so they must show it: their keys change with the version."""
    st.session_state[_session_key(src)] = validate_config(cfg, "the configuration")
    if external:
        k = ("sinf_config_version", src.key)
        st.session_state[k] = st.session_state.get(k, 0) + 1


def widget_key(src: Source, name: str) -> str:
    """A widget key that changes when the configuration is changed from outside the widget."""
    v = st.session_state.get(("sinf_config_version", src.key), 0)
    return name if not v else f"{name}_v{v}"


def save_config(src: Source, cfg: dict):
    """Write ``cfg`` as config.json into the bundle (created for this model's weights if absent); only
    the configuration step changes, so no other cached result is dropped."""
    from sinf_core.bundle import Bundle, state_dict_sha256

    exp = state.experiment(src)
    b = state.bundle(src)
    if b is None:
        b = Bundle.open_or_create(src.bundle, exp.model_name, state_dict_sha256(exp.model),
                                  {"dataset": exp.train.name, "created_by": "SINF Studio"}, exp.input_shape)
    b.put("config", {A.CONFIG: validate_config(cfg, "the configuration")})
    return b.root / A.CONFIG


def _cfg_key(cfg: dict, keys: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_key(cfg: dict) -> str:
    """A short hash of everything in ``cfg`` (what a result computed for it depends on)."""
    return _cfg_key(cfg, tuple(sorted(cfg)))


SPEC_KEYS = ("tap", "method", "r_M", "r_L", "overrides", "fill", "bn", "multiple_of")  # what a subgraph depends on


# ==================================================================================== calibration outputs
def calibration_outputs(src: Source, tap: str):
    """``CalibrationOutputs`` at ``tap``: the bundle's (studio step), else computed once with a bar."""
    from sinf_core.tuning import CalibrationOutputs, compute_calibration_outputs

    def compute():
        t = state.bundle_tensors(src, A.studio_calib_file(tap))
        if t is not None:
            return CalibrationOutputs.from_tensors(tap, t, A.studio_calib_file(tap))
        exp = state.experiment(src)
        calib = exp.calib_data()
        hd = heads(src)
        progress = Progress(f"Stem, base model and heads over the calibration split at {tap} (once)")
        try:
            return compute_calibration_outputs(exp.model, calib, tap, exp.hierarchy, hd["route"].get(tap),
                                               hd["exit"].get(tap), exp.runtime,
                                               on_batch=state.counter(progress, len(calib)))
        finally:
            progress.close()

    return memo((src.key, "calib_outputs", tap, step_key(src, "router"), step_key(src, "studio")), compute)


def costs(src: Source):
    from sinf_core.tuning import CostCache

    exp = state.experiment(src)
    return memo((src.key, "cost_cache"), lambda: CostCache(exp.model))


def bn_samples(src: Source, tap: str):
    """The fit images on which subgraph BatchNorm statistics are re-estimated, as the benchmark picked
    them (its count and seed); their stem outputs at ``tap`` are computed on first use."""
    from sinf_core.subgraph import DEFAULT_BN_SAMPLES
    from sinf_core.tuning import bn_sample_set

    info = studio_info(src) or {}
    n = int((info.get("options") or {}).get("bn_samples") or DEFAULT_BN_SAMPLES)

    def compute():
        samples = bn_sample_set(state.experiment(src), n, int(info.get("bn_seed", 0)))
        with st.spinner(f"Stem outputs of {n} fit images per cluster at {tap} (for BatchNorm re-estimation, once) ..."):
            samples.features(tap)
        return samples

    return memo((src.key, "bn_samples", tap, n, step_key(src, "studio")), compute)


def specs(src: Source, cfg: dict) -> dict:
    """One ``SubgraphSpec`` per cluster for ``cfg`` at its tap (restricted heads), once per configuration."""
    from sinf_core.subgraph import make_cluster_specs

    tap = cfg["tap"]

    def compute() -> dict:
        exp = state.experiment(src)
        h = state.hierarchy(src)
        sc = state.scores(src, cfg["method"])
        ratios = state.cluster_ratios(cfg, h)
        bn = bn_samples(src, tap) if cfg.get("bn") else None
        # about a second: one spinner message, not a bar redrawn per cluster (each redraw costs the browser)
        with st.spinner("Re-estimating the subgraphs' BatchNorm statistics on their clusters' fit images ..."
                        if bn else "Choosing the channels each cluster keeps ..."):
            built: dict = {}
            out = make_cluster_specs(exp.model, exp.model_name, tap, sc, h, float(cfg["r_M"]), float(cfg["r_L"]),
                                     cfg.get("multiple_of"), overrides=ratios,
                                     fill_stats=state.stats(src) if cfg.get("fill", "mean") == "mean" else None,
                                     bn_samples=bn, built=built)
        _BUILT.clear()  # only the latest: evaluation takes them in the same run
        _BUILT[key] = (out, built)
        return out

    key = _specs_key(src, cfg)
    return memo(key, compute)


def _specs_key(src: Source, cfg: dict) -> tuple:
    return (src.key, "specs", _cfg_key(cfg, SPEC_KEYS), step_key(src, "scores"), step_key(src, "stats"))


# The subgraphs ``specs`` built on its way (its BatchNorm pass runs each one), handed to ``evaluation``
# so it does not build them again; taken once, and only for the very specs returned.
_BUILT: dict[tuple, tuple[dict, dict]] = {}


def _take_built(src: Source, cfg: dict, specs_now: dict) -> dict | None:
    got = _BUILT.pop(_specs_key(src, cfg), None)
    return got[1] if got is not None and got[0] is specs_now else None


def _unit_reuse(src: Source, tap: str):
    """The first units' outputs on the calibration outputs at ``tap``, kept from one Apply to the next."""
    from sinf_core.subgraph import FirstUnitReuse

    return memo((src.key, "unit_reuse", tap, step_key(src, "router"), step_key(src, "studio")), FirstUnitReuse)


def evaluation(src: Source, cfg: dict) -> dict:
    """``tuning.evaluate_schedule`` of ``cfg`` on the calibration outputs at its tap (oracle accuracy
    per cluster, costs, and, unless the mode is the early exit alone, each image's routed prediction),
    once per configuration."""
    from sinf_core.tuning import evaluate_schedule

    routed = cfg.get("mode") != "exit"

    def compute() -> dict:
        exp = state.experiment(src)
        sp = specs(src, cfg)
        with st.spinner("Running the subgraphs' tails over the calibration split ..."):
            return evaluate_schedule(exp.model, sp, calibration_outputs(src, cfg["tap"]), exp.hierarchy,
                                     costs(src), float(cfg["r_M"]), float(cfg["r_L"]), exp.runtime, routed=routed,
                                     built=_take_built(src, cfg, sp), reuse=_unit_reuse(src, cfg["tap"]))

    return memo((src.key, "evaluation", _cfg_key(cfg, SPEC_KEYS), routed, step_key(src, "scores"),
                 step_key(src, "router"), step_key(src, "studio")), compute)


def curves(src: Source, cfg: dict) -> list[dict]:
    """The points along gamma and along tau through ``cfg``'s thresholds (``tuning.threshold_curves``)."""
    from sinf_core.tuning import threshold_curves

    def compute() -> list[dict]:
        hd = heads(src)
        tap = cfg["tap"]
        ev = evaluation(src, cfg) if tap in hd["route"] and cfg.get("mode") != "exit" else None
        return threshold_curves(calibration_outputs(src, tap), costs(src), hd["route"].get(tap), hd["exit"].get(tap),
                                None if ev is None else ev["schedule"], float(cfg["gamma"]), float(cfg["tau"]))

    return memo((src.key, "curves", _cfg_key(cfg, SPEC_KEYS + ("gamma", "tau", "mode")), step_key(src, "router"),
                 step_key(src, "studio")), compute)


def tap_profile(src: Source, tap: str) -> dict:
    """Where the work lies around ``tap``: the share of the base model's FLOPs and of its measured time
    (BatchNorm folded, channels_last, a batch of 256, median of interleaved runs) after the tap."""
    from sinf_core.timing import interleaved_throughput

    def compute() -> dict:
        exp = state.experiment(src)
        stem, tail, _ = costs(src).tap(tap)
        net = inference_base(src)
        t = exp.model.unit_index(tap)
        x = prepare_images(state.experiment(src).calib_data().images[:256], src)
        tp = interleaved_throughput({"full": lambda z: net(z), "stem": lambda z: net.forward_stem(z, t)}, x, reps=5,
                                    device=exp.device)
        full, front = tp["full"]["median_s"], tp["stem"]["median_s"]
        return {"flops_after": tail.flops / (stem.flops + tail.flops), "time_after": max(0.0, 1.0 - front / full),
                "stem_flops": stem.flops, "tail_flops": tail.flops, "full_ms": 1000 * full, "stem_ms": 1000 * front}

    return memo((src.key, "tap_profile", tap), compute)


# ==================================================================================== inference
def prepare_images(images_u8: torch.Tensor, src: Source) -> torch.Tensor:
    """uint8 images -> what the base model takes (on the runtime's device, normalised, in its layout):
    the same pre-processing the engine does inside ``run``."""
    from sinf_core.data import normalise

    exp = state.experiment(src)
    return exp.runtime.inputs(normalise(images_u8.to(exp.device), exp.train.mean, exp.train.std))


def _ready(src: Source, module: torch.nn.Module) -> torch.nn.Module:
    """``module`` as the app runs it: on the experiment's runtime, BatchNorm folded (``Runtime.ready``,
    the helper that readies the benchmark's contenders too)."""
    return state.experiment(src).runtime.ready(module, fold_bn=True)


def inference_base(src: Source) -> torch.nn.Module:
    """The base model as the Live page runs and times it: readied like SINF's modules and the
    benchmark's (``_ready``)."""
    return memo((src.key, "inference_base"), lambda: _ready(src, state.experiment(src).model))


def base_predict(src: Source):
    """uint8 images -> (logits) of the base model, pre-processing included (as the engine's ``run``)."""
    net = inference_base(src)
    return lambda x: net(prepare_images(x, src))


def subgraph_modules(src: Source, cfg: dict) -> dict:
    """{cluster index: Subgraph} for ``cfg``, folded and channels_last (built once per configuration)."""
    from sinf_core.subgraph import build_subgraph

    def compute() -> dict:
        exp = state.experiment(src)
        with st.spinner("Building the pruned subgraphs ..."):
            return {m: _ready(src, build_subgraph(exp.model, s)) for m, s in specs(src, cfg).items()}

    return memo((src.key, "subgraphs", _cfg_key(cfg, SPEC_KEYS), step_key(src, "scores")), compute)


def engine(src: Source, cfg: dict):
    """A ``SemanticInference`` for ``cfg`` (mode, tap, thresholds) with the heads at its tap and its
    subgraphs, readied like the base model; None without a route head at the tap."""
    from sinf_core.engine import SemanticInference

    mode, tap = cfg.get("mode") or "sinf", cfg["tap"]
    hd = heads(src)
    route, exit_head = hd["route"].get(tap), hd["exit"].get(tap)
    if route is None and mode != "exit":
        return None
    if mode in ("exit", "cascade") and exit_head is None:
        raise SinfError(f"mode {mode!r} needs an exit head at {tap}; the bundle has exit heads at "
                        f"{', '.join(hd['exit']) or 'no tap'}. Choose another tap or run `{state.build_command(src)}`.")

    def compute():
        exp = state.experiment(src)
        subs = subgraph_modules(src, cfg) if mode != "exit" else None
        return SemanticInference(inference_base(src), None if mode == "exit" else memo(
            (src.key, "ready_head", "route", tap, step_key(src, "studio")), lambda: _ready(src, route)), subs,
            None if mode == "sinf" else memo((src.key, "ready_head", "exit", tap, step_key(src, "studio")),
                                             lambda: _ready(src, exit_head)),
            tap=tap, mode=mode, gamma=float(cfg["gamma"]), tau=float(cfg["tau"]), rt=exp.runtime,
            input_shape=exp.input_shape, mean=exp.train.mean, std=exp.train.std, keep_logits=True)

    # one engine per thresholds too (its modules are shared): a process serves every browser session, and
    # an engine whose thresholds were changed in place by one session would answer another's with them
    return memo((src.key, "engine", mode, _cfg_key(cfg, SPEC_KEYS + ("gamma", "tau")), step_key(src, "studio")),
                compute)


def time_one_image(src: Source, base, sinf, x_u8: torch.Tensor, calls: int = 30) -> dict:
    """Batch-of-one latency of ``base`` and of ``sinf`` (None: the base alone) on the same image,
    interleaved, both with pre-processing: {"base": {...}, "sinf": {...}} with median / quartiles (ms)
    and the paired ratio."""
    from sinf_core.timing import interleaved_latency, spread

    fns = {"base": base}
    if sinf is not None:
        fns["sinf"] = sinf
    lat = interleaved_latency(fns, x_u8, calls=calls, warmup=3, device=state.experiment(src).device)
    if sinf is not None:
        lat["ratio"] = spread([a / b for a, b in zip(lat["base"]["all_ms"], lat["sinf"]["all_ms"])])
    return lat


__all__ = ["MODE_LABELS", "studio_info", "heads", "head_taps", "operating_points", "best_mode",
           "point_config", "at_point", "config", "config_key", "set_config", "widget_key", "save_config", "SPEC_KEYS",
           "calibration_outputs", "costs", "bn_samples", "specs", "evaluation", "curves", "tap_profile",
           "prepare_images", "inference_base", "base_predict", "subgraph_modules", "engine", "time_one_image"]
