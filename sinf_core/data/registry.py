"""Named data sets and where their files are found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SinfError
from .cifar import CIFAR_IMAGE_SIZE, download_cifar100, find_cifar100_folder, load_cifar100_split
from .core import DEFAULT_IMAGE_SIZE, ImageDataset

DATA_ENV = "SINF_DATA_DIR"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "sinf" / "data").expanduser()


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


@dataclass(frozen=True)
class DatasetEntry:
    """``image_size``: the side of its images, fixed by the format (they are not resized)."""

    name: str
    load: Callable[[Path, str, bool], ImageDataset]  # (data_dir, split, download) -> data set
    num_classes: int
    image_size: int
    title: str = ""


def _load_cifar100(data_dir: Path, split: str, download: bool) -> ImageDataset:
    folder = find_cifar100_folder(data_dir)
    if folder is None:
        if not download:
            raise SinfError(
                f"CIFAR-100 not found in {data_dir} (looked for {data_dir}/cifar-100-python/"
                f"{{train,test,meta}}). Set {DATA_ENV} or --data-dir to the folder that holds it, "
                "or pass --download to fetch the official archive (about 160 MB)."
            )
        folder = download_cifar100(data_dir)
    return load_cifar100_split(folder, split)


DATASETS: dict[str, DatasetEntry] = {
    "cifar100": DatasetEntry("cifar100", _load_cifar100, 100, CIFAR_IMAGE_SIZE, "CIFAR-100"),
}

_CACHE: dict[tuple[str, str, str, int | None], ImageDataset] = {}


def check_image_size(name: str, image_size: int | None) -> None:
    """Refuse a size a data set cannot be loaded at: not a positive whole number, or another size than
    a registered data set's own (CIFAR-100's images are 32x32, and stay so)."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise SinfError(f"the image size must be a positive whole number of pixels, not {image_size!r}")
    entry = DATASETS.get(name)
    if entry is not None and image_size != entry.image_size:
        s = entry.image_size
        raise SinfError(f"{entry.title or entry.name} images are {s}x{s} and are loaded as they are, not at "
                        f"{image_size}x{image_size}: leave --image-size out (or pass {s}), or use an image folder "
                        f"(root/<split>/<class>/ images, loaded at --image-size) for another size")


def load_dataset(
    name: str, split: str, data_dir: str | Path | None = None, download: bool = False, image_size: int | None = None
) -> ImageDataset:
    """A registered data set by name, or an image folder given as a path (``root/<split>/<class>/``).

    ``image_size``: the side an image folder's images are resized to (default ``DEFAULT_IMAGE_SIZE``); a
    registered data set has its own size, and another is refused (``check_image_size``).
    Results are cached in memory per (name, split, folder, size).
    """
    check_image_size(name, image_size)
    root = resolve_data_dir(data_dir)
    size = None if name in DATASETS else image_size or DEFAULT_IMAGE_SIZE
    key = (name, split, str(root), size)
    if key in _CACHE:
        return _CACHE[key]
    if name in DATASETS:
        ds = DATASETS[name].load(root, split, download)
    elif Path(name).is_dir():
        from .imagefolder import load_image_folder

        stats = None
        if split != "train" and (Path(name) / "train").is_dir():
            tr = load_dataset(name, "train", data_dir, False, size)
            stats = (tr.mean, tr.std)
        ds = load_image_folder(Path(name), split, size, stats=stats)
    elif Path(name).exists():
        raise SinfError(f"data set {name} is a file; an image folder is a folder holding <split>/<class>/ images")
    elif "/" in name or "\\" in name or name.startswith("."):
        raise SinfError(f"image folder not found: {name} (a data set is one of {sorted(DATASETS)} or a folder "
                        "holding <split>/<class>/ images)")
    else:
        raise SinfError(f"unknown data set {name!r}: use one of {sorted(DATASETS)} or a path to an image folder")
    _CACHE[key] = ds
    return ds
