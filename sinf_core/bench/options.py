"""What the benchmark can be told (``BenchOptions``) and the names of its modes and contenders."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from ..config import DEFAULT_FILL
from ..errors import SinfError
from ..subgraph.batchnorm import check_bn_samples
from ..subgraph.spec import check_fill

MODES = ("sinf", "exit", "cascade")
CONTENDERS = ("base",) + MODES + ("static",)
SELECT = "select"  # network selection (``bench.select``), a contender when the options name a chain
# network selection whose last network runs a mode at that mode's chosen point (``select+exit``, ...)
SELECT_COMBOS = tuple(f"{SELECT}+{m}" for m in MODES)
BENCH_FORMAT = "sinf-bench"
BENCH_VERSION = 1

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
LogFn = Callable[[str], None]
# the Runtime fields a mapping of benchmark options may set for the run, and the result records with the options
RUNTIME_KEYS = ("bf16", "channels_last", "batch_size", "threads")


def runtime_overrides(options: Mapping[str, Any] | None) -> dict:
    """The Runtime fields a mapping of benchmark options sets (None values: not set)."""
    return {k: options[k] for k in RUNTIME_KEYS if isinstance(options, Mapping) and options.get(k) is not None}


def recorded_options(opts: "BenchOptions", rt) -> dict:
    """The options a result records (and a bundle keys its benchmark step on): the benchmark's and how
    it ran."""
    return {**opts.to_json(), **{k: rt.to_json()[k] for k in RUNTIME_KEYS}}


@dataclass
class BenchOptions:
    """Everything the benchmark can be told. Defaults fit ResNet-56 / CIFAR-100 on 2 CPU cores.

    ``budget``: accuracy budget in points of calibration top-1 below the base model's. ``budget_z``: a point is
    within the budget when its calibration top-1 minus ``budget_z`` standard errors of its paired difference
    from the base model is (1.645: one-sided 95 %; 0: the plain estimate). ``target_ratio``: the
    throughput ratio to base the best mode is checked against (``target.met`` in the result).
    ``taps``: swept taps (None: ``default_bench_taps``, on the bundle router's taps when given).
    ``schedules``: (r_M, r_L) pairs swept for the subgraphs; ``multiple_of``: kept counts rounded up
    to this multiple (None: exact). ``gammas`` / ``taus``: swept thresholds (1.0 = never route / exit).
    ``score``: the cluster-conditioned filter score of the subgraphs ('auto': the DCS variant with the
    best calibration accuracy in the bundle's oracle grid, else 'dcs'). ``fill``: what replaces a removed
    channel, 'mean' (its mean activation on the fit split: per cluster for the subgraphs, over all
    classes for the static network; mean replacement) or 'zero'. ``bn_samples``: fit images per cluster
    on which each subgraph's BatchNorm statistics are re-estimated (``estimate_bn_stats``; the static
    network uses all clusters' samples); 0 keeps the base model's; None: the bundle's decision (its
    ``bn.json``, made on calibration by ``sinf build``), else ``DEFAULT_BN_SAMPLES``. ``static_scores``:
    global scores tried for the static network (the best on calibration wins); ``static_match``: whose expected
    FLOPs the static network matches ('best' = the fastest chosen mode, or a mode name).
    ``head_fit_samples`` / ``head_epochs`` / ``exit_hidden``: head training (fit split subsample). The
    defaults (50 000 images, 8 epochs) matter: on ResNet-56 10 000 x 4 gave exit heads of 31 / 37 / 49 %
    calibration top-1 at layer3.0 / 3.2 / 3.4, and 50 000 x 8 gave 54 / 61 / 67 %. ``head_distill``: weight of
    distillation from the base model in the heads' loss (``TapHeads.distill``); on VGG16-BN at features.24,
    0.9 let 87 % of calibration images exit within 1.5 points of the base, against 78 % with labels only.
    ``candidates_per_mode``: front points timed per mode; ``screen_pool`` / ``screen_reps``: their
    throughput screening on calibration images. ``pool`` / ``throughput_reps``: the
    final throughput run (report images); ``latency_calls`` / ``latency_warmup``: batch-size-1 calls.
    How the contenders run (device, bf16, channels-last layout, the batch size of the throughput runs, CPU
    threads) is the experiment's ``Runtime``, the same for every contender; a mapping of options may
    override its fields (``RUNTIME_KEYS``), and the result records them with the options. ``fold_bn``: every
    contender (base, static and the engines' model, heads and subgraphs) runs with its BatchNorms
    folded into the preceding convs (``fusion.fold_batchnorm``); decisions are made unfolded.
    ``cache``: keep fitted heads under ``cache_dir`` (default $SINF_CACHE_DIR or ~/.cache/sinf) / bench.
    ``score_options``: options of the filter scores (as in ``compute_all_scores``).
    ``chain``: registry names of cheaper networks run before this one, cheapest first (network selection,
    the ``select`` contender: each answers what its calibrated confidence is sure of); () = no ``select``.
    ``clusters``: what a cluster is: 'hierarchy' (the data set's own, CIFAR-100's 20 superclasses) or
    'ward:K' (K data-driven clusters, Ward on the fit split's class prototypes, ``clusters.ward_assignment``;
    fewer, broader clusters route reliably at earlier taps). With other clusters than the data set's, a
    bundle's router, stored heads and scores (made for its clusters) are not used: they are fitted anew.
    ``pinned``: {mode: operating point} served instead of the timing screen's choice among the mode's
    candidates, and {"static": mode} for the static network's match (``bench.reproduce``: an earlier
    run's choices, so that its accuracies can be compared on another machine).
    """

    budget: float = 2.0
    budget_z: float = 1.645
    target_ratio: float = 1.15
    taps: tuple[str, ...] | None = None
    schedules: tuple[tuple[float, float], ...] = ((0.05, 0.3), (0.25, 0.5), (0.25, 0.75), (0.5, 0.9))
    multiple_of: int | None = 8
    gammas: tuple[float, ...] = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)
    taus: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)
    score: str = "auto"
    fill: str = DEFAULT_FILL
    bn_samples: int | None = None
    static_scores: tuple[str, ...] = ("l1", "bn_gamma", "mean_act", "taylor")
    static_match: str = "best"
    head_fit_samples: int = 50000
    head_epochs: int = 8
    head_distill: float = 0.9
    exit_hidden: int = 64
    route_target: float = 0.75
    candidates_per_mode: int = 3
    screen_pool: int = 512
    screen_reps: int = 4
    pool: int = 2048
    throughput_reps: int = 6
    latency_calls: int = 200
    latency_warmup: int = 20
    fold_bn: bool = True
    cache: bool = True
    cache_dir: str | None = None
    score_options: dict = field(default_factory=dict)
    seed: int = 0
    chain: tuple[str, ...] = ()
    clusters: str = "hierarchy"
    pinned: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "BenchOptions":
        """The options of a mapping (a command's, a bundle's, a recorded result's); its runtime fields
        (``RUNTIME_KEYS``) are the runtime's: see ``runtime_overrides``."""
        d = {k: v for k, v in dict(d or {}).items() if k not in RUNTIME_KEYS}
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise SinfError(f"unknown benchmark option(s) {bad}; known: {sorted(known)}")
        for k in ("taps", "gammas", "taus", "static_scores", "chain"):
            if isinstance(d.get(k), (list, tuple)):
                d[k] = tuple(d[k])
        if d.get("schedules") is not None:
            d["schedules"] = tuple(tuple(s) for s in d["schedules"])
        return cls(**d)

    def to_json(self) -> dict:
        d = asdict(self)
        if d["clusters"] == "hierarchy":  # the default is left out, so results and bundle keys of before stay the same
            del d["clusters"]
        return d

    def validate(self) -> "BenchOptions":
        """Raise SinfError for any value the benchmark cannot use; returns self."""
        try:
            b = float(self.budget)
        except (TypeError, ValueError):
            raise SinfError(f"the accuracy budget must be a number of points, got {self.budget!r}") from None
        if not math.isfinite(b) or b < 0:
            raise SinfError(f"the accuracy budget must be a finite number of points >= 0, got {self.budget}")
        if isinstance(self.budget_z, bool) or not isinstance(self.budget_z, (int, float)) \
                or not 0 <= float(self.budget_z) < math.inf:
            raise SinfError(f"budget_z must be a number of standard errors >= 0, got {self.budget_z!r}")
        if not isinstance(self.target_ratio, (int, float)) or not 0 < float(self.target_ratio) < math.inf:
            raise SinfError(f"the target throughput ratio must be a positive number, got {self.target_ratio!r}")
        for name in ("gammas", "taus"):
            vals = getattr(self, name)
            if not vals:
                raise SinfError(f"{name} must list at least one threshold")
            for v in vals:
                if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                    raise SinfError(f"{name} must lie in [0, 1], got {v!r}")
        if not self.schedules:
            raise SinfError("give at least one (r_M, r_L) schedule")
        for s in self.schedules:
            if len(s) != 2 or not all(isinstance(v, (int, float)) and 0.0 <= float(v) < 1.0 for v in s):
                raise SinfError(f"a schedule is (r_M, r_L) with removed fractions in [0, 1), got {s!r}")
        if self.multiple_of is not None and int(self.multiple_of) < 1:
            raise SinfError(f"multiple_of must be a positive integer or None, got {self.multiple_of}")
        positive = ("head_fit_samples", "head_epochs", "exit_hidden", "candidates_per_mode", "screen_pool",
                    "screen_reps", "pool", "throughput_reps", "latency_calls")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SinfError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.latency_warmup, int) or self.latency_warmup < 0:
            raise SinfError(f"latency_warmup must be an integer >= 0, got {self.latency_warmup!r}")
        if isinstance(self.head_distill, bool) or not isinstance(self.head_distill, (int, float)) \
                or not 0.0 <= float(self.head_distill) <= 1.0:
            raise SinfError(f"head_distill is a weight in [0, 1], got {self.head_distill!r}")
        if self.static_match not in ("best",) + MODES:
            raise SinfError(f"static_match must be 'best' or one of {MODES}, got {self.static_match!r}")
        if not 0.0 <= float(self.route_target) <= 1.0:
            raise SinfError(f"route_target must be in [0, 1], got {self.route_target}")
        from ..scores import get_score

        if self.score != "auto":
            get_score(self.score)
        check_fill(self.fill)
        if self.bn_samples is not None:
            check_bn_samples(self.bn_samples)
        for s in self.static_scores:
            get_score(s)
        if not self.static_scores:
            raise SinfError("give at least one global score for the static network")
        parse_clusters(self.clusters)
        pinnable = MODES + (SELECT, "static") + SELECT_COMBOS
        if not isinstance(self.pinned, Mapping) or set(self.pinned) - set(pinnable):
            raise SinfError(f"pinned takes operating points of {list(pinnable)}, got {self.pinned!r}")
        if "static" in self.pinned and self.pinned["static"] not in MODES:
            raise SinfError(f"the static network matches one of {MODES}, not {self.pinned['static']!r}")
        if isinstance(self.chain, str) or not all(isinstance(n, str) and n for n in self.chain):
            raise SinfError(f"chain must list registry model names, cheapest first, got {self.chain!r}")
        return self


def parse_clusters(text: str) -> tuple[str, int | None]:
    """``clusters`` ('hierarchy' or 'ward:K') as (method, K); a clear error for anything else."""
    if text == "hierarchy":
        return "hierarchy", None
    method, _, k = str(text).partition(":")
    if method == "ward" and k.isdigit() and int(k) >= 2:
        return "ward", int(k)
    raise SinfError(f"clusters is 'hierarchy' (the data set's own) or 'ward:K' with K >= 2 (data-driven), got {text!r}")
