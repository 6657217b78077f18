"""`sinf stats MODEL`: activation statistics of a split, cached on disk; `--time` compares with a forward pass.

Runs sharded under torchrun: ``torchrun --nproc_per_node=N -m sinf_core stats MODEL`` (gloo on CPU,
nccl on CUDA); every rank takes a strided shard, the sums are all-reduced, rank 0 writes the cache.
"""

from __future__ import annotations

import time

from .common import add_model_options, emit, open_from_args, progress

NAME = "stats"
HELP = "per-class activation statistics of every prunable layer (cached as safetensors + JSON)"
SPLITS = ("fit", "calib", "report", "test", "train")


def add_arguments(p) -> None:
    add_model_options(p, ("bf16", "batch_size"), {"bf16": "bf16 autocast for the statistics pass"})
    add_stats_options(p)
    p.add_argument("--split", choices=SPLITS, default="fit",
                   help="images to run over (default fit: what statistics may look at, METHOD.md section 0)")
    p.add_argument("--time", action="store_true",
                   help="also time a plain forward pass over the same images, side by side, and print the ratio")
    p.add_argument("--refresh", action="store_true", help="recompute even when the cache holds these statistics")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_stats_options(p) -> None:
    """Options every command that needs statistics shares."""
    p.add_argument("--feature-sample", type=int,
                   help="per-image penultimate features kept for the UMAP map (default 2000 on fit/train, else 0)")
    p.add_argument("--cache-dir", help="cache root (default $SINF_CACHE_DIR or ~/.cache/sinf)")


def split_data(exp, split: str):
    """(data set, indices or None) for a split name; the same convention the app and bundle use."""
    if split == "fit":
        return exp.train, exp.splits.fit
    if split == "calib":
        return exp.calib_data(), None
    if split == "report":
        return exp.report_data(), None
    return (exp.train if split == "train" else exp.test), None


def sample_size(args, split: str) -> int:
    """--feature-sample, default 2000 images on fit/train (for the UMAP map), none elsewhere."""
    if args.feature_sample is not None:
        return max(0, args.feature_sample)
    return 2000 if split in ("fit", "train") else 0


def stats_for(exp, args, split: str, quiet: bool, refresh: bool = False):
    """``cached_stats`` for ``split`` with a progress bar. Returns (stats, path, from_cache)."""
    from ..stats import cached_stats

    data, idx = split_data(exp, split)
    n = len(data) if idx is None else len(idx)
    sample = sample_size(args, split)
    bars = []

    def on_batch(k: int) -> None:  # the bar appears only when the pass runs (not on a cache hit)
        if not bars:
            bars.append(progress(n, f"stats {exp.model_name} [{split}]", quiet=quiet))
        bars[0].update(k)

    try:
        return cached_stats(exp.model_name, exp.model, data, split, idx, exp.runtime, sample, refresh, on_batch=on_batch, root=args.cache_dir)
    finally:
        for bar in bars:
            bar.close()


def run(args) -> int:
    from .. import distributed
    from ..errors import SinfError
    from ..stats import time_stats_vs_forward

    t0 = time.perf_counter()
    exp = open_from_args(args)
    exp.runtime = exp.runtime.with_(device=distributed.init_distributed(exp.device))
    exp.model.to(exp.device)
    rank, world = distributed.world()
    if args.time and world > 1:
        distributed.shutdown()
        raise SinfError("--time compares two passes in one process; run it without torchrun")
    quiet = args.json or rank != 0
    out: dict = {"model": args.model, "split": args.split, "world_size": world}
    try:
        if args.time:
            data, idx = split_data(exp, args.split)
            n = len(data) if idx is None else len(idx)
            bar = progress(n, f"time stats vs forward [{args.split}]", quiet=quiet)
            report, st = time_stats_vs_forward(exp.model, data, idx, exp.runtime, on_batch=bar.update)
            bar.close()
            out["timing"] = report
            if rank == 0:
                out["cache"], out["cached"] = str(_save(exp, args, data, idx, st, 0)), False
        elif world > 1:
            st, path = _sharded(exp, args)
            out["cache"], out["cached"] = (str(path) if path else None), False
        else:
            st, path, hit = stats_for(exp, args, args.split, quiet, args.refresh)
            out["cache"], out["cached"] = str(path), hit
        out.update(_summary(st))
        out["seconds"] = round(time.perf_counter() - t0, 1)
        if rank == 0:
            emit(out, args.json, _text(out))
    finally:
        distributed.shutdown()
    return 0


def _sharded(exp, args):
    """The statistics pass over this rank's shard, all-reduced; rank 0 writes the cache entry."""
    from .. import distributed

    data, idx = split_data(exp, args.split)
    sample = sample_size(args, args.split)
    rank, world = distributed.world()
    n = len(data) if idx is None else len(idx)
    bar = progress((n + world - 1 - rank) // world, f"stats rank {rank}/{world}", quiet=args.json or rank != 0)
    st = distributed.collect_stats_sharded(exp.model, data, idx, exp.runtime, on_batch=bar.update,
                                           feature_sample=sample)
    bar.close()
    path = _save(exp, args, data, idx, st, sample, world_size=world) if rank == 0 else None
    return st, path


def _save(exp, args, data, idx, st, sample: int, **meta):
    """Write ``st`` where ``cached_stats`` looks for it (same key), so later commands reuse it."""
    from ..stats import save_stats, stats_cache_key, stats_cache_path

    key = stats_cache_key(args.model, exp.model, data, args.split, idx, exp.runtime.bf16, sample)
    path = stats_cache_path(key, args.cache_dir)  # where ``cached_stats`` reads
    return save_stats(path, st, {"model": args.model, "split": args.split, "dataset": data.name, "bf16": exp.runtime.bf16,
                                 "feature_sample": sample, "key": key, **meta})


def _summary(st) -> dict:
    layers = []
    for name in st.layers:
        mean = st.group_mean(name, [c for c in range(st.num_classes) if st.count[c] > 0])
        zero = st.group_zero_fraction(name, [c for c in range(st.num_classes) if st.count[c] > 0])
        layers.append({"layer": name, "channels": st.channels(name), "mean_activation": round(float(mean.mean()), 4),
                       "zero_fraction": round(float(zero.mean()), 4), "dead_channels": int((zero >= 1.0).sum())})
    return {"samples": st.total, "classes_seen": int((st.count > 0).sum()), "layers": layers}


def _text(out: dict) -> str:
    lines = [f"{out['model']} statistics over {out['split']}: {out['samples']} images, "
             f"{out['classes_seen']} classes, {len(out['layers'])} layers ({out['seconds']} s)"]
    if out.get("cache"):
        lines.append(f"  cache: {out['cache']}{' (reused)' if out.get('cached') else ''}")
    if "timing" in out:
        t = out["timing"]
        lines.append(f"  timing over {t['images']} images (batch {t['batch_size']}, {t['chunks']} interleaved chunks):"
                     f" forward {t['forward_s']:.1f} s, stats {t['stats_s']:.1f} s, ratio {t['ratio']:.2f}x"
                     f" (median per chunk {t['ratio_median']:.2f}x)")
    lines.append(f"  {'layer':<20} {'C':>4} {'mean a_l':>9} {'zero frac':>9} {'dead':>5}")
    for r in out["layers"]:
        lines.append(f"  {r['layer']:<20} {r['channels']:>4} {r['mean_activation']:>9.4f} {r['zero_fraction']:>9.4f}"
                     f" {r['dead_channels']:>5}")
    return "\n".join(lines)
