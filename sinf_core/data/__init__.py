"""Data sets as plain in-memory tensors, class hierarchies, and the calibration/report splits."""

from .core import Hierarchy, ImageDataset, iterate_batches, normalise, augment_crop_flip  # noqa: F401
from .splits import Splits, make_splits, stratified_split  # noqa: F401
from .registry import DATASETS, load_dataset, resolve_data_dir  # noqa: F401
