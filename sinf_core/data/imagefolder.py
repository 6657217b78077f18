"""Bring your own data: ``root/<split>/<class>/*.png|jpg`` plus a JSON class-to-cluster hierarchy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..artifacts import HIERARCHY as HIERARCHY_FILE  # noqa: F401  (re-exported)
from ..errors import SinfError
from .core import DEFAULT_IMAGE_SIZE, Hierarchy, ImageDataset, channel_stats
from .images import load_image_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_hierarchy_file(path: Path, class_names: list[str], classes_from: Path | None = None) -> Hierarchy:
    """The hierarchy in ``path`` over ``class_names`` (the class sub-folders of ``classes_from``); a
    mismatch names the file and the folder."""
    if not path.is_file():
        raise SinfError(f"hierarchy file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SinfError(f"hierarchy file {path} is not valid JSON: {exc}") from exc
    try:
        return Hierarchy.from_json(obj, class_names)
    except SinfError as exc:
        where = f" for the {len(class_names)} class sub-folders of {classes_from}" if classes_from else ""
        raise SinfError(f"{path}{where}: {exc}") from exc


def load_image_folder(
    root: Path,
    split: str,
    size: int = DEFAULT_IMAGE_SIZE,
    hierarchy_path: Path | None = None,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> ImageDataset:
    """Load ``root/split/<class>/*`` resized to ``size`` x ``size``.

    Classes are the sub-folders of ``root/split`` in sorted order. The hierarchy comes from
    ``hierarchy_path`` (default ``root/hierarchy.json``). Normalisation statistics are computed on the
    images unless ``stats`` (mean, std) is given (use the train split's for the test split).
    """
    split_dir = root / split
    if not split_dir.is_dir():
        raise SinfError(f"image folder split not found: {split_dir}")
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not class_dirs:
        raise SinfError(f"{split_dir} has no class sub-folders")
    class_names = [p.name for p in class_dirs]
    hierarchy = load_hierarchy_file(hierarchy_path or root / HIERARCHY_FILE, class_names, split_dir)
    images, labels, skipped = [], [], []
    for c, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                images.append(load_image_rgb(f.read_bytes(), size))
            except SinfError as exc:
                skipped.append(f"{f.name}: {exc}")
                continue
            labels.append(c)
    if not images:
        raise SinfError(f"no readable images under {split_dir}")
    x = torch.stack(images)
    mean, std = stats if stats is not None else channel_stats(x)
    return ImageDataset(
        name=root.name,
        images=x,
        labels=torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        hierarchy=hierarchy,
        mean=tuple(mean),
        std=tuple(std),
        meta={"split": split, "source": str(root), "skipped": skipped},
    )
