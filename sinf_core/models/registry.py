"""Model registry: a name maps to a builder plus metadata (weights, published accuracy, split protocol).

A model is named by a registered name (``MODELS``) or by a spec users already know (``specs``):
``torchvision:NAME``, ``timm:NAME`` or ``package.module:callable``, with ``@N`` for N classes. Every
function here that takes a name takes either."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..artifacts import RUN_FINAL, RUN_SUMMARY, SAFETENSORS, card_file
from ..data.cifar import CIFAR100_MEAN, CIFAR100_STD, CIFAR_IMAGE_SIZE
from ..data.core import DEFAULT_IMAGE_SIZE
from ..errors import SinfError
from .base import SinfModel
from .specs import SPEC_FORMS, build_spec_model, check_spec, describe_spec, for_classes, is_spec, parse_spec
from .resnet_cifar import cifar_resnet, cifar_resnet50
from .vgg_cifar import cifar_vgg

WEIGHTS_ENV = "SINF_WEIGHTS_DIR"
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
_RELEASE = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"


@dataclass(frozen=True)
class Weights:
    """A registered model's published weights, as data (like torchvision's ``Weights``); all None: none.

    ``url``: a public release file, fetched through torch.hub's cache. ``file``: a safetensors file in
    ``assets/`` (models trained by this project). ``sha256``: of that file, checked on load when known
    (None for the release files: the copies in use are re-saved, so no fixed digest fits them).
    ``top1``: the published test top-1 (%). ``mean`` / ``std``: the input normalisation the weights
    were trained with ([0, 1] units); the data set applies its own (``ImageDataset.mean`` / ``std``, for
    CIFAR-100 the same constants, ``data.cifar.CIFAR100_MEAN`` / ``CIFAR100_STD``)."""

    url: str | None = None
    file: str | None = None
    sha256: str | None = None
    top1: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


_CIFAR100_NORM = {"mean": CIFAR100_MEAN, "std": CIFAR100_STD}


@dataclass(frozen=True)
class ModelEntry:
    """``weights``: the published weights (``Weights()``: none, train it). ``dataset``: the data set it
    is for (None: none by default, pass one). ``protocol``: the split protocol (METHOD.md section 0):
    'pretrained' when the weights saw all of train, 'heldout' otherwise. ``image_size``: the side of
    the square images it is for (the default of ``--image-size``; None: none registered, a spec)."""

    name: str
    build: Callable[[], SinfModel]
    dataset: str | None = "cifar100"
    weights: Weights = Weights()
    protocol: str = "pretrained"
    description: str = ""
    image_size: int | None = CIFAR_IMAGE_SIZE

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) it is built for when no data says otherwise."""
        side = self.image_size or DEFAULT_IMAGE_SIZE
        return (3, side, side)


def _entries() -> dict[str, ModelEntry]:
    e: dict[str, ModelEntry] = {}
    for depth, tag, top1 in [(20, "23dac2f1", 68.83), (32, "84213ce6", 70.16), (44, "ffe32858", 71.63), (56, "f2eff4c8", 72.63)]:
        name = f"cifar100_resnet{depth}"
        e[name] = ModelEntry(
            name, lambda d=depth: cifar_resnet(d, 100),
            weights=Weights(url=f"{_RELEASE}/resnet/{name}-{tag}.pt", top1=top1, **_CIFAR100_NORM),
            description=f"CIFAR ResNet-{depth} (BasicBlock, 16/32/64), pytorch-cifar-models weights",
        )
    for arch, tag, top1 in [("vgg11", "57d0759e", 70.78), ("vgg13", "5ebe5778", 74.63), ("vgg16", "7d8c4031", 74.00), ("vgg19", "b98f7bd7", 73.87)]:
        name = f"cifar100_{arch}_bn"
        e[name] = ModelEntry(
            name, lambda a=arch: cifar_vgg(a, 100),
            weights=Weights(url=f"{_RELEASE}/vgg/{name}-{tag}.pt", top1=top1, **_CIFAR100_NORM),
            description=f"{arch.upper()}-BN for CIFAR, pytorch-cifar-models weights",
        )
    e["cifar100_resnet50"] = ModelEntry(
        "cifar100_resnet50", lambda: cifar_resnet50(100), description="CIFAR-style bottleneck ResNet-50 (no public weights)",
        protocol="heldout",
    )
    e["cifar100_vgg16_bn_sinf"] = ModelEntry(
        "cifar100_vgg16_bn_sinf", lambda: cifar_vgg("vgg16", 100, width=0.5, dropout=0.1),
        weights=Weights(file="cifar100_vgg16_bn_sinf.safetensors", **_CIFAR100_NORM),  # top-1 and sha256: its card
        protocol="heldout", description="VGG16-BN at width 0.5 (classifier dropout 0.1), trained by this project on CIFAR-100 train minus the calibration split",
    )
    e["cifar100_resnet18_tv"] = ModelEntry(
        "cifar100_resnet18_tv", _torchvision_resnet18_cifar,
        weights=Weights(file="cifar100_resnet18_tv.safetensors", **_CIFAR100_NORM),
        protocol="heldout", description="torchvision ResNet-18 with a 3x3 stride-1 stem (max-pool kept: 16x16 after "
        "it), through GraphModel; trained by this project on CIFAR-100 train minus the calibration split",
    )
    return e


