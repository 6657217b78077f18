"""One import for what the pages load: the names of ``session``, ``progress``, ``downloads``, ``loaders`` and
``uploads``, under their old address (``from app import state``; ``state.experiment(src)``).

The app's state lives in those modules, by concern: ``session`` (this browser session's source, the
models to choose from), ``progress`` (progress bars and the process-wide ``memo`` store), ``downloads``
(CIFAR-100 and release weights on first use), ``loaders`` (model, data, bundle artefacts and the tables
derived from them) and ``uploads`` (an uploaded image decoded for the model). New code imports from
them directly; this module only re-exports, so patching a name here changes what callers of
``state.NAME`` get, not what the loaders call inside.
"""

from __future__ import annotations

from .downloads import CIFAR100_BYTES, ensure_cifar100, ensure_weights  # noqa: F401
from .loaders import (CLUSTER_METHODS, SCORE_LABELS, Clustering, bench, build_bundle, build_command,  # noqa: F401
                      bundle, bundle_json, bundle_problem, bundle_tensors, calib_stats, candidate_taps, clustering,
                      data_info, default_tap, example_images, exit_heads, experiment, grid, hierarchy, maps,
                      model_facts, overlap, router, score_methods, scores, scores_ready, stats, step_key)
from .progress import Progress, counter, forget, memo, page_timer, wait_with_bar  # noqa: F401
from .session import (DEFAULT_MODEL, ENV_BUNDLE, ENV_CHECKPOINT, ENV_DATASET, ENV_MODEL, REPO, Source,  # noqa: F401
                      cluster_ratios, default_bundle_dir, env_source, model_table, selectable_models, set_source,
                      source)
from .uploads import Upload, decode_upload  # noqa: F401

__all__ = [
    "Source", "source", "step_key", "set_source", "env_source", "default_bundle_dir", "selectable_models", "model_table", "memo", "forget",
    "Progress", "experiment", "bundle", "bundle_problem", "bundle_json", "bundle_tensors", "build_command",
    "build_bundle", "hierarchy", "data_info", "model_facts", "stats", "scores", "scores_ready", "score_methods", "SCORE_LABELS",
    "router", "exit_heads", "calib_stats", "CLUSTER_METHODS", "Clustering", "clustering", "maps",
    "example_images", "overlap", "default_tap", "candidate_taps", "cluster_ratios", "Upload", "decode_upload", "grid",
    "bench", "page_timer",
]
