"""How things run: one ``Runtime`` (device, precision, memory layout, batch size, CPU threads, progress),
created once (from the command line, the app, or by hand) and passed down to every pass over data.

Each default is written once, here, in the field's definition; the command-line flags are derived from
the fields (``add_runtime_options`` / ``runtime_from_args``), so a flag cannot drift from the
library's default. A function given no runtime runs on the defaults on its model's device
(``Runtime.resolve``): it never picks a device of its own.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterator

import torch
from torch import nn

from .device import autocast, module_device, pick_device, resolve_bf16, synchronize

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


def _flag(help: str, **argparse_kwargs) -> dict:
    return {"help": help, "argparse": argparse_kwargs}


@dataclass(frozen=True)
class Runtime:
    """How a pass over data runs. Frozen: derive a variant with ``with_(...)``.

    ``device``: where models and tensors live (picked once: CUDA when available, else the CPU).
    ``bf16``: bf16 autocast. ``channels_last``: inputs and modules in channels-last layout (on CPU it is
    faster in float32 too: 1.2-1.4x on the CIFAR models here). ``batch_size``: images per forward pass
    (inference passes; training has its own). ``threads``: torch CPU threads while ``applied()`` (None:
    leave torch's). ``on_progress(stage, done, total)``: progress of long multi-stage work (not part of
    the runtime's identity: two runtimes differing only in it are equal).
    """

    device: torch.device = field(default_factory=lambda: pick_device(None), metadata=_flag(
        "cpu, cuda, cuda:N or auto (default: CUDA when available, else the CPU)", default="auto"))
    bf16: bool = field(default=False, metadata=_flag(
        "bf16 autocast (fast on CPUs with AMX or avx512_bf16 and on GPUs; may change a few predictions)",
        action="store_true"))
    channels_last: bool = field(default=True, metadata=_flag(
        "keep the default NCHW layout instead of channels-last", flag="--no-channels-last", action="store_false"))
    batch_size: int = field(default=256, metadata=_flag("images per forward pass", type=int))
    threads: int | None = field(default=None, metadata=_flag(
        "torch CPU threads (default: torch's; 1 is steadier on a busy machine)", type=int))
    on_progress: ProgressFn | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        from .errors import SinfError

        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "bf16", bool(self.bf16))
        object.__setattr__(self, "channels_last", bool(self.channels_last))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SinfError(f"the batch size must be a positive integer, got {self.batch_size!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SinfError(f"threads must be a positive integer, got {self.threads!r}")

    # ---------------------------------------------------------------- making one
    @classmethod
    def create(cls, device: str | torch.device | None = None, bf16: bool | None = False, **kw) -> "Runtime":
        """A runtime on ``device`` ('auto' / None: CUDA when available) with ``bf16`` as asked (None:
        'auto', on where it is fast: ``device.bf16_is_fast``); the other fields as given or default."""
        dev = pick_device(None if device is None else str(device))
        return cls(device=dev, bf16=resolve_bf16(bf16, dev), **kw)

    @classmethod
    def resolve(cls, rt: "Runtime | None", module: nn.Module | None = None) -> "Runtime":
        """``rt``, or the default runtime on ``module``'s device when None."""
        if rt is not None:
            return rt
        return cls(device=module_device(module) if module is not None else torch.device("cpu"))

    def with_(self, **changes) -> "Runtime":
        return replace(self, **changes)

    def to_json(self) -> dict:
        """What the runtime records in results and cache keys (its device as a string; no progress)."""
        return {"device": str(self.device), "bf16": self.bf16, "channels_last": self.channels_last,
                "batch_size": self.batch_size, "threads": self.threads}

    # ---------------------------------------------------------------- running
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device when ``bf16``, else a no-op."""
        return autocast(self.device, self.bf16)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, in the runtime's memory layout (4-D tensors)."""
        return self.layout(x.to(self.device, non_blocking=True))

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the runtime's memory layout, where it is (4-D tensors)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def ready(self, module: nn.Module, fold_bn: bool = False) -> nn.Module:
        """``module`` as it runs here: on the device, in the layout, BatchNorm folded when asked (a copy
        when anything changes; ``fusion.prepare_for_inference``)."""
        from .fusion import prepare_for_inference

        return prepare_for_inference(module, fold_bn=fold_bn, channels_last=self.channels_last, device=self.device)

    def batches(self, n: int) -> Iterator[slice]:
        """Slices cutting ``range(n)`` into batches of ``batch_size``."""
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    def sync(self) -> None:
        """Wait for queued device work (before reading a clock)."""
        synchronize(self.device)

    @contextlib.contextmanager
    def applied(self) -> Iterator["Runtime"]:
        """Within: torch runs on ``threads`` CPU threads (restored on exit)."""
        old = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            yield self
        finally:
            if self.threads is not None:
                torch.set_num_threads(old)

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    def counter(self, stage: str, total: int) -> Callable[[int], None]:
        """An ``on_batch(n)`` callback that reports ``stage`` as ``n`` more of ``total`` done."""
        done = [0]

        def on_batch(n: int) -> None:
            done[0] += n
            self.progress(stage, done[0], total)

        return on_batch


RUNTIME_OPTIONS = tuple(f.name for f in fields(Runtime) if "argparse" in f.metadata)


def _option_flag(f) -> str:
    return f.metadata["argparse"].get("flag", "--" + f.name.replace("_", "-"))


def add_runtime_options(p: argparse.ArgumentParser, names: tuple[str, ...] = RUNTIME_OPTIONS,
                        help: dict[str, str] | None = None) -> None:
    """Add the flags of the Runtime fields ``names`` to ``p``, derived from the fields (help, type,
    default). ``help`` overrides a field's help text for this command."""
    for f in fields(Runtime):
        if f.name not in names:
            continue
        kw = {k: v for k, v in f.metadata["argparse"].items() if k != "flag"}
        kw.setdefault("default", None if kw.get("action") is None else argparse.SUPPRESS)
        text = (help or {}).get(f.name, f.metadata["help"])
        if kw.get("type") is int and isinstance(f.default, int):  # the default, from the field itself
            text += f" (default {f.default})"
        p.add_argument(_option_flag(f), dest=f.name, help=text.replace("%", "%%"), **kw)


def runtime_from_args(args: argparse.Namespace, on_progress: ProgressFn | None = None) -> Runtime:
    """The Runtime of a command's flags (``add_runtime_options``); a field the command has no flag for,
    or whose flag was not given, keeps its default."""
    given = {n: getattr(args, n) for n in RUNTIME_OPTIONS if getattr(args, n, None) is not None}
    device = given.pop("device", None)
    return Runtime.create(device, bf16=given.pop("bf16", False), on_progress=on_progress, **given)
