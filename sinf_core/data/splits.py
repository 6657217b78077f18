"""Fixed, stratified splits (METHOD.md section 0).

- ``fit``: what statistics, filter scores and router training may look at.
- ``calib``: every decision that looks at model outputs (temperature, thresholds, operating points).
- ``report``: the numbers we publish; disjoint from ``calib``.

Protocol ``pretrained`` (the model saw all of train): fit = all of train; calib / report = fixed
stratified halves of the official test split. Protocol ``heldout`` (a model the project trains):
calib = a stratified part of train held out from training; fit = the rest of train; report = test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SinfError

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.1
PROTOCOLS = ("pretrained", "heldout")


def stratified_split(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, part) where ``part`` holds round(fraction * n_c) of each class c.

    Deterministic for a given seed; both outputs sorted ascending.
    """
    if not 0.0 < fraction < 1.0:
        raise SinfError(f"split fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    part = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        part.append(idx[: int(round(fraction * len(idx)))])
    part_idx = np.sort(np.concatenate(part)) if part else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[part_idx] = False
    return np.flatnonzero(mask), part_idx


@dataclass(frozen=True)
class Splits:
    """Index arrays into the train and test data sets."""

    protocol: str
    fit: np.ndarray  # into train
    calib: np.ndarray  # into train (heldout) or test (pretrained)
    report: np.ndarray  # into test
    calib_source: str  # "train" or "test"

    def summary(self) -> dict:
        return {
            "protocol": self.protocol,
            "fit": int(len(self.fit)),
            "calib": int(len(self.calib)),
            "calib_source": self.calib_source,
            "report": int(len(self.report)),
        }


def make_splits(train_labels: np.ndarray, test_labels: np.ndarray, protocol: str, seed: int = SPLIT_SEED) -> Splits:
    if protocol == "pretrained":
        report, calib = stratified_split(test_labels, 0.5, seed)
        return Splits(protocol, np.arange(len(train_labels)), calib, report, "test")
    if protocol == "heldout":
        fit, calib = stratified_split(train_labels, HELDOUT_FRACTION, seed)
        return Splits(protocol, fit, calib, np.arange(len(test_labels)), "train")
    raise SinfError(f"unknown split protocol {protocol!r}; choose one of {PROTOCOLS}")
