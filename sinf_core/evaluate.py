"""Accuracy of a classifier: top-1, superclass accuracy of the prediction, per-cluster accuracy."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .data import Hierarchy, ImageDataset, iterate_batches
from .runtime import Runtime


@torch.inference_mode()
def collect_logits(
    model: torch.nn.Module,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    rt: Runtime | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Logits [N, classes] (float32, CPU) of ``model`` over ``dataset[indices]`` in order, run as ``rt``
    says (default: the model's device)."""
    rt = Runtime.resolve(rt, model)
    model.eval()
    out = []
    for x, _ in iterate_batches(dataset, rt.batch_size, indices, rt.device):
        with rt.autocast():
            out.append(model(x).float().cpu())
        if on_batch:
            on_batch(len(x))
    return torch.cat(out) if out else torch.zeros(0, dataset.num_classes)


def paired_se(ok: torch.Tensor, base_ok: torch.Tensor) -> torch.Tensor:
    """Standard error (fraction) of mean(ok - base_ok) over the last axis: the uncertainty of a
    point's accuracy difference from the base model on these samples (paired, so only the samples
    where the two disagree contribute)."""
    d = ok.double() - base_ok.double()
    n = d.shape[-1]
    var = (d * d).mean(-1) - d.mean(-1) ** 2
    return (var.clamp_min(0.0) / n).sqrt()


def accuracy_report(pred: np.ndarray, labels: np.ndarray, hierarchy: Hierarchy) -> dict:
    """``pred`` / ``labels``: fine class indices [N]. Percentages, rounded to 0.01."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    cl = hierarchy.cluster_array()
    correct = pred == labels
    per_cluster = {}
    for m, name in enumerate(hierarchy.cluster_names):
        mask = cl[labels] == m
        per_cluster[name] = round(100.0 * float(correct[mask].mean()), 2) if mask.any() else None
    return {
        "n": int(len(labels)),
        "top1": round(100.0 * float(correct.mean()), 2) if len(labels) else None,
        "superclass_acc": round(100.0 * float((cl[pred] == cl[labels]).mean()), 2) if len(labels) else None,
        "per_cluster": per_cluster,
    }
