"""CIFAR-100 in the official "python version" layout, read with an allow-list unpickler."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import SinfError
from .core import Hierarchy, ImageDataset

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
# Train-set statistics, the ones the public CIFAR-100 models were trained with.
CIFAR100_MEAN = (0.5070, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2761)

# The only globals a CIFAR pickle may name: numpy's array rebuilding (old and new module paths).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class AllowListUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise SinfError(f"refusing to unpickle {module}.{name}: not an allowed global in a CIFAR file")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def safe_unpickle(data: bytes) -> object:
    return AllowListUnpickler(io.BytesIO(data), encoding="latin1").load()


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SinfError(f"CIFAR-100 file missing: {path}")
    try:
        obj = safe_unpickle(path.read_bytes())
    except SinfError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise SinfError(f"cannot read {path}: not a valid CIFAR pickle ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise SinfError(f"{path} does not hold a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def find_cifar100_folder(data_dir: Path) -> Path | None:
    """``data_dir`` itself or ``data_dir/cifar-100-python`` when it holds train/test/meta."""
    for cand in (data_dir, data_dir / CIFAR100_FOLDER):
        if all((cand / f).is_file() for f in ("train", "test", "meta")):
            return cand
    return None


def download_cifar100(data_dir: Path) -> Path:
    """Download and extract the official archive into ``data_dir`` (torchvision's helpers, md5 checked)."""
    from torchvision.datasets.utils import download_and_extract_archive

    data_dir.mkdir(parents=True, exist_ok=True)
    download_and_extract_archive(CIFAR100_URL, str(data_dir), md5=CIFAR100_MD5)
    folder = find_cifar100_folder(data_dir)
    if folder is None:
        raise SinfError(f"download finished but {data_dir / CIFAR100_FOLDER} is incomplete")
    return folder


def cifar100_hierarchy(meta: dict, fine: np.ndarray, coarse: np.ndarray) -> Hierarchy:
    """Fine-to-coarse hierarchy from the meta names and one split's paired labels."""
    names = lambda key: tuple(n.decode() if isinstance(n, bytes) else n for n in meta[key])  # noqa: E731
    fine_names, coarse_names = names("fine_label_names"), names("coarse_label_names")
    assignment = np.full(len(fine_names), -1, dtype=np.int64)
    assignment[fine] = coarse
    if (assignment < 0).any():
        raise SinfError("CIFAR-100 split does not contain every fine class")
    return Hierarchy(fine_names, coarse_names, tuple(int(a) for a in assignment))


def load_cifar100_split(folder: Path, split: str, hierarchy: Hierarchy | None = None) -> ImageDataset:
    """``split`` is 'train' or 'test'."""
    if split not in ("train", "test"):
        raise SinfError(f"CIFAR-100 split must be 'train' or 'test', not {split!r}")
    raw = _read(folder / split)
    data = np.asarray(raw["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise SinfError(f"{folder / split}: expected rows of 3072 bytes, got shape {data.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    labels = torch.as_tensor(np.asarray(raw["fine_labels"], dtype=np.int64))
    coarse = np.asarray(raw["coarse_labels"], dtype=np.int64)
    hierarchy = hierarchy or cifar100_hierarchy(_read(folder / "meta"), labels.numpy(), coarse)
    if not np.array_equal(hierarchy.cluster_array()[labels.numpy()], coarse):
        raise SinfError(f"{folder / split}: coarse labels disagree with the fine-to-coarse hierarchy")
    return ImageDataset(
        name="cifar100",
        images=images,
        labels=labels,
        hierarchy=hierarchy,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        meta={"split": split, "source": str(folder)},
    )