def _torchvision_resnet18_cifar(num_classes: int = 100) -> SinfModel:
    """torchvision's ResNet-18 for 32x32 inputs: its 7x7 stride-2 stem conv replaced by a 3x3 stride-1 one."""
    import torchvision
    from torch import nn

    from .graph import GraphModel

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return GraphModel(net)


MODELS: dict[str, ModelEntry] = _entries()


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``, or for a spec (``torchvision:resnet18@10``, ...) an entry made on
    the fly after looking its name up: no data set, no published weights, protocol 'heldout'."""
    if name in MODELS:
        return MODELS[name]
    if not is_spec(name):
        raise SinfError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}; or a spec: {SPEC_FORMS}")
    spec = parse_spec(name)
    check_spec(spec)
    return ModelEntry(spec.name, lambda: build_spec_model(spec), dataset=None, protocol="heldout",
                      description=describe_spec(spec), image_size=None)


def model_for_classes(name: str, num_classes: int) -> str:
    """The canonical name of ``name`` built for a data set of ``num_classes`` classes: a registered name
    as it is (its head is fixed), a spec with its class count filled in (``torchvision:resnet18`` ->
    ``torchvision:resnet18@10``); an explicit ``@N`` is kept (the data set check then says if it fits)."""
    if name in MODELS or not is_spec(name):
        return name
    return for_classes(parse_spec(name), num_classes).name


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def seed_hub_cache(weights_dir: str | Path | None = None) -> list[Path]:
    """Place local copies of release files (``$SINF_WEIGHTS_DIR``) into torch.hub's download cache,
    so pretrained loading finds them offline exactly as it would after a download. Returns new files."""
    src = Path(weights_dir or os.environ.get(WEIGHTS_ENV, "")) if (weights_dir or os.environ.get(WEIGHTS_ENV)) else None
    if src is None or not src.is_dir():
        return []
    dest = hub_checkpoint_dir()
    placed = []
    for entry in MODELS.values():
        if not entry.weights.url:
            continue
        fname = entry.weights.url.rsplit("/", 1)[1]
        if (src / fname).is_file() and not (dest / fname).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            tmp = dest / f".{fname}.tmp"
            shutil.copyfile(src / fname, tmp)
            os.replace(tmp, dest / fname)
            placed.append(dest / fname)
    return placed


def weights_source(name: str) -> tuple[str, Path | None]:
    """Where ``name``'s registered weights would come from, without loading them: ``("assets", path)``,
    ``("cached", path)`` (torch.hub's cache), ``("local", path)`` (``$SINF_WEIGHTS_DIR``), ``("download", None)``
    (a public release file not fetched yet), ``("missing", path)`` (an assets/ file that is absent) or
    ``("none", None)`` (no published weights: train it)."""
    w = get_entry(name).weights
    if w.file:
        path = ASSETS_DIR / w.file
        return ("assets" if path.is_file() else "missing"), path
    if w.url:
        fname = w.url.rsplit("/", 1)[1]
        if (hub_checkpoint_dir() / fname).is_file():
            return "cached", hub_checkpoint_dir() / fname
        local = os.environ.get(WEIGHTS_ENV)
        if local and (Path(local) / fname).is_file():
            return "local", Path(local) / fname
        return "download", None
    return "none", None


def count_parameters(name: str) -> int | None:
    """Parameters of ``name``'s architecture, built on the meta device (no memory, no initialisation)."""
    try:
        with torch.device("meta"):
            model = get_entry(name).build()
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:  # an architecture that cannot be built on meta: leave the count out
        return None


def _card_top1(name: str) -> float | None:
    try:
        card = model_card(name)
    except (OSError, ValueError):  # an unreadable card: no figure rather than a traceback in a listing
        return None
    top1 = card.get("test_top1") if isinstance(card, dict) else None
    return float(top1) if isinstance(top1, (int, float)) and not isinstance(top1, bool) else None


def describe_models() -> list[dict]:
    """One JSON-able row per registered model, in registry order (`sinf models`). ``published_top1``: the
    release's figure; ``card_top1``: the test top-1 on the model card of a project-trained weights file."""
    rows = []
    for name, entry in MODELS.items():
        source, path = weights_source(name)
        w = entry.weights
        rows.append({
            "name": name, "dataset": entry.dataset, "parameters": count_parameters(name),
            "published_top1": w.top1, "card_top1": _card_top1(name), "protocol": entry.protocol,
            "weights": source, "weights_available": source in ("assets", "cached", "local"),
            "weights_path": str(path) if path is not None and source != "missing" else None,
            "weights_url": w.url, "weights_sha256": w.sha256,
            "normalisation": {"mean": list(w.mean), "std": list(w.std)} if w.mean and w.std else None,
            "description": entry.description,
        })
    return rows


def load_state_dict_checked(model: torch.nn.Module, state: dict, source: str) -> None:
    """``strict=True`` loading with an error that lists missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = [f"checkpoint {source} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {show(shapes)}")
        raise SinfError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


_SAFE_FORMATS = "SINF only loads plain state dicts (tensors in a torch file) and safetensors files, for safety"


def checkpoint_problem(path: str | Path, exc: BaseException) -> str:
    """Why the file at ``path`` could not be read as a checkpoint, in one sentence that names it.

    torch's own message is never passed on as is: for a file holding pickled objects it advises loading
    with ``weights_only`` off, which would run whatever code the file names."""
    import pickle
    import re

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return f"{path} is empty (0 bytes)"
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"{path} is not a plain state dict or safetensors file: it holds the Python object "
                f"{found.group(1)}, and {_SAFE_FORMATS}")
    unsafe = isinstance(exc, pickle.UnpicklingError) or "weights_only" in text.lower().replace(" ", "_")
    return (f"{path} is not a PyTorch state dict or safetensors file ({size} bytes: truncated, damaged or "
            f"another format)" + (f"; {_SAFE_FORMATS}" if unsafe else ""))


def read_checkpoint(path: str | Path) -> dict:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise SinfError(f"checkpoint not found: {path}")
    try:
        if path.suffix == SAFETENSORS:
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SinfError(f"cannot read checkpoint: {checkpoint_problem(path, exc)}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint of ours
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SinfError(f"cannot read checkpoint: {path} is not a PyTorch state dict or safetensors file "
                        "(it does not map names to tensors)")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def build_model(name: str, input_shape: Sequence[int] | None = None) -> SinfModel:
    """``name``'s architecture, randomly initialised, for images of ``input_shape`` (C, H, W; default: the
    entry's ``input_shape``), which it records: a spec is traced and checked at that shape, a registered
    model is run once on it when it is not its own; a model that does not run on it raises ``SinfError``."""
    entry = get_entry(name)
    shape = tuple(int(v) for v in input_shape) if input_shape is not None else entry.input_shape
    if name not in MODELS and is_spec(name):
        return build_spec_model(parse_spec(entry.name), shape)
    model = entry.build()
    if tuple(model.input_shape) != shape:
        _check_runs_on(model, name, shape)
        model.input_shape = shape
    return model


def _check_runs_on(model: SinfModel, name: str, shape: tuple[int, ...]) -> None:
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    except Exception as exc:
        raise SinfError(f"{name} does not run on images of shape {shape} ({type(exc).__name__}: {exc}); "
                        "choose another --image-size") from exc
    finally:
        model.train(was_training)


def _check_sha256(path: Path, expected: str | None, name: str) -> None:
    """Refuse a weights file whose sha256 is not the registered one (when the registry knows it)."""
    if expected is None:
        return
    from ..io import sha256_file

    got = sha256_file(path)
    if got != expected:
        raise SinfError(f"the weights of {name} at {path} have sha256 {got}, not the registered {expected}: "
                        "the file is damaged or another one; delete it (or fetch it again)")


def check_weights_given(name: str, checkpoint: str | Path | None) -> None:
    """A spec has no registered weights: without ``checkpoint`` say so (before any data is loaded)."""
    if checkpoint is None and is_spec(name):
        raise SinfError(f"{name} has no registered weights (SINF downloads no torchvision or timm weights): "
                        "pass the trained weights with --checkpoint FILE (a .safetensors file, or a state dict "
                        "saved with torch.save(model.state_dict(), FILE))")


def load_model(name: str, pretrained: bool = True, checkpoint: str | Path | None = None, progress: bool = True,
               input_shape: Sequence[int] | None = None) -> SinfModel:
    """Build ``name`` for images of ``input_shape`` (``build_model``); load ``checkpoint`` if given, else
    its registered weights when ``pretrained``.

    Release weights go through ``torch.hub.load_state_dict_from_url`` (its cache, hash check off since
    the re-saved copies differ) with ``weights_only=True``; the model is returned in eval mode. A spec
    (``torchvision:NAME``, ...) has no registered weights: it needs ``checkpoint`` (nothing is downloaded).
    """
    entry = get_entry(name)
    if pretrained:
        check_weights_given(name, checkpoint)
    model = build_model(name, input_shape)
    w = entry.weights
    if checkpoint is not None:
        try:
            load_state_dict_checked(model, read_checkpoint(checkpoint), str(checkpoint))
        except SinfError as exc:
            if not is_spec(name) or "shape mismatches" not in str(exc):
                raise
            n = parse_spec(entry.name).num_classes
            built = f"for {n} classes (the data set's count, or the spec's @N)" if n else "with its builder's default head"
            raise SinfError(f"{exc}\n  ({entry.name} was built {built}; the checkpoint must be of that architecture "
                            "with as many classifier outputs)") from exc
    elif pretrained:
        if w.file:
            path = ASSETS_DIR / w.file
            if not path.is_file():
                raise SinfError(f"{name}: weights file {path} is missing from assets/")
            _check_sha256(path, w.sha256, name)
            load_state_dict_checked(model, read_checkpoint(path), str(path))
        elif w.url:
            seed_hub_cache()
            fname = w.url.rsplit("/", 1)[1]
            cached = hub_checkpoint_dir() / fname
            try:
                state = torch.hub.load_state_dict_from_url(
                    w.url, map_location="cpu", progress=progress, check_hash=False, weights_only=True
                )
            except Exception as exc:
                if cached.is_file():  # downloaded (or seeded) but unreadable
                    raise SinfError(
                        f"cannot read the weights of {name}: {checkpoint_problem(cached, exc)}. Delete it to "
                        "download it again."
                    ) from exc
                raise SinfError(
                    f"cannot get weights for {name}: {exc.__class__.__name__}: {exc}. Offline, place {fname} in "
                    f"{hub_checkpoint_dir()} or set {WEIGHTS_ENV} to a folder that holds it."
                ) from exc
            _check_sha256(cached, w.sha256, name)
            load_state_dict_checked(model, state, w.url)
        else:
            raise SinfError(f"{name} has no pretrained weights; train it with `sinf train {name}` and pass --checkpoint")
    return model.eval()


def model_card(name: str) -> dict | None:
    """The JSON card next to an assets/ weights file, if any."""
    entry = get_entry(name)
    if not entry.weights.file:
        return None
    card = ASSETS_DIR / card_file(entry.weights.file)
    return json.loads(card.read_text()) if card.is_file() else None


def publish_weights(run_dir: str | Path, name: str, assets_dir: str | Path, measure, dtype: str = "float32") -> dict:
    """Copy a finished training run (``final.safetensors`` + ``summary.json`` of ``sinf train``) to
    ``assets_dir / <name's Weights.file>`` with a JSON card beside it. ``measure(weights_path)`` returns
    the accuracy report of the COPIED file on the test split (``evaluate.accuracy_report``), so the card's
    top-1 is what `sinf eval` gives. ``dtype='float16'`` stores the floating-point tensors in half precision
    (half the file; they load as float32, and the card's top-1 is measured on the stored file). Both files
    are written atomically; returns the card."""

    from ..io import atomic_write, sha256_file, write_json
    FINAL, SUMMARY = RUN_FINAL, RUN_SUMMARY

    entry = get_entry(name)
    if not entry.weights.file:
        raise SinfError(f"{name} has no weights file in the registry (Weights.file), so there is nothing to publish to")
    run_dir = Path(run_dir)
    summary_path, weights = run_dir / SUMMARY, run_dir / FINAL
    if not summary_path.is_file() or not weights.is_file():
        raise SinfError(f"{run_dir} is not a finished `sinf train` run (needs {SUMMARY} and {FINAL})")
    summary = json.loads(summary_path.read_text())
    if summary.get("model") != name:
        raise SinfError(f"{run_dir} trained {summary.get('model')!r}, not {name!r}")
    load_state_dict_checked(entry.build(), read_checkpoint(weights), str(weights))  # fits, strictly
    if dtype not in ("float32", "float16"):
        raise SinfError(f"publish stores float32 or float16 weights, not {dtype!r}")
    target = Path(assets_dir) / entry.weights.file
    if dtype == "float32":
        atomic_write(target, lambda p: shutil.copyfile(weights, p))
    else:
        from safetensors.torch import save_file

        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in read_checkpoint(weights).items()}
        atomic_write(target, lambda p: save_file(half, str(p)))
    acc = measure(target)
    cfg = summary.get("config", {})
    card = {
        "model": name,
        "architecture": entry.description,
        "parameters": sum(p.numel() for p in entry.build().parameters()),
        "dtype": dtype,
        "recipe": {k: cfg.get(k) for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                            "label_smoothing", "warmup_epochs", "bf16", "channels_last", "seed")}
        | {"optimizer": "SGD, Nesterov momentum", "schedule": "linear warm-up then cosine to 0",
           "augmentation": "random crop (pad 4) + horizontal flip",
           "data": f"CIFAR-100 train minus the stratified calibration split ({summary.get('samples')} images)"},
        "epochs": cfg.get("epochs"),
        "wall_time_s": summary.get("wall_time_s"),
        "history": summary.get("history"),
        "test_top1": acc["top1"],
        "test_superclass_acc": acc.get("superclass_acc"),
        "sha256": sha256_file(target),
        "file": entry.weights.file,
    }
    if summary.get("machine"):
        card["trained_on"] = summary["machine"]
    if cfg.get("init"):  # a warm restart: say what it started from and the totals over every stage
        init = cfg["init"]
        card["init"] = init
        earlier = init.get("card") or {}
        before_epochs = earlier.get("total_epochs", earlier.get("epochs"))
        before_time = earlier.get("total_wall_time_s", earlier.get("wall_time_s"))
        if before_epochs is not None and before_time is not None:
            card["total_epochs"] = before_epochs + (cfg.get("epochs") or 0)
            card["total_wall_time_s"] = round(before_time + (summary.get("wall_time_s") or 0.0), 1)
    write_json(target.with_name(card_file(target.name)), card)
    return card
