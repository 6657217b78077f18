"""Fitted heads at candidate taps: ``TapHeads`` and its two kinds, ``RoutePredictor`` (the cluster) and
``ExitPredictor`` (the fine class), with their persistence (safetensors + a JSON config, never pickle)
(``sinf_core.router``)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Sequence

import torch

from ..artifacts import EXIT, ROUTER, file_pair
from ..data import ImageDataset

from ..errors import SinfError
from ..io import atomic_write, sha256_file, write_json
from ..models import SinfModel
from ..runtime import Runtime
from .heads import FORMAT, FORMAT_VERSION, TARGETS, ProgressFn, RouteHead, _targets, choose_tap, default_taps, \
    fit_temperature, nll
from .training import _collect_head_logits, _HeadTrainer, fit_heads, heads_bf16


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
        rt: Runtime | None = None,
        on_progress: ProgressFn | None = None,
    ) -> "TapHeads":
        """Train heads at every candidate tap on ``fit_data`` (base frozen), temperature-scale them and
        pick the attachment point on ``calib_data``, on ``rt`` (default: the model's device). Returns self."""
        fit_heads([self], model, fit_data, calib_data, rt, on_progress)
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
        rt: Runtime | None = None,
        taps: Sequence[str] | None = None,
    ) -> dict[str, dict[str, float]]:
        """Accuracy (fraction) and calibrated NLL per tap on ``data`` (e.g. the report split).

        Returns {"accuracy": {tap: a}, "nll": {tap: l}}; one stem pass feeds every tap.
        """
        self._check_fitted()
        taps = list(self.taps_ if taps is None else taps)
        for t in taps:
            self.head(t)
        rt = Runtime.resolve(rt, model)
        bf16 = self.bf16_ if getattr(self, "bf16_", None) is not None else heads_bf16(self, rt)
        logits = _collect_head_logits(model, [(self.heads_[t], model.unit_index(t)) for t in taps], data,
                                      rt.with_(batch_size=self.eval_batch_size, channels_last=self.channels_last,
                                               bf16=bf16))
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
        cfg_name, tensors_name = file_pair(name)
        tensor_path = folder / tensors_name
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
        return write_json(folder / cfg_name, config)

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> "TapHeads":
        """Read what ``save`` wrote; refuses a missing, corrupted or foreign file with a SinfError."""
        from safetensors.torch import load_file

        name = name or cls.kind
        folder = Path(folder)
        cfg_path = folder / file_pair(name)[0]
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

    kind = ROUTER

    def __init__(self, taps: Sequence[str] | None = None, target: str = "cluster", **kwargs):
        if target != "cluster":
            raise SinfError("a RoutePredictor predicts clusters; use ExitPredictor for fine classes")
        super().__init__(taps, target, **kwargs)


class ExitPredictor(TapHeads):
    """Early-exit heads: predict the fine class (METHOD.md section 10), same shape as the router."""

    kind = EXIT

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
    rt: Runtime | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[RoutePredictor, ExitPredictor]:
    """Fit the router at its candidate taps, choose the attachment point on ``calib_data``, then fit
    the exit head at that tap only (METHOD.md section 10: the exit head sits at the router's tap),
    reusing the router's cached stem features. The shared loop (epochs, batch size, cache,
    augmentation, precision) follows the router's parameters; ``exit.taps`` is ignored."""
    router._validate_params()
    exit._validate_params()
    trainer = _HeadTrainer(model, fit_data, router, router._resolve_taps(model), rt, on_progress,
                           soft_targets=router.distill > 0 or exit.distill > 0)
    trainer.train([router])
    trainer.calibrate([router], calib_data)
    trainer.train([exit], taps=[(router.tap_, model.unit_index(router.tap_))])
    trainer.calibrate([exit], calib_data)
    exit.tap_ = router.tap_
    trainer.close()
    return router, exit

