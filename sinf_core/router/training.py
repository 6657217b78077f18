"""The shared training loop of the route and exit heads (``sinf_core.router``).

Training keeps the base network frozen. One stem pass (to the deepest candidate tap) feeds the heads
at every candidate tap at once; by default the stem features of a stratified subsample of the fit
split (one random crop/flip per image) are cached as bf16, and the heads train for a few epochs on
that cache (bf16 autocast, channels_last); then each predictor's heads are temperature-scaled and its
attachment point chosen on the calibration split (``TapHeads._finish``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageDataset, augment_crop_flip, iterate_batches, normalise, stratified_split
from ..device import bf16_is_fast
from ..errors import SinfError
from ..models import SinfModel
from ..runtime import Runtime
from .heads import TARGETS, ProgressFn, RouteHead, _output_names, _targets, forward_taps


@dataclass
class _Job:
    """One head to train: its owner predictor, tap name and unit index."""

    owner: "TapHeads"
    tap: str
    unit: int



# --------------------------------------------------------------------------------------------
# The shared training loop
# --------------------------------------------------------------------------------------------


def heads_bf16(lead: "TapHeads", rt: Runtime) -> bool:
    """Whether heads train and run in bf16: the predictor's ``bf16`` when set, else on when the runtime
    runs in bf16 or where bf16 is fast on its device (``device.bf16_is_fast``)."""
    return bool(lead.bf16) if lead.bf16 is not None else (rt.bf16 or bf16_is_fast(rt.device))


def _collect_head_logits(
    model: SinfModel,
    heads: list[tuple[RouteHead, int]],
    data: ImageDataset,
    rt: Runtime,
) -> list[torch.Tensor]:
    """Raw logits (float32, CPU) of each (head, unit) over ``data`` in order, run as ``rt`` says; one
    stem pass per batch."""
    model.eval()
    for head, _ in heads:
        head.eval()
    units = sorted({u for _, u in heads})
    outs: list[list[torch.Tensor]] = [[] for _ in heads]
    with torch.inference_mode():
        for x, _ in iterate_batches(data, rt.batch_size, None, rt.device):
            with rt.autocast():
                feats = dict(zip(units, forward_taps(model, rt.layout(x), units)))
                for i, (head, u) in enumerate(heads):
                    outs[i].append(head(feats[u]).float().cpu())
    return [torch.cat(o) if o else torch.zeros(0, head.num_outputs) for o, (head, _) in zip(outs, heads)]


def _head_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None, distill: float,
               cluster_of: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - distill) x cross-entropy(logits, labels) + distill x cross-entropy(logits, soft targets).

    ``soft``: the base model's class probabilities [n, classes]; ``cluster_of`` (a [classes, clusters]
    0/1 membership matrix) turns them into cluster probabilities for a route head."""
    hard = F.cross_entropy(logits, labels)
    if distill <= 0:
        return hard
    if soft is None:
        raise SinfError("distillation needs the base model's probabilities (soft targets)")
    q = soft if cluster_of is None else soft @ cluster_of
    return (1.0 - distill) * hard + distill * -(q * F.log_softmax(logits, dim=1)).sum(1).mean()


def _subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A class-stratified subsample of about ``n`` indices (sorted), or all when n >= len."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, part = stratified_split(labels, n / len(labels), seed)
    return part


