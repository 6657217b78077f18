"""A subgraph's spec as plain data: what it keeps, its validation against a base model, and the spec
file (``save_subgraphs`` / ``load_subgraph_specs``, format ``SPECS_FORMAT``).

The bottom of the package: it knows the base model's layers but builds nothing (``slicing`` does).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..config import FILLS  # what replaces a removed channel: its mean activation (folded), or zero
from ..errors import SinfError
from ..io import write_json
from ..models import PrunableLayer, SinfModel

SPECS_FORMAT = "sinf-subgraph-specs"
SPECS_VERSION = 1


def _int_list(what: str, values) -> list[int]:
    if not isinstance(values, (list, tuple)) and not (isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == 1):
        raise SinfError(f"{what} must be a list of integers")
    if isinstance(values, (np.ndarray, torch.Tensor)):
        values = values.tolist()
    if set(map(type, values)) <= {int}:  # the common case, checked at C speed
        return list(values)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise SinfError(f"{what} must be a list of integers, found {v!r}")
        out.append(int(v))
    return out


def check_fill(fill: str) -> str:
    if fill not in FILLS:
        raise SinfError(f"fill must be one of {FILLS} (what replaces a removed channel), got {fill!r}")
    return fill


def _float_list(what: str, values) -> list[float]:
    if isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == 1:
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise SinfError(f"{what} must be a list of numbers")
    if set(map(type, values)) <= {float, int} and np.isfinite(np.asarray(values, dtype=np.float64)).all():
        return [float(v) for v in values]  # the common case, checked at C speed
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise SinfError(f"{what} must be a list of finite numbers, found {v!r}")
        out.append(float(v))
    return out


@dataclass
class SubgraphSpec:
    """What a subgraph keeps, as plain data.

    ``base_model``: the base model's name: registered, or a canonical spec that records its class
    count (``torchvision:resnet18@10``, see ``models.specs``). ``tap``: the unit where the shared stem ends
    (None: the whole network is the subgraph, fed with images). ``keep``: prunable layer name ->
    kept output-channel indices; layers after the tap that are absent keep every channel.
    ``classes``: the restricted head (global class indices) or None for the full head.
    ``fill``: optional mean replacement, layer name -> one value per output channel of the layer (its
    mean activation A_l over the cluster's data): each removed channel is replaced by that constant,
    folded into the bias (or BatchNorm mean) of the layer that reads it, instead of by zero.
    ``bn``: optional re-estimated BatchNorm statistics, BatchNorm module name in the base model ->
    {"mean": [...], "var": [...]} with one value per channel the subgraph keeps there (see
    ``estimate_bn_stats``); they replace the base model's running statistics in the subgraph.
    """

    base_model: str
    tap: str | None
    keep: dict[str, list[int]] = field(default_factory=dict)
    classes: list[int] | None = None
    fill: dict[str, list[float]] = field(default_factory=dict)
    bn: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model:
            raise SinfError("a subgraph spec needs the base model's name (a registry name, or a spec such as torchvision:resnet18@10)")
        if self.tap is not None and not isinstance(self.tap, str):
            raise SinfError(f"tap must be a unit name or null, got {self.tap!r}")
        if not isinstance(self.keep, Mapping):
            raise SinfError("keep must map layer names to lists of channel indices")
        self.keep = {str(k): _int_list(f"keep[{k!r}]", v) for k, v in self.keep.items()}
        if self.classes is not None:
            self.classes = _int_list("classes", self.classes)
        if not isinstance(self.fill, Mapping):
            raise SinfError("fill must map layer names to lists of per-channel values")
        self.fill = {str(k): _float_list(f"fill[{k!r}]", v) for k, v in self.fill.items()}
        if not isinstance(self.bn, Mapping):
            raise SinfError("bn must map BatchNorm names to {'mean': [...], 'var': [...]}")
        bn = {}
        for k, v in self.bn.items():
            if not isinstance(v, Mapping) or set(v) != {"mean", "var"}:
                raise SinfError(f"bn[{k!r}] must be {{'mean': [...], 'var': [...]}}")
            mean, var = _float_list(f"bn[{k!r}].mean", v["mean"]), _float_list(f"bn[{k!r}].var", v["var"])
            if len(mean) != len(var) or any(x < 0 for x in var):
                raise SinfError(f"bn[{k!r}]: mean and var need one value per channel, var >= 0")
            bn[str(k)] = {"mean": mean, "var": var}
        self.bn = bn

    def kept_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.keep.items()}

    def to_json(self) -> dict:
        out = {"base_model": self.base_model, "tap": self.tap, "keep": {k: list(v) for k, v in self.keep.items()},
               "classes": None if self.classes is None else list(self.classes)}
        if self.fill:
            out["fill"] = {k: list(v) for k, v in self.fill.items()}
        if self.bn:
            out["bn"] = {k: {"mean": list(v["mean"]), "var": list(v["var"])} for k, v in self.bn.items()}
        return out

    @classmethod
    def from_json(cls, obj) -> "SubgraphSpec":
        if not isinstance(obj, dict):
            raise SinfError("a subgraph spec must be a JSON object")
        unknown = set(obj) - {"base_model", "tap", "keep", "classes", "fill", "bn"}
        if unknown:
            raise SinfError(f"unknown fields in subgraph spec: {sorted(unknown)}")
        if "base_model" not in obj:
            raise SinfError("subgraph spec has no base_model")
        return cls(obj["base_model"], obj.get("tap"), obj.get("keep") or {}, obj.get("classes"), obj.get("fill") or {},
                   obj.get("bn") or {})


# --------------------------------------------------------------------------------------------------
# The BatchNorms after a tap, and what a spec keeps of them
# --------------------------------------------------------------------------------------------------


def tail_batchnorms(model: SinfModel, tap: str | None) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BatchNorm2d modules of the units after ``tap``, in forward (module) order, named by their
    path in ``model``. A subgraph's ``units`` hold copies of exactly these, in the same order."""
    t = -1 if tap is None else model.unit_index(tap)
    names = {id(m): n for n, m in model.named_modules()}
    out, seen = [], set()
    for _, unit in model.units()[t + 1 :]:
        for m in unit.modules():
            if isinstance(m, nn.BatchNorm2d) and id(m) not in seen:
                seen.add(id(m))
                out.append((names[id(m)], m))
    return out


def _tail_batchnorm_kept(model: SinfModel, spec: SubgraphSpec) -> list[tuple[str, nn.BatchNorm2d, list[int] | None]]:
    """Per BatchNorm after ``spec``'s tap (``tail_batchnorms`` order): its name, the module, and the
    channels ``spec`` keeps there, sorted (None: all of them)."""
    layer_of = {id(bn): l.name for l in model.prunable_layers()
                for bn in (l.bn, *(s for s in l.through if isinstance(s, nn.BatchNorm2d))) if bn is not None}
    return [(name, bn, sorted(spec.keep[layer_of[id(bn)]]) if layer_of.get(id(bn)) in spec.keep else None)
            for name, bn in tail_batchnorms(model, spec.tap)]


def tail_batchnorm_sizes(model: SinfModel, spec: SubgraphSpec) -> dict[str, int]:
    """BatchNorm name -> the number of channels it has in ``spec``'s subgraph."""
    return {name: bn.num_features if kept is None else len(kept) for name, bn, kept in _tail_batchnorm_kept(model, spec)}


# --------------------------------------------------------------------------------------------------
# Validation and the spec file
# --------------------------------------------------------------------------------------------------


def validate_spec(model: SinfModel, spec: SubgraphSpec) -> dict[str, PrunableLayer]:
    """Check ``spec`` against ``model``; returns the prunable layers it prunes by name. Raises
    SinfError for an unknown tap or layer, a layer inside the stem, kept indices that are out of range,
    empty or duplicated, and head classes that are out of range, empty or duplicated."""
    t = -1 if spec.tap is None else model.unit_index(spec.tap)
    layers = {l.name: l for l in model.prunable_layers()}
    for name, idx in spec.keep.items():
        if name not in layers:
            raise SinfError(f"no prunable layer named {name!r}; known: {', '.join(layers)}")
        layer = layers[name]
        if layer.unit <= t:
            raise SinfError(f"layer {name!r} is in the shared stem (tap {spec.tap!r}); only layers after the tap can be pruned")
        if not idx:
            raise SinfError(f"layer {name!r}: keeps no channel (a subgraph must keep at least one per layer)")
        if len(set(idx)) != len(idx):
            raise SinfError(f"layer {name!r}: duplicated kept indices")
        bad = [i for i in idx if not 0 <= i < layer.channels]
        if bad:
            raise SinfError(f"layer {name!r}: kept indices {bad[:5]} out of range 0..{layer.channels - 1}")
    for name, values in spec.fill.items():
        if name not in spec.keep:
            raise SinfError(f"fill given for {name!r}, which the spec does not prune")
        if len(values) != layers[name].channels:
            raise SinfError(f"fill[{name!r}] has {len(values)} values for {layers[name].channels} channels")
    if spec.bn:
        sizes = tail_batchnorm_sizes(model, spec)
        for name, st in spec.bn.items():
            if name not in sizes:
                raise SinfError(f"bn given for {name!r}, which is not a BatchNorm after the tap {spec.tap!r}")
            if len(st["mean"]) != sizes[name]:
                raise SinfError(f"bn[{name!r}] has {len(st['mean'])} values for the {sizes[name]} channels the subgraph keeps")
    if spec.classes is not None:
        n = int(model.num_classes)
        if not spec.classes:
            raise SinfError("restricted head with no classes")
        if len(set(spec.classes)) != len(spec.classes):
            raise SinfError("restricted head lists a class twice")
        bad = [c for c in spec.classes if not 0 <= c < n]
        if bad:
            raise SinfError(f"head classes {bad[:5]} out of range 0..{n - 1}")
    return {name: layers[name] for name in spec.keep}


def save_subgraphs(path: str | Path, specs: Mapping[str, SubgraphSpec]) -> Path:
    """Write ``{name: spec}`` (e.g. one per cluster) as JSON, atomically."""
    return write_json(path, {"format": SPECS_FORMAT, "version": SPECS_VERSION,
                             "subgraphs": {str(k): s.to_json() for k, s in specs.items()}})


def load_subgraph_specs(path: str | Path) -> dict[str, SubgraphSpec]:
    path = Path(path)
    if not path.is_file():
        raise SinfError(f"subgraph spec file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SinfError(f"cannot read subgraph specs {path}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != SPECS_FORMAT or not isinstance(obj.get("subgraphs"), dict):
        raise SinfError(f"{path} is not a SINF subgraph spec file (format {SPECS_FORMAT!r})")
    if obj.get("version") != SPECS_VERSION:
        raise SinfError(f"{path}: unsupported spec version {obj.get('version')!r} (this SINF reads {SPECS_VERSION})")
    return {k: SubgraphSpec.from_json(v) for k, v in obj["subgraphs"].items()}
