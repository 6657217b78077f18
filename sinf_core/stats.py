"""Streaming, mergeable per-channel activation statistics (METHOD.md notation and section 2).

One forward pass with hooks (``sinf_core.hooks.activations``) accumulates, for every prunable layer l
and every class k, sums over the samples of class k of

- a_l(x): the spatial mean of A_l(x) = relu(bn_l(conv_l(x))), float64 [num_classes, C_l] (``sum``);
- a_l(x) ** 2 (``sumsq``), for variances;
- the fraction of A_l(x)'s positions that are exactly zero (``zero``), for APoZ.

In the same pass it also sums, per class, the penultimate feature (the input of the classifier's last
linear layer; class prototypes, METHOD.md section 1), the predicted-class counts (``confusion``) and the
softmax probabilities (``prob_sum``), and keeps the penultimate features of a fixed subsample of images
(for the UMAP map). Every summed tensor is an exact sum over samples, so statistics of disjoint parts
merge by addition (``merge``) and shard across processes with an all-reduce (``sinf_core.distributed``).
No feature map outlives its hook call: memory is O(num_classes x channels) plus the subsample.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .artifacts import CACHE_STATS, JSON, folder_name, stats_cache_file
from .data import ImageDataset, iterate_batches
from .device import timed
from .errors import SinfError
from .hooks import activations
from .io import CACHE_ENV, cache_dir, state_dict_sha256  # noqa: F401  (re-exported)
from .models import PrunableLayer, SinfModel
from .models.base import DEFAULT_INPUT_SHAPE
from .runtime import Runtime

STATS_FORMAT = 1
_FIXED_KEYS = ("sample_index", "sample_labels")  # identical in every part; not summed


@dataclass
class ActivationStats:
    """Per-class sums over samples (see the module docstring). Shapes: K = num_classes, C = channels
    of a layer, D = penultimate width, S = size of the feature subsample."""

    layers: list[str]  # prunable layer names, forward order
    num_classes: int
    count: torch.Tensor  # float64 [K], samples seen per class
    sum: dict[str, torch.Tensor]  # float64 [K, C]: sum over samples of a_l
    sumsq: dict[str, torch.Tensor]  # float64 [K, C]: sum over samples of a_l ** 2
    zero: dict[str, torch.Tensor]  # float64 [K, C]: sum over samples of the zero fraction of A_l
    penultimate_sum: torch.Tensor | None = None  # float64 [K, D]
    confusion: torch.Tensor | None = None  # float64 [K, K]: row = true class, column = argmax prediction
    prob_sum: torch.Tensor | None = None  # float64 [K, K]: row = true class, sum of softmax probabilities
    sample_index: torch.Tensor | None = None  # int64 [S]: data-set positions of the feature subsample
    sample_labels: torch.Tensor | None = None  # int64 [S]
    sample_features: torch.Tensor | None = None  # float32 [S, D]; rows of unseen samples are zero
    sample_seen: torch.Tensor | None = None  # float64 [S]: 1 where the pass saw that sample

    # ----------------------------------------------------------------- access
    def channels(self, layer: str) -> int:
        return int(self._get(self.sum, layer).shape[1])

    @property
    def total(self) -> int:
        return int(self.count.sum().item())

    def class_mean(self, layer: str) -> torch.Tensor:
        """Mean of a_l over each class's samples, float64 [K, C]; NaN rows for classes never seen."""
        return self._get(self.sum, layer) / self.count[:, None]

    def class_zero_fraction(self, layer: str) -> torch.Tensor:
        """Mean zero fraction of A_l per class, float64 [K, C]; NaN rows for classes never seen."""
        return self._get(self.zero, layer) / self.count[:, None]

    def class_var(self, layer: str) -> torch.Tensor:
        """Variance of a_l over each class's samples (population), float64 [K, C]."""
        mean = self.class_mean(layer)
        return (self._get(self.sumsq, layer) / self.count[:, None] - mean * mean).clamp_min(0.0)

    def group_mean(self, layer: str, classes: Sequence[int]) -> torch.Tensor:
        """Mean of a_l over all samples of ``classes`` (sample-weighted), float64 [C]."""
        idx, n = self._group(classes)
        return self._get(self.sum, layer)[idx].sum(0) / n

    def group_zero_fraction(self, layer: str, classes: Sequence[int]) -> torch.Tensor:
        """Mean zero fraction of A_l over all samples of ``classes``, float64 [C] (APoZ)."""
        idx, n = self._group(classes)
        return self._get(self.zero, layer)[idx].sum(0) / n

    def group_var(self, layer: str, classes: Sequence[int]) -> torch.Tensor:
        """Variance of a_l over all samples of ``classes``, float64 [C]."""
        idx, n = self._group(classes)
        mean = self._get(self.sum, layer)[idx].sum(0) / n
        return (self._get(self.sumsq, layer)[idx].sum(0) / n - mean * mean).clamp_min(0.0)

    def class_prototypes(self) -> torch.Tensor:
        """Mean penultimate feature per class, float64 [K, D] (not normalised); NaN rows if unseen."""
        if self.penultimate_sum is None:
            raise SinfError("these statistics hold no penultimate features")
        return self.penultimate_sum / self.count[:, None]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions [S'], labels [S'], penultimate features [S', D]) of the subsample rows seen."""
        if self.sample_features is None or self.sample_seen is None:
            raise SinfError("these statistics hold no per-image feature sample (collect with feature_sample > 0)")
        seen = self.sample_seen > 0
        return self.sample_index[seen], self.sample_labels[seen], self.sample_features[seen]

    def _get(self, table: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
        if layer not in table:
            raise SinfError(f"no statistics for layer {layer!r}; known: {', '.join(self.layers)}")
        return table[layer]

    def _group(self, classes: Sequence[int]) -> tuple[torch.Tensor, float]:
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        if idx.numel() == 0:
            raise SinfError("a group needs at least one class")
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_classes:
            raise SinfError(f"class index outside 0..{self.num_classes - 1}")
        n = float(self.count[idx].sum())
        if n == 0:
            raise SinfError(f"no samples of classes {idx.tolist()[:8]} in these statistics")
        return idx, n

    # --------------------------------------------------------------- combine
    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Statistics of the union of two disjoint sample sets: every sum added (exact in float64)."""
        if self.layers != other.layers or self.num_classes != other.num_classes:
            raise SinfError("cannot merge statistics of different layers or class counts")
        a, b = self.to_tensors(), other.to_tensors()
        if a.keys() != b.keys():
            raise SinfError("cannot merge statistics holding different quantities")
        out = {}
        for k in a:
            if is_summable_key(k):
                out[k] = a[k] + b[k]
            else:
                if not torch.equal(a[k], b[k]):
                    raise SinfError(f"cannot merge: the two parts disagree on {k}")
                out[k] = a[k]
        return ActivationStats.from_tensors(out, self.layers)

    def map_sums(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ActivationStats":
        """A copy with ``fn`` applied to every summed tensor (e.g. an all-reduce, a device move)."""
        t = self.to_tensors()
        return ActivationStats.from_tensors({k: fn(v) if is_summable_key(k) else v for k, v in t.items()}, self.layers)

    # ------------------------------------------------------------ serialise
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor dict (contiguous, CPU-agnostic) for safetensors. Layer order is kept in
        ``order/<layer>`` scalars so ``from_tensors`` needs nothing else."""
        t: dict[str, torch.Tensor] = {"count": self.count}
        for i, name in enumerate(self.layers):
            t[f"order/{name}"] = torch.tensor(i, dtype=torch.int64)
            t[f"sum/{name}"] = self.sum[name]
            t[f"sumsq/{name}"] = self.sumsq[name]
            t[f"zero/{name}"] = self.zero[name]
        for key in ("penultimate_sum", "confusion", "prob_sum", "sample_index", "sample_labels",
                    "sample_features", "sample_seen"):
            v = getattr(self, key)
            if v is not None:
                t[key] = v
        return {k: v.contiguous() for k, v in t.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], layers: Sequence[str] | None = None) -> "ActivationStats":
        """Inverse of ``to_tensors``; checks that every layer has its three tables and that shapes agree."""
        try:
            if layers is None:
                order = {k[len("order/"):]: int(v) for k, v in tensors.items() if k.startswith("order/")}
                layers = sorted(order, key=order.__getitem__)
            layers = list(layers)
            count = tensors["count"].to(torch.float64)
            k = int(count.shape[0])
            tables = {}
            for kind in ("sum", "sumsq", "zero"):
                tables[kind] = {n: tensors[f"{kind}/{n}"].to(torch.float64) for n in layers}
                for n, v in tables[kind].items():
                    if v.ndim != 2 or v.shape[0] != k or v.shape[1] != tables["sum"][n].shape[1]:
                        raise SinfError(f"statistics table {kind}/{n} has shape {tuple(v.shape)}")
        except KeyError as exc:
            raise SinfError(f"statistics are incomplete: missing {exc.args[0]!r}") from exc
        opt = {key: tensors.get(key) for key in ("penultimate_sum", "confusion", "prob_sum", "sample_index",
                                                   "sample_labels", "sample_features", "sample_seen")}
        return cls(layers, k, count, tables["sum"], tables["sumsq"], tables["zero"], **opt)

    def to(self, device: torch.device | str) -> "ActivationStats":
        return ActivationStats.from_tensors({k: v.to(device) for k, v in self.to_tensors().items()}, self.layers)


def is_summable_key(key: str) -> bool:
    """Whether a ``to_tensors`` entry is a sum over samples (merged by addition / all-reduce SUM)."""
    return not key.startswith("order/") and key not in _FIXED_KEYS


# ---------------------------------------------------------------------- the pass
def _resolve_layers(model: SinfModel, layers: Sequence[str | PrunableLayer] | None) -> list[PrunableLayer]:
    if layers is None:
        return list(model.prunable_layers())
    return [l if isinstance(l, PrunableLayer) else model.prunable_layer(l) for l in layers]


def pass_indices(dataset: ImageDataset, indices: np.ndarray | None) -> np.ndarray:
    """The data-set positions a pass visits: ``indices`` as int64, or all of them when None."""
    return np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)


