"""An experiment: one model, its data, and the fixed splits every later step uses (METHOD.md section 0)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import DATASETS, Hierarchy, ImageDataset, Splits, load_dataset, make_splits
from .errors import SinfError
from .models import SinfModel, get_entry, load_model, model_for_classes
from .models.registry import check_weights_given
from .runtime import Runtime


@dataclass
class Experiment:
    model_name: str
    model: SinfModel
    train: ImageDataset
    test: ImageDataset
    splits: Splits
    runtime: Runtime  # how every pass over this experiment's data runs (device, precision, layout, batch size)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def hierarchy(self) -> Hierarchy:
        return self.train.hierarchy

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of its images, decided once by ``open_experiment``: the data is loaded at that size
        and the model built for it (``model.input_shape``)."""
        return tuple(self.model.input_shape)

    @property
    def image_size(self) -> int:
        return int(self.input_shape[-1])

    def fit_data(self) -> ImageDataset:
        """What statistics, filter scores and router training may look at."""
        return self.train.subset(self.splits.fit)

    def calib_data(self) -> ImageDataset:
        """What decisions that look at model outputs may look at."""
        src = self.train if self.splits.calib_source == "train" else self.test
        return src.subset(self.splits.calib)

    def report_data(self) -> ImageDataset:
        """What reported numbers are computed on (disjoint from calibration)."""
        return self.test.subset(self.splits.report)

    def with_hierarchy(self, hierarchy: Hierarchy) -> "Experiment":
        return Experiment(self.model_name, self.model, self.train.with_hierarchy(hierarchy),
                          self.test.with_hierarchy(hierarchy), self.splits, self.runtime)


def open_experiment(
    model_name: str,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    checkpoint: str | Path | None = None,
    runtime: Runtime | str | None = None,
    protocol: str | None = None,
    image_size: int | None = None,
) -> Experiment:
    """Load the model (pretrained or ``checkpoint``) and its data set, and fix the splits.

    ``image_size``: the side image-folder images are loaded at (default: the model's registered size,
    else ``data.core.DEFAULT_IMAGE_SIZE``); a registered data set such as CIFAR-100 keeps its own and
    refuses another. The model is built for the loaded images' shape (``Experiment.input_shape``).

    ``model_name``: a registered name or a spec (``torchvision:resnet18``, ...; see ``models.specs``),
    which is built with one output per class of the data set: ``Experiment.model_name`` is then the
    canonical spec that records the count (``torchvision:resnet18@10``).
    ``protocol`` defaults to the model's registry entry ('pretrained' for public weights that saw all
    of train, 'heldout' for models trained here); a user checkpoint defaults to 'heldout'.
    ``runtime``: how everything runs (a device name or None is the default Runtime on that device);
    the model is moved to its device once, here.
    """
    entry = get_entry(model_name)
    check_weights_given(model_name, checkpoint)
    dataset = dataset or entry.dataset
    if dataset is None:
        raise SinfError(f"{model_name} is not tied to a data set: pass one (--dataset cifar100 or an image-folder path)")
    rt = runtime if isinstance(runtime, Runtime) else Runtime.create(runtime)
    size = resolve_image_size(image_size, entry.image_size, dataset)
    train = load_dataset(dataset, "train", data_dir, download, size)
    test = load_dataset(dataset, "test", data_dir, download, size)
    check_splits_agree(train, test)
    model_name = model_for_classes(model_name, train.num_classes)
    model = load_model(model_name, checkpoint=checkpoint, input_shape=train.input_shape).to(rt.device)
    check_model_fits_data(model, model_name, train)
    proto = protocol or ("heldout" if checkpoint else entry.protocol)
    splits = make_splits(train.labels.numpy(), test.labels.numpy(), proto)
    return Experiment(model_name, model, train, test, splits, rt)


def resolve_image_size(asked: int | None, registered: int | None, dataset: str) -> int | None:
    """The size ``dataset`` is loaded at: the one ``asked`` for; else, for an image folder, the model's
    ``registered`` one; else None (a registered data set's own size, or ``DEFAULT_IMAGE_SIZE``)."""
    return asked if asked is not None or dataset in DATASETS else registered


def model_outputs(model: torch.nn.Module) -> int:
    """How many classes ``model`` predicts: the width of its final linear layer."""
    try:
        return int(model.classifier_layer().out_features)
    except (AttributeError, NotImplementedError):
        return int(model.num_classes)


def _source(data: ImageDataset) -> str:
    src = data.meta.get("source")
    return f"the data set {data.name!r} in {src}" if src else f"the data set {data.name!r}"


def check_model_fits_data(model: torch.nn.Module, model_name: str, data: ImageDataset) -> None:
    """Refuse a model whose head does not have one output per class of ``data`` (else labels index
    past the logits, or a model silently scores classes it was never trained on)."""
    outputs = model_outputs(model)
    if outputs != data.num_classes:
        raise SinfError(
            f"{model_name} predicts {outputs} classes (its final layer has {outputs} outputs) but "
            f"{_source(data)} has {data.num_classes} classes; use a data set with {outputs} classes, or a "
            f"model (--checkpoint) trained on these {data.num_classes}"
        )


def check_splits_agree(train: ImageDataset, test: ImageDataset) -> None:
    """The train and test splits must name the same classes in the same order (an image folder's
    ``train/`` and ``test/`` each list their own class sub-folders)."""
    if train.class_names != test.class_names:
        only_train = sorted(set(train.class_names) - set(test.class_names))
        only_test = sorted(set(test.class_names) - set(train.class_names))
        raise SinfError(
            f"the train and test splits of {_source(train)} have different classes: {train.num_classes} in "
            f"train, {test.num_classes} in test (only in train: {only_train[:5] or 'none'}; only in test: "
            f"{only_test[:5] or 'none'})"
        )


def indices_of(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    return np.flatnonzero(np.isin(np.asarray(labels), classes))
