"""Device choice and precision: pick the device once, move tensors once, sync before reading clocks."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from pathlib import Path

import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` ('cpu', 'cuda', 'cuda:1') or, when None/'auto', CUDA if available else CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .errors import SinfError

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise SinfError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SinfError("CUDA was requested but no CUDA device is available; use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SinfError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0.."
                        f"cuda:{torch.cuda.device_count() - 1})")
    return dev


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds convolutions up on ``device``: a CUDA GPU with bf16, or a CPU with
    AMX (``amx_bf16``) or AVX-512 bf16 instructions (``avx512_bf16``: measured on an AMD EPYC, ResNet-56
    inference 1.8x and ResNet-18 training 1.9x faster than float32). On a CPU with neither (AVX2 only)
    oneDNN has no bf16 kernels worth the name: ResNet-56 inference ran 6.5x slower in bf16 than in float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())
    return False


def resolve_bf16(bf16: bool | None, device: torch.device | str) -> bool:
    """``bf16`` as asked, or for None ('auto') whether it is fast on ``device`` (``bf16_is_fast``)."""
    return bf16_is_fast(device) if bf16 is None else bool(bf16)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the given device (AMX on CPU), or a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without parameters)."""
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device) -> float:
    """A wall-clock reading taken after all queued device work finished."""
    synchronize(device)
    return time.perf_counter()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info
