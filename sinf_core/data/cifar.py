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
CIFAR_IMAGE_SIZE = 32  # the format's: 3072 bytes a row, 32x32 RGB
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


def _field(raw: dict, key: str, path: Path):
    if key not in raw:
        raise SinfError(f"{path}: not a CIFAR-100 file (no {key!r} entry; it has {', '.join(map(str, raw)) or 'none'})")
    return raw[key]


def _label_array(raw: dict, key: str, path: Path, num_valid: int, n_images: int) -> np.ndarray:
    """``raw[key]`` as int64 labels, one per image, each in ``0..num_valid - 1``; else a message naming
    the file, the counts and the first bad value."""
    values = _field(raw, key, path)
    try:
        labels = np.asarray(values)
    except Exception as exc:  # ragged nested lists and the like
        raise SinfError(f"{path}: {key} is not a list of integers ({exc})") from exc
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise SinfError(f"{path}: {key} must be a flat list of integers, got {labels.dtype} values of shape {labels.shape}")
    if len(labels) != n_images:
        raise SinfError(f"{path}: {n_images} images but {len(labels)} {key}; the file is damaged or not CIFAR-100")
    bad = np.flatnonzero((labels < 0) | (labels >= num_valid))
    if bad.size:
        i = int(bad[0])
        raise SinfError(
            f"{path}: {key}[{i}] is {int(labels[i])}, outside the valid range 0..{num_valid - 1} "
            f"({bad.size} of {len(labels)} labels out of range)"
        )
    return labels.astype(np.int64)


def _label_names(meta: dict, key: str, path: Path) -> tuple[str, ...]:
    names = _field(meta, key, path)
    if not isinstance(names, (list, tuple)) or not names:
        raise SinfError(f"{path}: {key} must be a non-empty list of names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def cifar100_hierarchy(meta: dict, fine: np.ndarray, coarse: np.ndarray, source: Path | str = "meta") -> Hierarchy:
    """Fine-to-coarse hierarchy from the meta names and one split's paired labels (checked in range)."""
    fine_names = _label_names(meta, "fine_label_names", Path(source))
    coarse_names = _label_names(meta, "coarse_label_names", Path(source))
    fine, coarse = np.asarray(fine, dtype=np.int64), np.asarray(coarse, dtype=np.int64)
    for labels, names, what in ((fine, fine_names, "fine"), (coarse, coarse_names, "coarse")):
        bad = labels[(labels < 0) | (labels >= len(names))]
        if bad.size:
            raise SinfError(f"{what} label {int(bad[0])} is outside the valid range 0..{len(names) - 1} "
                            f"({len(names)} {what} classes in {source})")
    assignment = np.full(len(fine_names), -1, dtype=np.int64)
    assignment[fine] = coarse
    if (assignment < 0).any():
        missing = [fine_names[c] for c in np.flatnonzero(assignment < 0)[:5]]
        raise SinfError(f"CIFAR-100 split does not contain every fine class of {source} "
                        f"({int((assignment < 0).sum())} missing, e.g. {missing})")
    return Hierarchy(fine_names, coarse_names, tuple(int(a) for a in assignment))


def load_cifar100_split(folder: Path, split: str, hierarchy: Hierarchy | None = None) -> ImageDataset:
    """``split`` is 'train' or 'test'."""
    if split not in ("train", "test"):
        raise SinfError(f"CIFAR-100 split must be 'train' or 'test', not {split!r}")
    path = folder / split
    raw = _read(path)
    try:
        data = np.asarray(_field(raw, "data", path))
    except SinfError:
        raise
    except Exception as exc:
        raise SinfError(f"{path}: data is not an array of bytes ({exc})") from exc
    side = CIFAR_IMAGE_SIZE
    if data.ndim != 2 or data.shape[1] != 3 * side * side or data.dtype != np.uint8:
        raise SinfError(f"{path}: expected uint8 rows of {3 * side * side} bytes ({side}x{side} RGB), got {data.dtype} "
                        f"of shape {data.shape}")
    n = int(data.shape[0])
    if hierarchy is None:
        meta_path = folder / "meta"
        meta = _read(meta_path)
        n_fine = len(_label_names(meta, "fine_label_names", meta_path))
        n_coarse = len(_label_names(meta, "coarse_label_names", meta_path))
    else:
        n_fine, n_coarse = hierarchy.num_classes, hierarchy.num_clusters
    fine = _label_array(raw, "fine_labels", path, n_fine, n)
    coarse = _label_array(raw, "coarse_labels", path, n_coarse, n)
    images = torch.from_numpy(data.reshape(-1, 3, side, side).copy())
    labels = torch.from_numpy(fine)
    hierarchy = hierarchy or cifar100_hierarchy(meta, fine, coarse, meta_path)
    if not np.array_equal(hierarchy.cluster_array()[fine], coarse):
        raise SinfError(f"{path}: coarse labels disagree with the fine-to-coarse hierarchy")
    return ImageDataset(
        name="cifar100",
        images=images,
        labels=labels,
        hierarchy=hierarchy,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        meta={"split": split, "source": str(folder)},
    )
