"""Training any registered model: bf16 autocast + channels_last on CPU, SGD + warm-up/cosine, resumable.

Resumption is exact up to floating-point noise: the epoch's sample order, the augmentation and the
dropout randomness are all derived from (seed, global step), and the learning rate is a pure function
of the global step, so a run killed mid-epoch continues from its last checkpoint as if never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data import ImageDataset, augment_crop_flip, normalise
from .device import autocast, hardware_info, resolve_bf16
from .errors import SinfError
from .io import atomic_write, write_json
from .artifacts import RUN_CHECKPOINT as CHECKPOINT, RUN_FINAL as FINAL, RUN_SUMMARY as SUMMARY  # noqa: F401  (the run's files, re-exported)


@dataclass
class TrainConfig:
    model: str
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    bf16: bool | None = None  # None: bf16 autocast where it is fast (AMX CPU, bf16 GPU), else float32
    channels_last: bool = True
    checkpoint_every: int = 100  # optimizer steps between checkpoints
    seed: int = 0
    init: dict | None = None  # the weights training started from (warm restart), {"source", "sha256", ...}
    extra: dict = field(default_factory=dict)  # free-form notes recorded in the summary (width, ...)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 1:
            raise SinfError("epochs, batch size, learning rate and checkpoint interval must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise SinfError("label smoothing must be in [0, 1)")


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, t)))


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, history: list) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "step": step,
        "config": asdict(cfg),
        "history": history,
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        from .models.registry import checkpoint_problem

        raise SinfError(f"cannot resume from {path}: {checkpoint_problem(path, exc)}. Delete it to start afresh.") from exc


def train(
    model: nn.Module,
    data: ImageDataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    evaluate: Callable[[nn.Module], dict] | None = None,
    on_step: Callable[[dict], None] | None = None,
    stop_after_steps: int | None = None,
) -> dict:
    """Train ``model`` on all of ``data`` (pass the fit split); resume from ``out_dir`` if a checkpoint is there.

    ``evaluate(model) -> dict`` runs after each epoch (its result goes to the history).
    ``on_step(info)`` gets loss/accuracy/lr/step for a progress bar. ``stop_after_steps`` stops early
    (as a kill would) after that many global steps, leaving a checkpoint. Returns the summary dict.
    """
    cfg.validate()
    device = torch.device(device)
    cfg.bf16 = resolve_bf16(cfg.bf16, device)  # recorded as used
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(data)
    if n == 0:
        raise SinfError("no training samples")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    step, history, elapsed0 = 0, [], 0.0
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state = _load_checkpoint(ckpt)
        if state["config"].get("model") != cfg.model:
            raise SinfError(f"{ckpt} belongs to model {state['config'].get('model')!r}, not {cfg.model!r}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        elapsed0 = float(history[-1]["elapsed_s"]) if history else float(state.get("elapsed_s", 0.0))
    resumed_from = step
    t0 = time.perf_counter()
    model.train()
    run_loss = run_correct = run_seen = 0.0
    while step < total:
        epoch, k = divmod(step, steps_per_epoch)
        order = _epoch_order(n, cfg.seed, epoch)
        sel = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        torch.manual_seed(cfg.seed * 104_729 + step)  # dropout
        x = augment_crop_flip(data.images[sel], gen)
        x = normalise(x.to(device), data.mean, data.std)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.labels[sel].to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup, cfg.lr)
        with autocast(device, cfg.bf16):
            logits = model(x)
            loss = criterion(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run_loss += float(loss.detach()) * len(y)
        run_correct += float((logits.argmax(1) == y).sum())
        run_seen += len(y)
        if on_step:
            on_step({"step": step, "total": total, "epoch": epoch + 1, "loss": run_loss / run_seen,
                     "acc": 100.0 * run_correct / run_seen, "lr": opt.param_groups[0]["lr"]})
        end_of_epoch = step % steps_per_epoch == 0
        if end_of_epoch:
            rec = {"epoch": epoch + 1, "train_loss": round(run_loss / run_seen, 4),
                   "train_acc": round(100.0 * run_correct / run_seen, 2),
                   "elapsed_s": round(elapsed0 + time.perf_counter() - t0, 1)}
            if evaluate is not None:
                model.eval()
                rec.update(evaluate(model))
                model.train()
            history.append(rec)
            run_loss = run_correct = run_seen = 0.0
        if end_of_epoch or step % cfg.checkpoint_every == 0 or step == total:
            _save_checkpoint(ckpt, model, opt, step, cfg, history)
        if stop_after_steps is not None and step >= stop_after_steps and step < total:
            _save_checkpoint(ckpt, model, opt, step, cfg, history)
            model.eval()
            return {"stopped_at_step": step, "total_steps": total}
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / FINAL, lambda p: save_file(weights, str(p)))
    summary = {
        "model": cfg.model,
        "config": asdict(cfg),
        "samples": n,
        "steps": total,
        "resumed_from_step": resumed_from,
        "wall_time_s": round(elapsed0 + time.perf_counter() - t0, 1),
        "machine": hardware_info(device),  # of the run that finished (a resumed run may have started elsewhere)
        "history": history,
        "weights": str(out / FINAL),
    }
    write_json(out / SUMMARY, summary)
    return summary