class _HeadTrainer:
    """Stem features of (a subsample of) the fit split at a set of taps, and head training on them.

    ``lead`` supplies the loop settings (epochs, batch size, augmentation, cache, precision, seed).
    With ``lead.cache`` the stem runs once over the subsample (one random crop/flip per image) and
    the features are held as bf16 (float32 without bf16); otherwise every epoch runs a fresh stem
    pass with fresh augmentation. With ``soft_targets`` the rest of the network runs too and the base
    model's class probabilities for the same images are kept (for ``distill``). The base model is
    never updated.
    """

    def __init__(self, model: SinfModel, fit_data: ImageDataset, lead: TapHeads, taps: list[tuple[str, int]],
                 rt: Runtime | None, on_progress: ProgressFn | None, soft_targets: bool = False):
        if len(fit_data) == 0:
            raise SinfError("no fit samples to train the heads on")
        self.model, self.data, self.lead = model.eval(), fit_data, lead
        rt = Runtime.resolve(rt, model)
        self.dev = rt.device
        self.bf16 = heads_bf16(lead, rt)  # what runs; each trained predictor records it as ``bf16_``
        # how the trainer's passes run: the predictor's batch size (calibration) and layout, the heads' precision
        self.pass_rt = rt.with_(batch_size=lead.eval_batch_size, channels_last=lead.channels_last, bf16=self.bf16)
        self.progress = on_progress or (lambda stage, done, total: None)
        self.t0 = time.perf_counter()
        self.units = sorted({u for _, u in taps})
        torch.manual_seed(lead.random_state)
        self.gen = torch.Generator().manual_seed(lead.random_state)
        with torch.no_grad():
            probe = normalise(fit_data.images[:1].to(self.dev), fit_data.mean, fit_data.std)
            self.shapes = {u: tuple(h.shape[1:]) for u, h in zip(self.units, forward_taps(model, probe, self.units))}
        cache_dtype = torch.bfloat16 if self.bf16 else torch.float32
        bytes_per = sum(math.prod(self.shapes[u]) for u in self.units) * (2 if self.bf16 else 4)
        n_fit = len(fit_data)
        if lead.max_fit_samples is not None:
            n_fit = min(n_fit, int(lead.max_fit_samples))
        if lead.cache:
            n_fit = min(n_fit, max(1, int(lead.cache_budget_mb * 2**20 // bytes_per)))
        self.idx = torch.as_tensor(_subsample(fit_data.labels.numpy(), n_fit, lead.random_state))
        self.n = int(len(self.idx))
        self.labels = {"class": fit_data.labels[self.idx], "cluster": fit_data.cluster_labels[self.idx]}
        self.output_names = {t: _output_names(fit_data, t) for t in TARGETS}
        self.soft_targets = bool(soft_targets)
        # class -> cluster membership [classes, clusters], to sum the base model's class probabilities
        hier = fit_data.hierarchy
        self.cluster_of = F.one_hot(torch.as_tensor(hier.cluster_of_class, dtype=torch.long),
                                    hier.num_clusters).float().to(self.dev)
        self.cache: dict[int, torch.Tensor] = {}
        self.soft_cache: torch.Tensor | None = None
        if lead.cache:
            for u in self.units:
                self.cache[u] = torch.empty((self.n,) + self.shapes[u], dtype=cache_dtype, device=self.dev)
            for start in range(0, self.n, lead.eval_batch_size):
                sel = torch.arange(start, min(self.n, start + lead.eval_batch_size))
                feats, soft = self._stem(sel)
                for u, h in zip(self.units, feats):
                    self.cache[u][start : start + len(sel)] = h.to(cache_dtype)
                if soft is not None:
                    if self.soft_cache is None:
                        self.soft_cache = torch.empty((self.n, soft.shape[1]), dtype=torch.float32, device=self.dev)
                    self.soft_cache[start : start + len(sel)] = soft
                self.progress("stem features", start + len(sel), self.n)

    def _stem(self, sel: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Stem features at every tap for subsample positions ``sel`` (augmented when asked), and the
        base model's class probabilities [n, classes] (float32) for the same images with
        ``soft_targets``, else None."""
        imgs = self.data.images[self.idx[sel]]
        if self.lead.augment:
            imgs = augment_crop_flip(imgs, self.gen)
        x = self.pass_rt.layout(normalise(imgs.to(self.dev), self.data.mean, self.data.std))
        with torch.no_grad(), self.pass_rt.autocast():
            feats = forward_taps(self.model, x, self.units)
            if not self.soft_targets:
                return feats, None
            logits = self.model.forward_tail(feats[-1], self.units[-1])
        return feats, torch.softmax(logits.float(), dim=1)

    def train(self, predictors: Sequence[TapHeads], taps: list[tuple[str, int]] | None = None) -> None:
        """(Re)initialise and train the heads of ``predictors`` at their taps (or at ``taps``, which
        must be among the trainer's), all in one loop over the fit subsample."""
        lead, dev = self.lead, self.dev
        jobs: list[_Job] = []
        for p in predictors:
            for tap, unit in (taps if taps is not None else p._resolve_taps(self.model)):
                if unit not in self.shapes:
                    raise SinfError(f"tap {tap!r} is not among the trainer's taps")
                jobs.append(_Job(p, tap, unit))
        for p in predictors:
            p.taps_ = [j.tap for j in jobs if j.owner is p]
            p.in_channels_ = {j.tap: int(self.shapes[j.unit][0]) for j in jobs if j.owner is p}
            p.output_names_ = list(self.output_names[p.target])
            p.num_outputs_ = len(p.output_names_)
            p.heads_ = {j.tap: RouteHead(self.shapes[j.unit][0], p.num_outputs_, p.hidden).to(dev)
                        for j in jobs if j.owner is p}
            p.history_ = []
            p.fit_samples_ = self.n
            p.bf16_ = self.bf16
        heads = [j.owner.heads_[j.tap] for j in jobs]
        for h in heads:
            h.train()
            if lead.channels_last:
                h.to(memory_format=torch.channels_last)
        steps_per_epoch = math.ceil(self.n / lead.batch_size)
        total_steps = steps_per_epoch * lead.epochs
        opt = torch.optim.AdamW([{"params": list(h.parameters()), "lr": j.owner.lr, "base_lr": j.owner.lr,
                                  "weight_decay": j.owner.weight_decay} for h, j in zip(heads, jobs)])
        units = sorted({j.unit for j in jobs})
        step = 0
        for epoch in range(lead.epochs):
            order = torch.randperm(self.n, generator=self.gen)
            loss_sum = torch.zeros(len(jobs), dtype=torch.float64)
            correct = torch.zeros(len(jobs), dtype=torch.float64)
            for k in range(steps_per_epoch):
                sel = order[k * lead.batch_size : (k + 1) * lead.batch_size]
                soft = None
                if self.cache:
                    sel_dev = sel.to(dev)
                    feats = {u: self.cache[u].index_select(0, sel_dev) for u in units}
                    if self.soft_cache is not None:
                        soft = self.soft_cache.index_select(0, sel_dev)
                else:
                    stem, soft = self._stem(sel)
                    feats = dict(zip(self.units, stem))
                scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * scale
                opt.zero_grad(set_to_none=True)
                total_loss = 0.0
                for i, job in enumerate(jobs):
                    y = self.labels[job.owner.target][sel].to(dev)
                    h = self.pass_rt.layout(feats[job.unit])
                    with self.pass_rt.autocast():
                        logits = heads[i](h)
                    loss = _head_loss(logits.float(), y, soft, float(job.owner.distill),
                                      self.cluster_of if job.owner.target == "cluster" else None)
                    total_loss = total_loss + loss
                    loss_sum[i] += float(loss.detach()) * len(sel)
                    correct[i] += float((logits.detach().argmax(1) == y).sum())
                total_loss.backward()
                opt.step()
                step += 1
                self.progress("train heads", step, total_steps)
            for p in predictors:
                rec: dict = {"epoch": epoch + 1}
                for i, job in enumerate(jobs):
                    if job.owner is p:
                        rec[job.tap] = {"loss": round(float(loss_sum[i]) / self.n, 4),
                                        "train_acc": round(float(correct[i]) / self.n, 4)}
                p.history_.append(rec)
        for h in heads:
            h.eval()
            h.to(memory_format=torch.contiguous_format)

    def calibrate(self, predictors: Sequence[TapHeads], calib_data: ImageDataset) -> None:
        """Temperature-scale every head of ``predictors`` and choose their attachment points on
        ``calib_data`` (one stem pass feeds all heads)."""
        if calib_data.hierarchy != self.data.hierarchy:
            raise SinfError("fit and calibration data use different class hierarchies")
        if len(calib_data) == 0:
            raise SinfError("the calibration split is empty; temperature and attachment point need it")
        pairs = [(p, t) for p in predictors for t in p.taps_]
        self.progress("calibrate", 0, len(calib_data))
        logits = _collect_head_logits(self.model, [(p.heads_[t], self.model.unit_index(t)) for p, t in pairs],
                                      calib_data, self.pass_rt)
        self.progress("calibrate", len(calib_data), len(calib_data))
        now = time.perf_counter()
        elapsed, self.t0 = round(now - self.t0, 2), now  # time since the previous calibration (or start)
        for p in predictors:
            z = {t: logits[i] for i, (q, t) in enumerate(pairs) if q is p}
            p._finish(z, _targets(calib_data, p.target))
            p.fit_seconds_ = elapsed

    def close(self) -> None:
        self.cache.clear()


def fit_heads(
    predictors: Sequence[TapHeads],
    model: SinfModel,
    fit_data: ImageDataset,
    calib_data: ImageDataset,
    rt: Runtime | None = None,
    on_progress: ProgressFn | None = None,
) -> None:
    """Train every predictor's heads in one loop (one stem pass / cache feeds all their taps), then
    temperature-scale each and choose its attachment point on ``calib_data``. Loop settings come from
    ``predictors[0]``; learning rate, weight decay and head width from each predictor."""
    if not predictors:
        return
    for p in predictors:
        p._validate_params()
    taps = sorted({tu for p in predictors for tu in p._resolve_taps(model)}, key=lambda tu: tu[1])
    trainer = _HeadTrainer(model, fit_data, predictors[0], taps, rt, on_progress,
                           soft_targets=any(p.distill > 0 for p in predictors))
    trainer.train(predictors)
    trainer.calibrate(predictors, calib_data)
    trainer.close()
