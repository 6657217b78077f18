"""The one data-set type every part of SINF uses: uint8 images in memory plus a class hierarchy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import SinfError

# The side of the square images a data set is loaded at when neither the user (``--image-size``) nor the
# model's registry entry names one: CIFAR's. ``models.base.DEFAULT_INPUT_SHAPE`` is built from it.
DEFAULT_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Hierarchy:
    """Classes grouped into semantic clusters.

    ``cluster_of_class[c]`` is the cluster index of class ``c``; every class belongs to one cluster.
    """

    class_names: tuple[str, ...]
    cluster_names: tuple[str, ...]
    cluster_of_class: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.cluster_of_class) != len(self.class_names):
            raise SinfError(
                f"hierarchy covers {len(self.cluster_of_class)} classes but the data set has "
                f"{len(self.class_names)}"
            )
        k = len(self.cluster_names)
        bad = [c for c in self.cluster_of_class if not 0 <= c < k]
        if bad:
            raise SinfError(f"hierarchy names cluster indices outside 0..{k - 1}: {sorted(set(bad))}")
        empty = [self.cluster_names[m] for m in range(k) if m not in set(self.cluster_of_class)]
        if empty:
            raise SinfError(f"hierarchy has clusters with no classes: {empty}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_clusters(self) -> int:
        return len(self.cluster_names)

    def members(self, cluster: int) -> list[int]:
        """Class indices of ``cluster``, ascending."""
        return [c for c, m in enumerate(self.cluster_of_class) if m == cluster]

    def cluster_array(self) -> np.ndarray:
        return np.asarray(self.cluster_of_class, dtype=np.int64)

    def to_json(self) -> dict:
        return {
            "clusters": {
                name: [self.class_names[c] for c in self.members(m)]
                for m, name in enumerate(self.cluster_names)
            }
        }

    @classmethod
    def from_assignment(
        cls, class_names: Sequence[str], assignment: Sequence[int], cluster_names: Sequence[str] | None = None
    ) -> "Hierarchy":
        """From a class -> cluster index array (e.g. a data-driven clustering)."""
        assignment = [int(a) for a in assignment]
        k = max(assignment) + 1
        names = tuple(cluster_names) if cluster_names is not None else tuple(f"cluster_{m}" for m in range(k))
        return cls(tuple(class_names), names, tuple(assignment))

    @classmethod
    def from_json(cls, obj: dict, class_names: Sequence[str]) -> "Hierarchy":
        """``{"clusters": {"cluster name": ["class", ...], ...}}``; every class exactly once."""
        if not isinstance(obj, dict) or not isinstance(obj.get("clusters"), dict):
            raise SinfError('hierarchy file must be a JSON object {"clusters": {"name": ["class", ...]}}')
        index = {name: i for i, name in enumerate(class_names)}
        assignment = [-1] * len(class_names)
        cluster_names = list(obj["clusters"].keys())
        for m, (cname, members) in enumerate(obj["clusters"].items()):
            if not isinstance(members, list):
                raise SinfError(f"hierarchy cluster {cname!r} must list class names")
            for member in members:
                if member not in index:
                    raise SinfError(f"hierarchy cluster {cname!r} names unknown class {member!r}")
                if assignment[index[member]] != -1:
                    raise SinfError(f"class {member!r} appears in more than one cluster of the hierarchy")
                assignment[index[member]] = m
        missing = [class_names[c] for c, m in enumerate(assignment) if m == -1]
        if missing:
            raise SinfError(
                f"hierarchy file does not cover every class: {len(missing)} missing, e.g. {missing[:5]}"
            )
        return cls(tuple(class_names), tuple(cluster_names), tuple(assignment))


@dataclass
class ImageDataset:
    """Images held in memory as uint8 NCHW, with fine labels and the class hierarchy.

    ``mean``/``std`` are the per-channel normalisation statistics of the data set (in [0, 1] units).
    """

    name: str
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    hierarchy: Hierarchy
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise SinfError(f"images must be uint8 [N, 3, H, W], got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise SinfError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(v) for v in self.images.shape[1:])

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.hierarchy.class_names

    @property
    def num_classes(self) -> int:
        return self.hierarchy.num_classes

    @property
    def cluster_labels(self) -> torch.Tensor:
        """Cluster index of every image, int64 [N]."""
        return torch.as_tensor(self.hierarchy.cluster_array())[self.labels]

    def subset(self, indices: np.ndarray | torch.Tensor) -> "ImageDataset":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.name, self.images[idx], self.labels[idx], self.hierarchy, self.mean, self.std, dict(self.meta))

    def with_hierarchy(self, hierarchy: Hierarchy) -> "ImageDataset":
        if hierarchy.class_names != self.hierarchy.class_names:
            raise SinfError("the hierarchy is for a different set of classes")
        return ImageDataset(self.name, self.images, self.labels, hierarchy, self.mean, self.std, dict(self.meta))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float32, scaled to [0,1] then standardised per channel (same device)."""
    x = images.to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def augment_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, batched, on uint8 or float."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(images.device)  # [n, h]
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(images.device)  # [n, w]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    bidx = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    cidx = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[bidx, cidx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    indices: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalised float images, labels) on ``device`` in order, ``batch_size`` at a time."""
    if batch_size < 1:
        raise SinfError("batch size must be at least 1")
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    for start in range(0, len(idx), batch_size):
        sel = torch.as_tensor(idx[start : start + batch_size], dtype=torch.long)
        x = dataset.images[sel].to(device, non_blocking=True)
        yield normalise(x, dataset.mean, dataset.std), dataset.labels[sel].to(device, non_blocking=True)
