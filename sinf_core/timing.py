"""Timing side by side: every contender on the same inputs, interleaved in a rotating order, the clock
read after a device synchronisation, medians with their spread, and speed ratios PAIRED per repetition
(the reference's time over the contender's within the same round), which cancels load that drifts
slower than one round. The benchmark (``sinf bench``) and SINF Studio's Live page both time with these.
"""

from __future__ import annotations

import statistics
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .device import timed
from .errors import SinfError

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
NOISY_SPREAD = 0.15  # a ratio whose interquartile range spans more than this fraction of its median is marked noisy


def spread(values: Sequence[float]) -> dict:
    """Median, quartiles and the relative interquartile range of ``values``; ``noisy`` when that range
    is wider than ``NOISY_SPREAD`` of the median (or there are fewer than 3 values)."""
    v = [float(x) for x in values]
    if not v:
        raise SinfError("no measurements to summarise")
    q25, med, q75 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    rel = (q75 - q25) / abs(med) if med else float("inf")
    return {"median": med, "q25": q25, "q75": q75, "relative_iqr": rel, "n": len(v),
            "noisy": bool(len(v) < 3 or rel > NOISY_SPREAD)}




def _rotation(names: Sequence[str], i: int) -> list[str]:
    k = i % len(names)
    return list(names[k:]) + list(names[:k])


def interleaved_latency(
    contenders: Mapping[str, Callable[[torch.Tensor], object]],
    images: torch.Tensor,
    calls: int = 200,
    warmup: int = 20,
    device: torch.device | str = "cpu",
    on_progress: ProgressFn | None = None,
) -> dict[str, dict]:
    """Batch-size-1 latency of several callables, measured side by side.

    ``images`` [M, C, H, W] are prepared inputs (already on ``device``); call i feeds image
    ``i % M`` (as a batch of one) to every contender, in an order that rotates with i, so drift and
    noise hit all alike and every contender sees the same images (their routes differ per image).
    ``warmup`` untimed rounds first. The clock is read after a device synchronisation.
    Returns {name: {median_ms, p10_ms, p90_ms, q25_ms, q75_ms, mean_ms, calls, all_ms}} (``all_ms`` in call
    order, so ratios can be paired call by call).
    """
    if not contenders:
        raise SinfError("no contenders to time")
    if images.ndim != 4 or images.shape[0] == 0:
        raise SinfError(f"latency needs a non-empty image batch [M, C, H, W], got {list(images.shape)}")
    if calls < 1 or warmup < 0:
        raise SinfError("latency needs calls >= 1 and warmup >= 0")
    device = torch.device(device)
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    m = int(images.shape[0])
    with torch.inference_mode():
        for i in range(warmup + calls):
            x = images[i % m : i % m + 1]
            for name in _rotation(names, i):
                t0 = timed(device)
                contenders[name](x)
                t1 = timed(device)
                if i >= warmup:
                    times[name].append((t1 - t0) * 1000.0)
            if on_progress:
                on_progress("latency (batch 1)", i + 1, warmup + calls)
    out = {}
    for n, ts in times.items():
        q = np.percentile(ts, [10, 25, 75, 90])
        out[n] = {"median_ms": float(statistics.median(ts)), "p10_ms": float(q[0]), "p90_ms": float(q[3]),
                  "q25_ms": float(q[1]), "q75_ms": float(q[2]), "mean_ms": float(np.mean(ts)), "calls": len(ts),
                  "all_ms": list(ts)}
    return out


def interleaved_throughput(
    contenders: Mapping[str, Callable[[torch.Tensor], object]],
    pool: torch.Tensor,
    reps: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    on_progress: ProgressFn | None = None,
) -> dict[str, dict]:
    """Images per second of several callables over the same ``pool`` [N, C, H, W], side by side.

    Each repetition runs every contender once over the whole pool (each callable batches it its own
    way: the base in fixed batches, SINF's ``run_pool`` grouping routes over the pool), in an order
    that rotates with the repetition. ``warmup`` untimed rounds first. Returns {name: {ips (pool size /
    median seconds), median_s, all_s}}.
    """
    if not contenders:
        raise SinfError("no contenders to time")
    if pool.ndim != 4 or pool.shape[0] == 0:
        raise SinfError(f"throughput needs a non-empty image pool [N, C, H, W], got {list(pool.shape)}")
    if reps < 1 or warmup < 0:
        raise SinfError("throughput needs reps >= 1 and warmup >= 0")
    device = torch.device(device)
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    total = (warmup + reps) * len(names)
    done = 0
    with torch.inference_mode():
        for i in range(warmup + reps):
            for name in _rotation(names, i):
                t0 = timed(device)
                contenders[name](pool)
                t1 = timed(device)
                if i >= warmup:
                    times[name].append(t1 - t0)
                done += 1
                if on_progress:
                    on_progress("throughput", done, total)
    n = int(pool.shape[0])
    return {k: {"ips": n / statistics.median(v), "ips_best": n / min(v), "median_s": float(statistics.median(v)),
                "all_s": list(v)} for k, v in times.items()}


def paired_ratios(tp: Mapping[str, dict], name: str, ref: str = "base") -> list[float]:
    """Per-repetition speed ratios ``ref`` time / ``name`` time (> 1: ``name`` is faster) from an
    ``interleaved_throughput`` result. The two ran back to back in the same repetition, so a ratio
    is insensitive to load that drifts over longer times than one repetition; the median of these
    paired ratios is the benchmark's throughput ratio."""
    return [a / b for a, b in zip(tp[ref]["all_s"], tp[name]["all_s"])]




def paired_stream(
    contenders: Mapping[str, Callable[[torch.Tensor], object]],
    batches: Sequence[torch.Tensor],
    reference: str,
    rounds: int = 2,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """A stream of batches through every contender, each batch fed to all of them back to back in an
    order that rotates with the batch, ``rounds`` times over the stream (``warmup`` untimed batches
    first). Per contender: ``seconds`` (every timed batch), ``ips`` (images / total time); per
    contender other than ``reference``: ``ratio`` = ``spread`` of the paired per-batch ratios
    (reference time / contender time: > 1 is faster). ``on_batch(done, total, partial result)`` after
    every timed batch."""
    if reference not in contenders:
        raise SinfError(f"the reference {reference!r} is not among the contenders {list(contenders)}")
    batches = [b for b in batches if b.shape[0] > 0]
    if not batches or rounds < 1 or warmup < 0:
        raise SinfError("a timed stream needs at least one non-empty batch, rounds >= 1 and warmup >= 0")
    device = torch.device(device)
    names = list(contenders)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    sizes: list[int] = []
    total = rounds * len(batches)

    def result() -> dict:
        n_img = sum(sizes)
        out = {n: {"seconds": list(ts), "ips": n_img / sum(ts) if ts and sum(ts) > 0 else float("nan")} for n, ts in seconds.items()}
        for n in names:
            if n != reference and seconds[n]:
                out[n]["ratio"] = spread([a / b for a, b in zip(seconds[reference], seconds[n])])
        return out

    with torch.inference_mode():
        for i in range(warmup):
            for name in names:
                contenders[name](batches[i % len(batches)])
        k = 0
        for r in range(rounds):
            for j, x in enumerate(batches):
                for name in _rotation(names, k):
                    t0 = timed(device)
                    contenders[name](x)
                    seconds[name].append(timed(device) - t0)
                sizes.append(int(x.shape[0]))
                k += 1
                if on_batch:
                    on_batch(k, total, result())
    return result()
