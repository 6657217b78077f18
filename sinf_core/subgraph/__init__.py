"""Per-cluster subgraphs: the retention schedule, kept-index specs, and physical slicing (METHOD.md 5-6).

A subgraph is a real, smaller copy of the units after the tap plus the head: the kept output channels
of each prunable conv, its bias and BN parameters/statistics, and the consumer's input channels are
sliced out (VGG: the next conv, or the classifier's first linear layer after the last conv; ResNet:
conv2 of a BasicBlock; conv2 / conv3 of a Bottleneck). The residual stream stays intact. The result
is made of plain dense ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` modules (no masks), so it
runs faster with ordinary kernels and works with ``channels_last`` and bf16 autocast.

A subgraph is stored as data: the base model's name (registered, or a spec), the tap, the kept channel
indices per layer and the head's classes (JSON). ``build_subgraph`` rebuilds the modules from the base
model with a pure function; ``save_subgraph_weights`` can additionally store the sliced tensors (safetensors).
Nothing is ever pickled.

The package, imports pointing one way (each module imports only those above it):

- ``spec``: ``SubgraphSpec`` (plain data), its validation against a base model, the BatchNorms after a
  tap, the spec file (``SPECS_FORMAT``).
- ``reuse``: ``FirstUnitReuse``, the first unit's outputs kept across a run of configurations.
- ``slicing``: ``build_subgraph`` -> ``Subgraph``, mean fill, the sliced tensors' file.
- ``batchnorm``: BatchNorm re-estimation (``estimate_bn_stats``, ``BatchNormSamples``,
  ``DEFAULT_BN_SAMPLES``).
- ``schedule``: the retention schedule, kept indices, ``make_cluster_specs``.
- ``evaluate``: ``evaluate_cluster_subgraphs``, ``compare_tail_speed``.

Everything is re-exported here, so ``from sinf_core.subgraph import X`` works for every public name.
"""

from .batchnorm import (
    DEFAULT_BN_SAMPLES, BatchNormSamples, check_bn_samples, estimate_bn_stats, estimate_bn_stats_built,
    unpruned_batch_statistics,
)
from .reuse import FirstUnitReuse
from .evaluate import compare_tail_speed, evaluate_cluster_subgraphs, run_tail_fn
from .schedule import (
    first_pruned_index, keep_indices, kept_count, make_cluster_specs, model_schedule, removed_fractions,
    retention_schedule,
)
from .slicing import Subgraph, build_subgraph, load_subgraph_weights, save_subgraph_weights
from .spec import (
    FILLS, SPECS_FORMAT, SPECS_VERSION, SubgraphSpec, check_fill, load_subgraph_specs, save_subgraphs,
    tail_batchnorm_sizes, tail_batchnorms, validate_spec,
)

__all__ = [
    "BatchNormSamples", "DEFAULT_BN_SAMPLES", "FILLS", "FirstUnitReuse", "SPECS_FORMAT", "SPECS_VERSION", "Subgraph", "SubgraphSpec",
    "build_subgraph", "check_bn_samples", "check_fill", "compare_tail_speed", "estimate_bn_stats",
    "estimate_bn_stats_built", "evaluate_cluster_subgraphs", "first_pruned_index", "keep_indices", "kept_count",
    "load_subgraph_specs", "load_subgraph_weights", "make_cluster_specs", "model_schedule", "removed_fractions",
    "retention_schedule", "run_tail_fn", "save_subgraph_weights", "save_subgraphs", "tail_batchnorm_sizes",
    "tail_batchnorms", "unpruned_batch_statistics", "validate_spec",
]
