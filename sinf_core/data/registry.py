"""Named data sets and where their files are found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SinfError
from .cifar import download_cifar100, find_cifar100_folder, load_cifar100_split
from .core import ImageDataset

DATA_ENV = "SINF_DATA_DIR"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "sinf" / "data").expanduser()


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Callable[[Path, str, bool], ImageDataset]  # (data_dir, split, download) -> data set
    num_classes: int


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
    "cifar100": DatasetEntry("cifar100", _load_cifar100, 100),
}

_CACHE: dict[tuple[str, str, str], ImageDataset] = {}


def load_dataset(
    name: str, split: str, data_dir: str | Path | None = None, download: bool = False, image_size: int = 32
) -> ImageDataset:
    """A registered data set by name, or an image folder given as a path (``root/<split>/<class>/``).

    Results are cached in memory per (name, split, folder).
    """
    root = resolve_data_dir(data_dir)
    key = (name, split, str(root))
    if key in _CACHE:
        return _CACHE[key]
    if name in DATASETS:
        ds = DATASETS[name].load(root, split, download)
    elif Path(name).is_dir():
        from .imagefolder import load_image_folder

        stats = None
        if split != "train" and (Path(name) / "train").is_dir():
            tr = load_dataset(name, "train", data_dir, False, image_size)
            stats = (tr.mean, tr.std)
        ds = load_image_folder(Path(name), split, image_size, stats=stats)
    elif Path(name).exists():
        raise SinfError(f"data set {name} is a file; an image folder is a folder holding <split>/<class>/ images")
    elif "/" in name or "\\" in name or name.startswith("."):
        raise SinfError(f"image folder not found: {name} (a data set is one of {sorted(DATASETS)} or a folder "
                        "holding <split>/<class>/ images)")
    else:
        raise SinfError(f"unknown data set {name!r}: use one of {sorted(DATASETS)} or a path to an image folder")
    _CACHE[key] = ds
    return ds