def choose_sample(dataset: ImageDataset, indices: np.ndarray | None, size: int, seed: int = 0) -> np.ndarray:
    """``size`` data-set positions drawn (without replacement, fixed seed) from ``indices``, sorted.
    Choose it once before sharding so every part of a split pass fills the same subsample."""
    idx = pass_indices(dataset, indices)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    if size >= len(idx):
        return np.sort(idx)
    return np.sort(np.random.default_rng(seed).choice(idx, size=size, replace=False))


def feature_sample_positions(dataset: ImageDataset, indices: np.ndarray | None, feature_sample: int | np.ndarray,
                             seed: int = 0) -> np.ndarray:
    """The sorted data-set positions whose penultimate features a pass keeps: ``feature_sample`` images
    drawn from ``indices`` with ``seed`` (``choose_sample``), or exactly the positions of an array
    ``feature_sample``. A sharded pass resolves it over all of ``indices`` before sharding."""
    if np.ndim(feature_sample) == 0:
        return choose_sample(dataset, indices, int(feature_sample), seed)
    return np.sort(np.asarray(feature_sample, dtype=np.int64))


@torch.inference_mode()
def collect_stats(
    model: SinfModel,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    rt: Runtime | None = None,
    layers: Sequence[str | PrunableLayer] | None = None,
    on_batch: Callable[[int], None] | None = None,
    feature_sample: int | np.ndarray = 0,
    sample_seed: int = 0,
) -> ActivationStats:
    """One forward pass over ``dataset[indices]`` (all when None) accumulating ``ActivationStats``.

    ``feature_sample``: keep the penultimate features of this many images (drawn from ``indices`` with
    ``sample_seed``), or of exactly these data-set positions (an array; for sharded passes the same
    array is given to every shard). ``on_batch(n)`` is called after each batch (progress bars).
    Hooks are removed on exit, even on error. Per batch, each layer costs one reduction for a_l, one
    for the zero fraction, and one [K, N] x [N, 3C] float64 matmul of the batch's one-hot class matrix
    with the per-image values into the class table (``index_add_`` is far slower on CPU).
    """
    rt = Runtime.resolve(rt, model)
    device, batch_size = rt.device, rt.batch_size
    model.eval()
    plist = _resolve_layers(model, layers)
    if not plist:
        raise SinfError("the model has no prunable layers to collect statistics for")
    k = dataset.num_classes
    idx = pass_indices(dataset, indices)
    f64 = dict(dtype=torch.float64, device=device)
    table = {l.name: torch.zeros(k, 3 * l.channels, **f64) for l in plist}  # [sum | sumsq | zero]
    count = torch.zeros(k, **f64)
    classifier = model.classifier_layer()
    pen = torch.zeros(k, classifier.in_features, **f64)
    confusion = torch.zeros(k, k, **f64)
    prob_sum = torch.zeros(k, k, **f64)

    sample_pos = feature_sample_positions(dataset, indices, feature_sample, sample_seed)
    if len(sample_pos) and (sample_pos.min() < 0 or sample_pos.max() >= len(dataset)):
        raise SinfError("feature sample positions fall outside the data set")
    slot_of = np.full(len(dataset), -1, dtype=np.int64)
    slot_of[sample_pos] = np.arange(len(sample_pos))
    s_feat = torch.zeros(len(sample_pos), classifier.in_features, dtype=torch.float32, device=device)
    s_seen = torch.zeros(len(sample_pos), **f64)

    state: dict = {}

    def on_activation(layer: PrunableLayer, a: torch.Tensor) -> None:
        flat = a.flatten(2)  # [N, C, HW]
        m = flat.mean(2, dtype=torch.float32)  # a_l
        nz = flat.sign().mean(2, dtype=torch.float32)  # A >= 0: sign is 1 where positive, 0 where zero
        vals = torch.cat([m, m * m, 1.0 - nz], dim=1).to(torch.float64)  # [N, 3C]
        table[layer.name].addmm_(state["onehot"], vals)  # per-class sums: [K, N] @ [N, 3C]

    def on_penultimate(_mod, inputs) -> None:
        feat = inputs[0].float()
        pen.addmm_(state["onehot"], feat.to(torch.float64))
        if state["slots"] is not None:
            sel, rows = state["slots"]
            s_feat[sel] = feat[rows]

    handle = classifier.register_forward_pre_hook(on_penultimate)
    try:
        with activations(model, plist, on_activation):
            for start in range(0, len(idx), batch_size):
                pos = idx[start : start + batch_size]
                x, y = next(iterate_batches(dataset, len(pos), pos, device))
                onehot = torch.zeros(k, len(pos), **f64)  # [K, N]: class membership of the batch
                onehot[y, torch.arange(len(pos), device=device)] = 1.0
                state["onehot"] = onehot
                slots = slot_of[pos]
                hit = np.flatnonzero(slots >= 0)
                state["slots"] = None
                if len(hit):
                    sel = torch.as_tensor(slots[hit], device=device)
                    state["slots"] = (sel, torch.as_tensor(hit, device=device))
                    s_seen[sel] = 1.0
                with rt.autocast():
                    logits = model(x).float()
                count.add_(onehot.sum(1))
                pred = torch.zeros(len(pos), k, **f64)
                pred[torch.arange(len(pos), device=device), logits.argmax(1)] = 1.0
                confusion.addmm_(onehot, pred)
                prob_sum.addmm_(onehot, torch.softmax(logits, 1).to(torch.float64))
                if on_batch:
                    on_batch(len(pos))
    finally:
        handle.remove()

    names = [l.name for l in plist]
    split = {n: table[n].cpu().split([l.channels] * 3, dim=1) for n, l in zip(names, plist)}
    has_sample = len(sample_pos) > 0
    return ActivationStats(
        layers=names,
        num_classes=k,
        count=count.cpu(),
        sum={n: s[0].contiguous() for n, s in split.items()},
        sumsq={n: s[1].contiguous() for n, s in split.items()},
        zero={n: s[2].contiguous() for n, s in split.items()},
        penultimate_sum=pen.cpu(),
        confusion=confusion.cpu(),
        prob_sum=prob_sum.cpu(),
        sample_index=torch.as_tensor(sample_pos) if has_sample else None,
        sample_labels=dataset.labels[torch.as_tensor(sample_pos)].clone() if has_sample else None,
        sample_features=s_feat.cpu() if has_sample else None,
        sample_seen=s_seen.cpu() if has_sample else None,
    )


