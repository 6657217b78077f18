"""The contract every filter score follows (Torch-Pruning ``importance`` style), and its small helpers.

A score maps a prunable layer to one number per output channel, higher = keep. It may be conditioned on
one cluster's data (METHOD.md sections 3-4). To make "every score for every cluster" cheap, a score is
split in two: ``reducers(job)`` says what it needs from ONE shared streamed pass over the data (only
bounded reductions are kept, see ``feature_maps``), and ``finish(job, reducers)`` turns those
reductions into a table ``{target: {layer name: Tensor[C]}}`` for all requested targets at once.
A target is a cluster index, or ``None`` for "all classes of the data" (not cluster-conditioned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np
import torch

from ..data import Hierarchy, ImageDataset
from ..errors import SinfError
from ..models import PrunableLayer, SinfModel
from ..runtime import Runtime

if TYPE_CHECKING:  # the statistics pass lives in sinf_core.stats (imported lazily)
    from ..stats import ActivationStats
    from .feature_maps import Reducer

Target = Optional[int]
LayerScores = dict[str, torch.Tensor]            # layer name -> float32 Tensor[C]
ScoreTable = dict[Target, LayerScores]           # target -> layer scores

# Options every data-dependent score understands (merged under each method's own defaults).
COMMON_DEFAULTS: dict[str, Any] = {"max_per_class": 100, "seed": 0}


@dataclass
class ScoreJob:
    """Everything a score needs. ``options`` are already resolved (defaults + user values) for one method."""

    model: SinfModel
    layers: list[PrunableLayer]
    data: ImageDataset
    hierarchy: Hierarchy
    targets: list[Target]
    options: dict[str, Any]
    stats: "ActivationStats | None" = None
    rt: Runtime = field(default_factory=Runtime)
    on_progress: Callable[[str, int, int], None] | None = None

    @property
    def device(self) -> torch.device:
        return self.rt.device

    def classes_of(self, target: Target) -> list[int]:
        """Fine classes a target covers: a cluster's members, or every class (``None``)."""
        if target is None:
            return list(range(self.hierarchy.num_classes))
        return self.hierarchy.members(target)

    def all_classes(self) -> list[int]:
        return sorted({c for t in self.targets for c in self.classes_of(t)})

    def rows(self, cap: int | None = None) -> np.ndarray:
        """Data rows this job looks at: at most ``cap`` (default ``max_per_class``) per class of the
        targets, a fixed seeded choice (nested: a smaller cap picks a prefix of a larger one)."""
        from .feature_maps import sample_indices

        cap = self.options.get("max_per_class") if cap is None else cap
        return sample_indices(self.data.labels.numpy(), self.all_classes(), cap, int(self.options.get("seed", 0)))

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)


@dataclass(frozen=True)
class ScoreSpec:
    """One registered score.

    ``data_dependent``: looks at activations (then it is cluster-conditioned: for a cluster it uses only
    the samples of that cluster's classes). ``defaults``: the options it understands.
    ``reducers(job)`` -> {key: Reducer} gathered in the shared pass (same key = shared between scores).
    ``finish(job, reducers)`` -> ScoreTable for ``job.targets``.
    """

    name: str
    summary: str
    data_dependent: bool
    defaults: Mapping[str, Any]
    reducers: Callable[[ScoreJob], dict[str, "Reducer"]]
    finish: Callable[[ScoreJob, dict[str, "Reducer"]], ScoreTable]


def no_reducers(job: ScoreJob) -> dict:
    return {}


def normalise_max(v: torch.Tensor) -> torch.Tensor:
    """Divide by the maximum (scores in [0, 1] when non-negative); an all-zero vector stays zero."""
    m = float(v.max()) if v.numel() else 0.0
    return v / m if m > 0 else v.clone()


def class_group(sums: torch.Tensor, counts: torch.Tensor, classes: list[int], what: str) -> torch.Tensor:
    """Mean over the samples of ``classes`` from per-class sums [K, ...] and counts [K]."""
    n = float(counts[classes].sum())
    if n <= 0:
        raise SinfError(f"no samples of classes {classes} in the data: cannot compute {what}")
    return sums[classes].sum(0) / n


def check_targets_have_data(job: ScoreJob) -> None:
    labels = job.data.labels.numpy()
    present = set(np.unique(labels).tolist())
    for t in job.targets:
        if not present.intersection(job.classes_of(t)):
            name = "the data" if t is None else f"cluster {t} ({job.hierarchy.cluster_names[t]!r})"
            raise SinfError(f"{name} has no samples in the data set given to the scores; "
                            "a data-dependent score cannot be computed for it")
