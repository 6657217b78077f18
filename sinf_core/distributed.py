"""Sharded statistics passes with torch.distributed (``torchrun --nproc_per_node=N``).

Every quantity in ``ActivationStats`` is a sum over samples, so each rank takes a strided shard of the
indices, runs the ordinary pass, and one all-reduce (SUM) of all the sums gives exactly what one
process would compute over all the indices (up to float rounding). gloo on CPU, nccl on CUDA. Outside
torchrun (no ``WORLD_SIZE``) everything runs as a single process.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from .data import ImageDataset
from .errors import SinfError
from .models import SinfModel
from .runtime import Runtime
from .stats import ActivationStats, collect_stats, feature_sample_positions, is_summable_key, pass_indices


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device | str = "cpu") -> torch.device:
    """Join the process group torchrun describes (env://), once; returns the device this rank uses
    (``cuda:LOCAL_RANK`` on CUDA). Without torchrun, returns ``device`` unchanged."""
    device = torch.device(device)
    if not launched_by_torchrun():
        return device
    if not dist.is_available():
        raise SinfError("this torch build has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The strided shard ``indices[rank::world_size]`` (balanced to within one image)."""
    if not 0 <= rank < world_size:
        raise SinfError(f"rank {rank} outside 0..{world_size - 1}")
    return np.asarray(indices)[rank::world_size]


def all_reduce_stats(stats: ActivationStats, device: torch.device | str = "cpu") -> ActivationStats:
    """Sum every summed tensor of ``stats`` over all ranks with one all-reduce (float64 buffer on
    ``device``; nccl needs a CUDA device). A no-op without a process group."""
    rank, size = world()
    if size == 1:
        return stats
    tensors = stats.to_tensors()
    keys = [k for k in tensors if is_summable_key(k)]
    flat = torch.cat([tensors[k].reshape(-1).to(torch.float64) for k in keys]).to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu()
    out, offset = dict(tensors), 0
    for k in keys:
        t = tensors[k]
        out[k] = flat[offset : offset + t.numel()].view(t.shape).to(t.dtype)
        offset += t.numel()
    return ActivationStats.from_tensors(out, stats.layers)


def collect_stats_sharded(model: SinfModel, dataset: ImageDataset, indices: np.ndarray | None = None,
                          rt: Runtime | None = None, *, feature_sample: int | np.ndarray = 0, sample_seed: int = 0, **options) -> ActivationStats:
    """``collect_stats`` (the same arguments; ``options``: its ``layers`` and ``on_batch``) over this
    rank's shard of ``indices``, all-reduced: every rank returns the statistics of all of ``indices``. The
    feature subsample is chosen over all of ``indices`` before sharding, so it is the one a single process
    would keep."""
    idx = pass_indices(dataset, indices)
    sample = feature_sample_positions(dataset, idx, feature_sample, sample_seed)
    rank, size = world()
    rt = Runtime.resolve(rt, model)
    part = collect_stats(model, dataset, shard_indices(idx, rank, size), rt, feature_sample=sample, **options)
    return all_reduce_stats(part, rt.device)