@torch.inference_mode()
def forward_pass(
    model: torch.nn.Module,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    rt: Runtime | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """A plain forward pass over the same batches ``collect_stats`` sees (the timing baseline)."""
    rt = Runtime.resolve(rt, model)
    model.eval()
    for x, _ in iterate_batches(dataset, rt.batch_size, indices, rt.device):
        with rt.autocast():
            model(x)
        if on_batch:
            on_batch(len(x))


def time_stats_vs_forward(
    model: SinfModel,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    rt: Runtime | None = None,
    chunk_batches: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict, ActivationStats]:
    """Wall-clock time of a plain forward pass and of ``collect_stats`` over the same images, measured
    side by side in one process: the images are cut into chunks of ``chunk_batches`` batches and each
    chunk runs both ways back to back (alternating which goes first), so load from other work on the
    machine hits both alike. The chunk statistics are merged, so the full statistics come back too.

    Returns (report, stats): report has ``forward_s``, ``stats_s`` (totals), ``ratio`` (their quotient)
    and ``ratio_median`` (median over chunks)."""
    rt = Runtime.resolve(rt, model)
    device, batch_size = rt.device, rt.batch_size
    idx = pass_indices(dataset, indices)
    if len(idx) == 0:
        raise SinfError("nothing to time: no images selected")
    step = batch_size * max(1, chunk_batches)
    warm = idx[: min(len(idx), batch_size)]
    forward_pass(model, dataset, warm, rt)  # warm-up, not timed
    collect_stats(model, dataset, warm, rt)
    fwd, sts, merged = [], [], None
    for i, start in enumerate(range(0, len(idx), step)):
        chunk = idx[start : start + step]
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = timed(device)
            if which == 0:
                forward_pass(model, dataset, chunk, rt)
            else:
                part = collect_stats(model, dataset, chunk, rt)
                merged = part if merged is None else merged.merge(part)
            (fwd if which == 0 else sts).append(timed(device) - t0)
        if on_batch:
            on_batch(len(chunk))
    report = {
        "images": int(len(idx)),
        "batch_size": batch_size,
        "chunks": len(fwd),
        "forward_s": round(sum(fwd), 6),
        "stats_s": round(sum(sts), 6),
        "ratio": round(sum(sts) / sum(fwd), 3),
        "ratio_median": round(float(np.median(np.array(sts) / np.array(fwd))), 3),
        "threads": torch.get_num_threads(),
        "bf16": rt.bf16,
    }
    return report, merged


# ------------------------------------------------------------------ disk cache
def model_fingerprint(model: torch.nn.Module) -> str:
    """16 hex of the model's weights checksum (``io.state_dict_sha256``, the one bundles record)."""
    return state_dict_sha256(model)[:16]


def stats_cache_key(model_name: str, model: torch.nn.Module, dataset: ImageDataset, split: str,
                    indices: np.ndarray | None, bf16: bool, feature_sample: int) -> str:
    """model + checkpoint hash + split (+ what else changes the numbers: the exact images, bf16,
    the subsample size, the image size and the format version)."""
    idx = pass_indices(dataset, indices)
    h = hashlib.sha256()
    # the image size only when not the default one, so the keys of 32x32 runs stay those of before it was keyed
    size = [] if dataset.input_shape == DEFAULT_INPUT_SHAPE else [list(dataset.input_shape)]
    h.update(json.dumps([STATS_FORMAT, dataset.name, len(dataset), bool(bf16), int(feature_sample), *size]).encode())
    h.update(idx.astype(np.int64).tobytes())
    h.update(dataset.labels.numpy().astype(np.int64).tobytes())
    return f"{folder_name(model_name)}-{model_fingerprint(model)}-{split}-{h.hexdigest()[:12]}"


def stats_cache_path(key: str, root: str | Path | None = None) -> Path:
    """Where ``cached_stats`` keeps the statistics of ``key`` (``stats_cache_key``) under the cache root."""
    return cache_dir(root) / CACHE_STATS / stats_cache_file(key)


def save_stats(path: str | Path, stats: ActivationStats, meta: dict | None = None) -> Path:
    """``path`` (.safetensors) plus ``path`` with .json holding ``meta`` and the layer order; atomic."""
    from safetensors.torch import save_file

    from .io import atomic_write, write_json

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in stats.to_tensors().items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": str(STATS_FORMAT)}))
    write_json(path.with_suffix(JSON), {"format": STATS_FORMAT, "layers": stats.layers,
                                           "num_classes": stats.num_classes, "samples": stats.total, **(meta or {})})
    return path


def load_stats(path: str | Path) -> tuple[ActivationStats, dict]:
    """(stats, meta) from ``save_stats`` files; a clear error when missing, partial or from another format."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_suffix(JSON)
    if not path.is_file() or not meta_path.is_file():
        raise SinfError(f"statistics file missing: {path} (and its .json)")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(path))
    except Exception as exc:
        raise SinfError(f"cannot read statistics {path}: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT:
        raise SinfError(f"statistics {path} were written by another format version")
    stats = ActivationStats.from_tensors(tensors, meta.get("layers"))
    return stats, meta


def cached_stats(
    model_name: str,
    model: SinfModel,
    dataset: ImageDataset,
    split: str,
    indices: np.ndarray | None = None,
    rt: Runtime | None = None,
    feature_sample: int = 2000,
    refresh: bool = False,
    on_batch: Callable[[int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    root: str | Path | None = None,
) -> tuple[ActivationStats, Path, bool]:
    """``collect_stats`` behind the disk cache. Returns (stats, safetensors path, loaded-from-cache).
    A cache entry that cannot be read is recomputed and replaced."""
    rt = Runtime.resolve(rt, model)
    key = stats_cache_key(model_name, model, dataset, split, indices, rt.bf16, feature_sample)
    path = stats_cache_path(key, root)
    if path.is_file() and not refresh:
        try:
            stats, _ = load_stats(path)
            return stats, path, True
        except SinfError as exc:
            if on_status:
                on_status(f"ignoring unreadable cache entry ({exc}); recomputing")
    stats = collect_stats(model, dataset, indices, rt, on_batch=on_batch, feature_sample=feature_sample)
    save_stats(path, stats, {"model": model_name, "split": split, "dataset": dataset.name, "bf16": rt.bf16,
                             "feature_sample": feature_sample, "key": key})
    return stats, path, False
