"""The benchmark: base vs SINF vs early exit vs the cascade vs static pruning, side by side (METHOD.md 8-11).

What it does, in order (METHOD.md section 0 says which split each step may look at):

1. **Heads** (fit split, temperatures on calibration): route heads at every swept tap (reused from a
   bundle when it has them) and early-exit heads at the same taps, trained in one loop on a cached
   subsample of the fit split and cached on disk.
2. **Precompute** (calibration split): one stem pass gives the features at every swept tap and the
   base model's predictions; per tap the router's and exit head's calibrated confidences; per tap and
   schedule (r_M, r_L) the prediction of the routed cluster's subgraph for every sample.
3. **Sweep**: every (tap, r_M, r_L, gamma, tau) point's calibration top-1 and expected FLOPs is a
   vectorised combination of those arrays (no network runs per point); Pareto front per mode.
4. **Choice**: the few lowest-cost front points within the accuracy budget are timed (throughput,
   interleaved with the base model, on calibration images) and each mode takes the FASTEST MEASURED
   point within the budget (``pick_fastest``). "Within the budget" is guarded against calibration
   noise: a point's calibration top-1 minus ``budget_z`` standard errors of its paired difference from
   the base model (``top1_se``) must stay within the budget, so the choice does not hug a budget edge
   that the report split then crosses.
5. **Static pruning**: one network pruned from the same tap with the best global (not cluster
   conditioned) score, uniform removed fraction r found by bisection (then topped up channel by
   channel) so its FLOPs match the chosen point's expected FLOPs; the score is chosen on calibration.
6. **Report** (report split): the real engines run over the whole report split (top-1, per-cluster
   accuracy, route accuracy, exit / route / fallback rates, expected FLOPs from the actual
   decisions, parameters), then latency at batch size 1 and throughput at a large batch for all five
   contenders, measured interleaved in one run.

Timing rules: ``torch.inference_mode``, device synchronised before every clock read, warm-up first,
round-robin repetitions with a rotating order so machine noise hits every contender alike, medians;
throughput ratios are the median over repetitions of PAIRED ratios (base time / contender time within
the same repetition), which cancels load that drifts slower than one repetition;
bf16 autocast, channels_last and BatchNorm folding apply to every contender alike (the base too). FLOPs are 2 x MACs as
``torch.utils.flop_counter`` counts them (see ``sinf_core.cost``).

The package, by stage: ``options`` (``BenchOptions``), ``heads`` (route and exit heads per tap),
``inputs`` (scores, statistics, the BatchNorm decision), ``precompute`` (stem features, head outputs,
routed predictions), ``sweep`` (operating points, fronts, the choice), ``costs`` (path costs, expected
FLOPs), ``static`` (the static pruning comparator), ``contenders`` (every contender readied alike),
``metrics`` (report-split metrics), ``run`` (``run_benchmark``: the stages over one ``BenchRun``) and
``text`` (the table). Every name is importable from ``sinf_core.bench``.
"""

from ..timing import interleaved_latency, interleaved_throughput, paired_ratios  # noqa: F401  (re-exported)
from .contenders import _Contenders, _images_on  # noqa: F401
from .costs import PathCosts, decision_flops, expected_flops, head_cost, sample_flops  # noqa: F401
from .heads import _cache_root, _cached_heads, _head_params, default_bench_taps, fit_bench_heads  # noqa: F401
from .inputs import _cluster_scores, _fit_stats, _global_scores, resolve_bn_samples, resolve_score  # noqa: F401
from .metrics import _per_cluster, result_metrics  # noqa: F401
from .options import (BENCH_FORMAT, BENCH_VERSION, CONTENDERS, MODES, SELECT, SELECT_COMBOS, BenchOptions, LogFn,  # noqa: F401
                      ProgressFn)
from .precompute import (_head_outputs, build_subgraphs, routed_predictions, stem_features,  # noqa: F401
                         tap_sweep_data)
from .run import BenchRun, _run, run_benchmark  # noqa: F401
from .static import StaticNet, _schedule_flops, _static_calib_top1, channel_step_flops, static_for_flops  # noqa: F401
from .sweep import (ScheduleData, TapData, _mean_over_samples, _paired_se, _point_label, _round_point,  # noqa: F401
                    candidates_within_budget, pareto_front, pick_fastest, sweep_tap, within_budget)
from .text import format_table  # noqa: F401
