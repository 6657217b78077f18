"""Device choice and precision: pick the device once, move tensors once, sync before reading clocks."""

from __future__ import annotations

import contextlib
import time

import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` ('cpu', 'cuda', 'cuda:1') or, when None/'auto', CUDA if available else CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import SinfError

        raise SinfError("CUDA was requested but no CUDA device is available; use --device cpu.")
    return dev


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the given device (AMX on CPU), or a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device) -> float:
    """A wall-clock reading taken after all queued device work finished."""
    synchronize(device)
    return time.perf_counter()
