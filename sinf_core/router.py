"""Route predictor and early-exit heads on the stem's output (METHOD.md sections 7 and 10).

A *head* is a small classifier on the features at a tap (the output of one unit of a ``SinfModel``):
3x3 conv (to ``hidden`` = 64 channels, no bias) + BN + ReLU + global average pool + linear to K
outputs. The route predictor's heads predict the cluster; the exit heads predict the fine class.

Training keeps the base network frozen. One stem pass (to the deepest candidate tap) feeds the heads
at every candidate tap at once; by default the stem features of a stratified subsample of the fit
split (one random crop/flip per image) are cached as bf16, and the heads train for a few epochs on
that cache (bf16 autocast, channels_last). Each head is then temperature-scaled on the calibration
split (LBFGS on the NLL of log T), and the attachment point is the earliest candidate tap whose
calibration accuracy reaches ``accuracy_target`` (METHOD.md section 0: the choice looks at model
outputs, so it uses the calibration split only).

Fitted predictors follow scikit-learn conventions (parameters in the constructor, ``fit`` returns
self, learned attributes end in ``_``) and save as safetensors + a JSON config, never pickle.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageDataset, augment_crop_flip, iterate_batches, normalise, stratified_split
from .device import autocast, module_device, resolve_bf16
from .errors import SinfError
from .io import atomic_write, sha256_file, write_json
from .models import SinfModel

FORMAT = "sinf-heads"
FORMAT_VERSION = 1
TARGETS = ("cluster", "class")

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


# --------------------------------------------------------------------------------------------
# The head module and small pure functions
# --------------------------------------------------------------------------------------------


class RouteHead(nn.Module):
    """conv3x3(C_in -> hidden) + BN + ReLU + global average pool + Linear(hidden -> K).

    ``forward(h)``: stem features [N, C_in, H, W] -> raw logits [N, K]. ``temperature`` (a scalar
    buffer, saved with the weights) divides the logits in ``calibrated_logits`` / ``proba``.
    """

    def __init__(self, in_channels: int, num_outputs: int, hidden: int = 64):
        super().__init__()
        if in_channels < 1 or num_outputs < 1 or hidden < 1:
            raise SinfError("a head needs at least one input channel, one output and one hidden channel")
        self.in_channels, self.num_outputs, self.hidden = int(in_channels), int(num_outputs), int(hidden)
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, num_outputs)
        self.register_buffer("temperature", torch.ones(()))
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.bn(self.conv(h)))
        return self.fc(z.mean(dim=(2, 3)))

    def calibrated_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits / T as float32 [N, K]."""
        return self(h).float() / self.temperature.float()

    def proba(self, h: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled probabilities, float32 [N, K]."""
        return torch.softmax(self.calibrated_logits(h), dim=1)


def forward_taps(model: SinfModel, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
    """One stem pass: the outputs of units ``taps`` (indices, any order) for input ``x`` [N, 3, H, W].

    Runs units 0..max(taps) once; returns the features in the order of ``taps``.
    """
    if not taps:
        return []
    want = {t: None for t in taps}
    last = max(taps)
    h = x
    for i, (_, unit) in enumerate(model.units()[: last + 1]):
        h = unit(h)
        if i in want:
            want[i] = h
    return [want[t] for t in taps]


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` [N] under softmax(logits [N, K] / T)."""
    return float(F.cross_entropy(logits.double() / float(temperature), labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017), by LBFGS on log T.

    ``logits`` [N, K] (any float dtype), ``labels`` [N]. Returns 1.0 for an empty input.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise SinfError(f"temperature fit needs logits [N, K] and labels [N], got {tuple(logits.shape)} / {tuple(labels.shape)}")
    if len(labels) == 0:
        return 1.0
    z = logits.detach().double().cpu()
    y = labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(-6.0, 6.0).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(-6.0, 6.0).exp())
    if not math.isfinite(t):
        return 1.0
    return t if nll(z, y, t) <= nll(z, y, 1.0) else 1.0


def choose_tap(taps: Sequence[str], accuracy: dict[str, float], target: float) -> tuple[str, bool]:
    """The earliest tap (``taps`` in forward order) whose accuracy reaches ``target``.

    When none does, the most accurate one (the earliest among equals). Returns (tap, target reached).
    """
    if not taps:
        raise SinfError("no candidate taps to choose from")
    for tap in taps:
        if accuracy[tap] >= target:
            return tap, True
    best = max(accuracy[t] for t in taps)
    return next(t for t in taps if accuracy[t] == best), False


def default_taps(model: SinfModel, n: int = 6, start_fraction: float = 0.5) -> list[str]:
    """``n`` candidate taps spread evenly over the deeper part of the units that leave at least one
    prunable layer after them (from ``start_fraction`` of the way in; never the first unit), always
    including the deepest such unit. Early taps rarely route well (METHOD.md section 11) and their
    heads cost the most to train (the largest feature maps), so the default scan starts mid-network;
    pass ``taps`` explicitly to scan from the input side."""
    names = model.unit_names()
    prunable_units = [l.unit for l in model.prunable_layers()]
    if not prunable_units:
        raise SinfError("the model has no prunable layers, so there is nothing to route to")
    last = max(prunable_units) - 1  # a tap must leave the last prunable unit in the tail
    cands = list(range(1, last + 1)) or [0]
    cands = cands[min(len(cands) - 1, int(math.floor(start_fraction * len(cands)))) :]
    if n >= len(cands):
        return [names[i] for i in cands]
    pos = np.unique(np.round(np.linspace(0, len(cands) - 1, n)).astype(int))
    return [names[cands[p]] for p in pos]


def _targets(data: ImageDataset, target: str) -> torch.Tensor:
    return data.cluster_labels if target == "cluster" else data.labels


def _output_names(data: ImageDataset, target: str) -> list[str]:
    return list(data.hierarchy.cluster_names if target == "cluster" else data.hierarchy.class_names)


# --------------------------------------------------------------------------------------------
# Fitted heads at candidate taps
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One head to train: its owner predictor, tap name and unit index."""

    owner: "TapHeads"
    tap: str
    unit: int


class TapHeads:
    """Heads at candidate taps predicting the cluster (``target='cluster'``) or the fine class.

    Parameters: ``taps`` (unit names; None = ``default_taps``), ``accuracy_target`` (attachment
    rule), ``hidden`` (head width), ``epochs``, ``batch_size``, ``lr`` / ``weight_decay`` (AdamW with
    a cosine schedule), ``augment`` (random crop + flip), ``cache`` (train on cached stem features of
    one augmented copy per image; False = a fresh stem pass and augmentation every epoch),
    ``cache_budget_mb`` / ``max_fit_samples`` (cap on the cached subsample, stratified by class),
    ``bf16`` / ``channels_last`` (training and stem passes; bf16 None = where it is fast, see
    ``device.bf16_is_fast``), ``eval_batch_size``, ``random_state``. ``distill``: weight in [0, 1] of
    distillation from the base model: the loss is (1 - distill) x cross-entropy on the labels +
    distill x cross-entropy on the base model's own probabilities for the same (augmented) image,
    summed over each cluster's classes for a route head. An exit head that answers for the base model
    should agree with it where it is confident; the labels alone teach it the task, not the model.
    The defaults (15 000 cached samples, 4 epochs) fit ResNet-56 heads at layer2.8..layer3.6 plus the
    exit head in about 4 minutes on 2 busy CPU cores; a head's training cost grows with its tap's
    feature-map area (a layer1 head costs ~10x a layer3 head).

    Learned: ``taps_`` (forward order), ``heads_`` {tap: RouteHead}, ``temperature_``,
    ``calib_accuracy_`` (fraction in [0, 1]), ``calib_nll_`` {tap: {"before", "after"}}, ``tap_``
    (the attachment point), ``target_reached_``, ``num_outputs_``, ``output_names_``,
    ``in_channels_``, ``fit_samples_``, ``fit_seconds_``, ``history_`` (per epoch), ``bf16_`` (whether the
    heads were trained and calibrated under bf16: ``bf16`` resolved on the fit device).
    """

    kind = "heads"

    def __init__(
        self,
        taps: Sequence[str] | None = None,
        target: str = "cluster",
        accuracy_target: float = 0.75,
        hidden: int = 64,
        epochs: int = 4,
        batch_size: int = 256,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        augment: bool = True,
        cache: bool = True,
        cache_budget_mb: float = 2048.0,
        max_fit_samples: int | None = 15000,
        bf16: bool | None = None,
        channels_last: bool = True,
        eval_batch_size: int = 500,
        random_state: int = 0,
        distill: float = 0.0,
    ):
        self.taps = None if taps is None else list(taps)
        self.target = target
        self.accuracy_target = accuracy_target
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.augment = augment
        self.cache = cache
        self.cache_budget_mb = cache_budget_mb
        self.max_fit_samples = max_fit_samples
        self.bf16 = bf16
        self.channels_last = channels_last
        self.eval_batch_size = eval_batch_size
        self.random_state = random_state
        self.distill = distill

    # -- scikit-learn style parameter access -----------------------------------------------
    def get_params(self) -> dict:
        names = [p for p in inspect.signature(TapHeads.__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def _validate_params(self) -> None:
        if self.target not in TARGETS:
            raise SinfError(f"head target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 <= float(self.accuracy_target) <= 1.0:
            raise SinfError(f"accuracy target must be in [0, 1], got {self.accuracy_target}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1 or self.hidden < 1:
            raise SinfError("epochs, batch sizes and the head width must be at least 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise SinfError("learning rate must be positive and weight decay non-negative")
        if self.max_fit_samples is not None and self.max_fit_samples < 1:
            raise SinfError("max_fit_samples must be at least 1 (or None for no cap)")
        if isinstance(self.distill, bool) or not isinstance(self.distill, (int, float)) \
                or not 0.0 <= float(self.distill) <= 1.0:
            raise SinfError(f"distill is a weight in [0, 1], got {self.distill!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "heads_"):
            raise SinfError(f"this {type(self).__name__} is not fitted yet; call fit(...) or load(...) first")

    # -- fitting --------------------------------------------------------------------------
    def fit(
        self,
        model: SinfModel,
        fit_data: ImageDataset,
        calib_data: ImageDataset,
        device: torch.device | str | None = None,
        on_progress: ProgressFn | None = None,
    ) -> "TapHeads":
        """Train heads at every candidate tap on ``fit_data`` (base frozen), temperature-scale them and
        pick the attachment point on ``calib_data``. Returns self."""
        fit_heads([self], model, fit_data, calib_data, device, on_progress)
        return self

    def _resolve_taps(self, model: SinfModel) -> list[tuple[str, int]]:
        taps = default_taps(model) if self.taps is None else list(self.taps)
        if not taps:
            raise SinfError("give at least one candidate tap")
        units = sorted({model.unit_index(t) for t in taps})
        names = model.unit_names()
        return [(names[u], u) for u in units]

    def _finish(self, calib_logits: dict[str, torch.Tensor], calib_labels: torch.Tensor) -> None:
        self.temperature_, self.calib_accuracy_, self.calib_nll_ = {}, {}, {}
        for tap in self.taps_:
            z = calib_logits[tap]
            t = fit_temperature(z, calib_labels)
            self.heads_[tap].temperature.fill_(t)
            self.temperature_[tap] = t
            acc = float((z.argmax(1) == calib_labels).float().mean()) if len(calib_labels) else float("nan")
            self.calib_accuracy_[tap] = acc
            self.calib_nll_[tap] = {"before": nll(z, calib_labels, 1.0), "after": nll(z, calib_labels, t)}
        self.tap_, self.target_reached_ = choose_tap(self.taps_, self.calib_accuracy_, float(self.accuracy_target))

    # -- use ------------------------------------------------------------------------------
    def head(self, tap: str | None = None) -> RouteHead:
        """The (temperature-scaled) head at ``tap``, by default at the attachment point."""
        self._check_fitted()
        tap = self.tap_ if tap is None else tap
        if tap not in self.heads_:
            raise SinfError(f"no head at tap {tap!r}; heads exist at {', '.join(self.taps_)}")
        return self.heads_[tap]

    def predict_proba(self, h: torch.Tensor, tap: str | None = None) -> torch.Tensor:
        """Calibrated probabilities [N, K] from stem features ``h`` at ``tap`` (default: ``tap_``)."""
        head = self.head(tap)
        with torch.inference_mode():
            return head.eval().proba(h)

    @torch.inference_mode()
    def evaluate(
        self,
        model: SinfModel,
        data: ImageDataset,
        device: torch.device | str | None = None,
        taps: Sequence[str] | None = None,
    ) -> dict[str, dict[str, float]]:
        """Accuracy (fraction) and calibrated NLL per tap on ``data`` (e.g. the report split).

        Returns {"accuracy": {tap: a}, "nll": {tap: l}}; one stem pass feeds every tap.
        """
        self._check_fitted()
        taps = list(self.taps_ if taps is None else taps)
        for t in taps:
            self.head(t)
        dev = module_device(model) if device is None else torch.device(device)
        bf16 = self.bf16_ if getattr(self, "bf16_", None) is not None else resolve_bf16(self.bf16, dev)
        logits = _collect_head_logits(model, [(self.heads_[t], model.unit_index(t)) for t in taps], data,
                                      self.eval_batch_size, dev, bf16, self.channels_last)
        y = _targets(data, self.target)
        out: dict[str, dict[str, float]] = {"accuracy": {}, "nll": {}}
        for t, z in zip(taps, logits):
            out["accuracy"][t] = float((z.argmax(1) == y).float().mean()) if len(y) else float("nan")
            out["nll"][t] = nll(z, y, self.temperature_[t]) if len(y) else float("nan")
        return out

    def summary(self) -> dict:
        """JSON-friendly description of the fit: per-tap calibration accuracy, T, NLL, the choice."""
        self._check_fitted()
        return {
            "kind": self.kind,
            "target": self.target,
            "tap": self.tap_,
            "target_reached": self.target_reached_,
            "accuracy_target": self.accuracy_target,
            "taps": list(self.taps_),
            "calib_accuracy": dict(self.calib_accuracy_),
            "temperature": dict(self.temperature_),
            "calib_nll": dict(self.calib_nll_),
            "fit_samples": self.fit_samples_,
            "fit_seconds": self.fit_seconds_,
        }

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path, name: str | None = None, taps: Sequence[str] | None = None) -> Path:
        """Write ``<name>.safetensors`` (weights + temperatures) and ``<name>.json`` (config, learned
        scalars, the tensors' sha256) into ``folder``, each atomically; the JSON is written last.
        ``taps`` limits which heads are stored (default: all; ``tap_`` is always kept)."""
        from safetensors.torch import save_file

        self._check_fitted()
        name = name or self.kind
        folder = Path(folder)
        keep = list(self.taps_ if taps is None else taps)
        if self.tap_ not in keep:
            keep.append(self.tap_)
        keep = [t for t in self.taps_ if t in keep]
        tensors = {}
        for t in keep:
            for k, v in self.head(t).state_dict().items():
                tensors[f"{t}::{k}"] = v.detach().to("cpu", copy=True).contiguous()
        tensor_path = folder / f"{name}.safetensors"
        atomic_write(tensor_path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
        params = self.get_params()
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": params,
            "taps": keep,
            "in_channels": {t: self.in_channels_[t] for t in keep},
            "num_outputs": self.num_outputs_,
            "output_names": list(self.output_names_),
            "tap": self.tap_,
            "target_reached": self.target_reached_,
            "temperature": {t: self.temperature_[t] for t in keep},
            "calib_accuracy": {t: self.calib_accuracy_[t] for t in keep},
            "calib_nll": {t: self.calib_nll_[t] for t in keep},
            "fit_samples": self.fit_samples_,
            "fit_seconds": self.fit_seconds_,
            "bf16": getattr(self, "bf16_", None),
            "history": self.history_,
            "tensors": tensor_path.name,
            "tensors_sha256": sha256_file(tensor_path),
        }
        return write_json(folder / f"{name}.json", config)

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "TapHeads":
        """Read what ``save`` wrote; refuses a missing, corrupted or foreign file with a SinfError."""
        from safetensors.torch import load_file

        name = name or cls.kind
        folder = Path(folder)
        cfg_path = folder / f"{name}.json"
        if not cfg_path.is_file():
            raise SinfError(f"no saved heads at {cfg_path}")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise SinfError(f"{cfg_path} is not valid JSON ({exc}); re-run the router step") from exc
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise SinfError(f"{cfg_path} is not a SINF heads file")
        if cfg.get("version") != FORMAT_VERSION:
            raise SinfError(f"{cfg_path} has heads format version {cfg.get('version')}; this SINF reads version "
                            f"{FORMAT_VERSION}. Re-run the router step.")
        tensor_path = folder / str(cfg.get("tensors", ""))
        if not tensor_path.is_file():
            raise SinfError(f"{tensor_path} is missing; the saved heads are incomplete")
        if sha256_file(tensor_path) != cfg.get("tensors_sha256"):
            raise SinfError(f"{tensor_path} does not match its checksum in {cfg_path} (corrupted or replaced)")
        try:
            params = dict(cfg["params"])
            obj = cls(**params)
            obj._validate_params()
            tensors = load_file(str(tensor_path))
            obj.taps_ = list(cfg["taps"])
            obj.in_channels_ = {t: int(c) for t, c in cfg["in_channels"].items()}
            obj.num_outputs_ = int(cfg["num_outputs"])
            obj.output_names_ = list(cfg["output_names"])
            obj.heads_ = {}
            for t in obj.taps_:
                head = RouteHead(obj.in_channels_[t], obj.num_outputs_, int(params["hidden"]))
                state = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == t}
                head.load_state_dict(state, strict=True)
                obj.heads_[t] = head.eval()
            obj.tap_ = str(cfg["tap"])
            obj.target_reached_ = bool(cfg["target_reached"])
            obj.temperature_ = {t: float(v) for t, v in cfg["temperature"].items()}
            obj.calib_accuracy_ = {t: float(v) for t, v in cfg["calib_accuracy"].items()}
            obj.calib_nll_ = {t: dict(v) for t, v in cfg["calib_nll"].items()}
            obj.fit_samples_ = int(cfg["fit_samples"])
            obj.fit_seconds_ = float(cfg["fit_seconds"])
            obj.history_ = list(cfg.get("history", []))
            # bf16 as trained (files from before ``bf16_`` kept it in the parameters)
            used = cfg.get("bf16", params.get("bf16"))
            if used is not None:
                obj.bf16_ = bool(used)
        except SinfError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise SinfError(f"{cfg_path} / {tensor_path.name} do not describe valid heads: {exc}") from exc
        if obj.tap_ not in obj.heads_:
            raise SinfError(f"{cfg_path} names attachment tap {obj.tap_!r} but stores no head for it")
        return obj

    def __repr__(self) -> str:
        state = f"tap_={self.tap_!r}" if hasattr(self, "tap_") else "unfitted"
        return f"{type(self).__name__}(target={self.target!r}, taps={self.taps!r}, {state})"


class RoutePredictor(TapHeads):
    """Route heads: predict the input's cluster (METHOD.md section 7)."""

    kind = "router"

    def __init__(self, taps: Sequence[str] | None = None, target: str = "cluster", **kwargs):
        if target != "cluster":
            raise SinfError("a RoutePredictor predicts clusters; use ExitPredictor for fine classes")
        super().__init__(taps, target, **kwargs)


class ExitPredictor(TapHeads):
    """Early-exit heads: predict the fine class (METHOD.md section 10), same shape as the router."""

    kind = "exit"

    def __init__(self, taps: Sequence[str] | None = None, target: str = "class", **kwargs):
        if target != "class":
            raise SinfError("an ExitPredictor predicts fine classes; use RoutePredictor for clusters")
        super().__init__(taps, target, **kwargs)


def fit_router_and_exit(
    router: RoutePredictor,
    exit: ExitPredictor,
    model: SinfModel,
    fit_data: ImageDataset,
    calib_data: ImageDataset,
    device: torch.device | str | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[RoutePredictor, ExitPredictor]:
    """Fit the router at its candidate taps, choose the attachment point on ``calib_data``, then fit
    the exit head at that tap only (METHOD.md section 10: the exit head sits at the router's tap),
    reusing the router's cached stem features. The shared loop (epochs, batch size, cache,
    augmentation, precision) follows the router's parameters; ``exit.taps`` is ignored."""
    router._validate_params()
    exit._validate_params()
    trainer = _HeadTrainer(model, fit_data, router, router._resolve_taps(model), device, on_progress,
                           soft_targets=router.distill > 0 or exit.distill > 0)
    trainer.train([router])
    trainer.calibrate([router], calib_data)
    trainer.train([exit], taps=[(router.tap_, model.unit_index(router.tap_))])
    trainer.calibrate([exit], calib_data)
    exit.tap_ = router.tap_
    trainer.close()
    return router, exit


# --------------------------------------------------------------------------------------------
# The shared training loop
# --------------------------------------------------------------------------------------------


def _prep(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _collect_head_logits(
    model: SinfModel,
    heads: list[tuple[RouteHead, int]],
    data: ImageDataset,
    batch_size: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
) -> list[torch.Tensor]:
    """Raw logits (float32, CPU) of each (head, unit) over ``data`` in order; one stem pass per batch."""
    model.eval()
    for head, _ in heads:
        head.eval()
    units = sorted({u for _, u in heads})
    outs: list[list[torch.Tensor]] = [[] for _ in heads]
    with torch.inference_mode():
        for x, _ in iterate_batches(data, batch_size, None, device):
            with autocast(device, bf16):
                feats = dict(zip(units, forward_taps(model, _prep(x, channels_last), units)))
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
                 device: torch.device | str | None, on_progress: ProgressFn | None, soft_targets: bool = False):
        if len(fit_data) == 0:
            raise SinfError("no fit samples to train the heads on")
        self.model, self.data, self.lead = model.eval(), fit_data, lead
        self.dev = module_device(model) if device is None else torch.device(device)
        self.bf16 = resolve_bf16(lead.bf16, self.dev)  # what runs; each trained predictor records it as ``bf16_``
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
        x = _prep(normalise(imgs.to(self.dev), self.data.mean, self.data.std), self.lead.channels_last)
        with torch.no_grad(), autocast(self.dev, self.bf16):
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
                    h = _prep(feats[job.unit], lead.channels_last)
                    with autocast(dev, self.bf16):
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
                                      calib_data, self.lead.eval_batch_size, self.dev, self.bf16,
                                      self.lead.channels_last)
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
    device: torch.device | str | None = None,
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
    trainer = _HeadTrainer(model, fit_data, predictors[0], taps, device, on_progress,
                           soft_targets=any(p.distill > 0 for p in predictors))
    trainer.train(predictors)
    trainer.calibrate(predictors, calib_data)
    trainer.close()
