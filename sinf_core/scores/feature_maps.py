"""One streamed pass over the data that feeds every feature-map score, keeping only bounded reductions.

``stream(model, layers, data, reducers)`` runs the model once over the union of the rows the reducers
want (only up to the deepest requested layer) and hands each reducer the BN output z_l (pre-ReLU,
[n, C, H, W]) of the rows it asked for; A_l = relu(z_l) is what METHOD.md calls the activation.
(``sinf_core.hooks.activations`` exposes only relu(z); TVSPrune's own code reads the BN output, so the
stream hooks the BN module itself.) Reducers keep per-class sums or small per-sample vectors, never whole
feature maps per sample, so memory is bounded by classes x channels (x H x W for the TVS class means).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageDataset, iterate_batches
from ..models import PrunableLayer, SinfModel
from ..runtime import Runtime


def sample_indices(labels: np.ndarray, classes: Sequence[int], cap: int | None, seed: int = 0) -> np.ndarray:
    """Rows of ``classes``: at most ``cap`` per class (None/0 = all), sorted.

    The choice per class depends only on (seed, class), so a cluster's rows are the same whether it is
    scored alone or with all clusters, and a smaller cap picks a subset of a larger one."""
    labels = np.asarray(labels)
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if cap and len(idx) > cap:
            rng = np.random.default_rng([int(seed), int(c)])
            idx = np.sort(rng.permutation(idx)[: int(cap)])
        out.append(idx)
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def rows_key(rows: np.ndarray) -> str:
    """A short stable fingerprint of a row selection (reducers with equal keys are shared)."""
    import hashlib

    return f"{len(rows)}:{hashlib.sha1(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:12]}"


class Reducer:
    """Receives z (BN output, float32 [n, C, H, W]) and labels [n] of its own rows, layer by layer."""

    def __init__(self, rows: np.ndarray, layers: Sequence[str]):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.layers = list(layers)
        self.seconds = 0.0  # time spent in update() during the stream (for cost breakdowns)

    def update(self, layer: str, z: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------ per-sample channel vectors
def spatial_mean(z: torch.Tensor) -> torch.Tensor:
    """a_l: spatial mean of relu(z), [n, C]."""
    return torch.relu(z).mean(dim=(2, 3))


def zero_fraction(z: torch.Tensor) -> torch.Tensor:
    """Fraction of the positions where relu(z) is exactly zero, [n, C]."""
    return (z <= 0).sum(dim=(2, 3), dtype=torch.float32) / float(z.shape[2] * z.shape[3])


def map_rank(z: torch.Tensor) -> torch.Tensor:
    """HRank: rank of each H x W map of relu(z), [n, C] (torch's default SVD tolerance)."""
    return torch.linalg.matrix_rank(torch.relu(z).float()).to(torch.float32)


def nuclear_norm_drop(z: torch.Tensor, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """CHIP channel independence per sample, [n, C]:
    CI_c = ||A||_* - ||A with row c zeroed||_*, A = relu(z) reshaped to [C, H*W].

    Computed from the Gram matrix G = A A^T (nuclear norm = sum of sqrt of its eigenvalues; zeroing row c
    of A zeroes row and column c of G), batched over samples and channels in float64. When the map is
    smaller than the channel count (deep VGG layers: 256 channels on 4 x 4), the [HW, HW] Gram A^T A
    has the same non-zero eigenvalues and zeroing row c is the rank-one downdate A^T A - a_c a_c^T:
    C eigenproblems of size HW instead of C."""
    a = torch.relu(z).flatten(2).to(torch.float64)  # [n, C, HW]
    n, c, hw = a.shape
    if hw < c:
        gt = a.transpose(1, 2) @ a  # [n, HW, HW]
        full = torch.linalg.eigvalsh(gt).clamp_min(0).sqrt().sum(-1)
        out = torch.empty(n, c, dtype=torch.float64, device=gt.device)
        step = max(1, chunk_elems // (c * hw * hw))
        for s in range(0, n, step):
            sl = a[s : s + step]  # [m, C, HW]
            gc = gt[s : s + step, None] - sl[:, :, :, None] * sl[:, :, None, :]  # [m, C, HW, HW]
            out[s : s + step] = torch.linalg.eigvalsh(gc).clamp_min(0).sqrt().sum(-1)
        return (full[:, None] - out).to(torch.float32)
    g = a @ a.transpose(1, 2)  # [n, C, C]
    full = torch.linalg.eigvalsh(g).clamp_min(0).sqrt().sum(-1)  # [n]
    keep = 1.0 - torch.eye(c, dtype=g.dtype, device=g.device)  # [c_removed, C]
    mask = keep[:, :, None] * keep[:, None, :]  # [c_removed, C, C]
    out = torch.empty(n, c, dtype=torch.float64, device=g.device)
    step = max(1, chunk_elems // (c * c * c))
    for s in range(0, n, step):
        gc = g[s : s + step, None] * mask[None]  # [m, c_removed, C, C]
        out[s : s + step] = torch.linalg.eigvalsh(gc).clamp_min(0).sqrt().sum(-1)
    return (full[:, None] - out).to(torch.float32)


def spatial_mean_sq(z: torch.Tensor) -> torch.Tensor:
    """a_l ** 2, [n, C] (with ``spatial_mean``: the spread of a_l over samples)."""
    return spatial_mean(z) ** 2


VECTOR_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": spatial_mean,
    "mean_sq": spatial_mean_sq,
    "zero": zero_fraction,
    "rank": map_rank,
    "chip": nuclear_norm_drop,
}


class ClassVectorSums(Reducer):
    """Per class, the sum over samples of fn(z) [C] (fn one of ``VECTOR_FNS``), and the sample count."""

    def __init__(self, rows: np.ndarray, layers: Sequence[str], num_classes: int, fn: str):
        super().__init__(rows, layers)
        self.fn_name, self.fn, self.k = fn, VECTOR_FNS[fn], num_classes
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def update(self, layer: str, z: torch.Tensor, labels: torch.Tensor) -> None:
        v = self.fn(z).to(torch.float64).cpu()
        lab = labels.cpu()
        if layer not in self.sums:
            self.sums[layer] = torch.zeros(self.k, v.shape[1], dtype=torch.float64)
            self.counts[layer] = torch.zeros(self.k, dtype=torch.float64)
        self.sums[layer].index_add_(0, lab, v)
        self.counts[layer].index_add_(0, lab, torch.ones(len(lab), dtype=torch.float64))


class ClassMapSums(Reducer):
    """Per class, the sum over samples of the whole map x [C, H, W] (float32) and of ||x_c||^2 [C]
    (float64), where x = z (``point='bn'``, pre-ReLU) or relu(z) (``point='relu'``).
    Memory: classes x C x H x W floats per layer (ResNet-56, 100 classes: about 100 MB in all)."""

    def __init__(self, rows: np.ndarray, layers: Sequence[str], num_classes: int, point: str):
        super().__init__(rows, layers)
        self.k, self.point = num_classes, point
        self.sums: dict[str, torch.Tensor] = {}
        self.sumsq: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def update(self, layer: str, z: torch.Tensor, labels: torch.Tensor) -> None:
        x = (torch.relu(z) if self.point == "relu" else z).to(torch.float32).cpu()
        lab = labels.cpu()
        if layer not in self.sums:  # map sums in float32 (<= a few hundred samples per class), norms in float64
            self.sums[layer] = torch.zeros(self.k, *x.shape[1:], dtype=torch.float32)
            self.sumsq[layer] = torch.zeros(self.k, x.shape[1], dtype=torch.float64)
            self.counts[layer] = torch.zeros(self.k, dtype=torch.float64)
        self.sums[layer].index_add_(0, lab, x)
        self.sumsq[layer].index_add_(0, lab, x.pow(2).sum(dim=(2, 3), dtype=torch.float64))
        self.counts[layer].index_add_(0, lab, torch.ones(len(lab), dtype=torch.float64))


class PooledFeatures(Reducer):
    """Per sample, AdaptiveAvgPool_{p x p}(relu(z)) flattened channel-major: [n, C * p'^2] with
    p' = min(p, H, W), so columns c*p'^2 .. (c+1)*p'^2 - 1 read channel c (the DCS features)."""

    def __init__(self, rows: np.ndarray, layers: Sequence[str], p: int):
        super().__init__(rows, layers)
        self.p = int(p)
        self._feats: dict[str, list[torch.Tensor]] = {}
        self._labels: dict[str, list[torch.Tensor]] = {}
        self.cells: dict[str, int] = {}

    def update(self, layer: str, z: torch.Tensor, labels: torch.Tensor) -> None:
        p = max(1, min(self.p, z.shape[2], z.shape[3]))
        self.cells[layer] = p * p
        f = F.adaptive_avg_pool2d(torch.relu(z), p).flatten(1).to(torch.float32).cpu()
        self._feats.setdefault(layer, []).append(f)
        self._labels.setdefault(layer, []).append(labels.cpu())

    def features(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, C * cells], labels [N]) of every streamed row, in stream order."""
        return torch.cat(self._feats[layer]), torch.cat(self._labels[layer])


# ------------------------------------------------------------------ the pass
@torch.inference_mode()
def stream(
    model: SinfModel,
    layers: Sequence[PrunableLayer],
    data: ImageDataset,
    reducers: Sequence[Reducer],
    rt: Runtime | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Run the model once over the union of the reducers' rows, feeding each reducer its rows' z_l for
    the layers it asked for. Stops after the deepest unit that holds a requested layer."""
    reducers = [r for r in reducers if len(r.rows) and r.layers]
    if not reducers:
        return
    rt = Runtime.resolve(rt, model)
    device = rt.device
    by_name = {l.name: l for l in layers}
    wanted = sorted({n for r in reducers for n in r.layers}, key=lambda n: by_name[n].unit)
    last_unit = max(by_name[n].unit for n in wanted)
    n_rows = len(data)
    masks = []
    for r in reducers:
        m = np.zeros(n_rows, dtype=bool)
        m[r.rows] = True
        masks.append(m)
    union = np.flatnonzero(np.logical_or.reduce(masks))
    batch_masks: list[torch.Tensor | None] = [None] * len(reducers)
    batch_labels: list[torch.Tensor | None] = [None]

    def hook_for(name: str):
        users = [i for i, r in enumerate(reducers) if name in r.layers]

        def hook(_mod, _inp, out):
            z = out.detach().float()
            for i in users:
                m = batch_masks[i]
                if m is None:
                    continue
                t0 = time.perf_counter()
                reducers[i].update(name, z if bool(m.all()) else z[m], batch_labels[0][m])
                reducers[i].seconds += time.perf_counter() - t0

        return hook

    was_training = model.training
    model.eval()
    handles = []
    try:
        for name in wanted:
            handles.append(by_name[name].bn.register_forward_hook(hook_for(name)))
        start = 0
        for x, y in iterate_batches(data, rt.batch_size, union, device):
            idx = union[start : start + len(x)]
            start += len(x)
            for i, m in enumerate(masks):
                sel = m[idx]
                batch_masks[i] = torch.as_tensor(sel, device=device) if sel.any() else None
            batch_labels[0] = y
            with rt.autocast():
                model.forward_stem(x, last_unit)
            if on_batch:
                on_batch(len(x))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
