"""Per-cluster subgraphs: the retention schedule, kept-index specs, and physical slicing (METHOD.md 5-6).

A subgraph is a real, smaller copy of the units after the tap plus the head: the kept output channels
of each prunable conv, its bias and BN parameters/statistics, and the consumer's input channels are
sliced out (VGG: the next conv, or the classifier's first linear layer after the last conv; ResNet:
conv2 of a BasicBlock; conv2 / conv3 of a Bottleneck). The residual stream stays intact. The result
is made of plain dense ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` modules (no masks), so it
runs faster with ordinary kernels and works with ``channels_last`` and bf16 autocast.

A subgraph is stored as data: the base model's registry name, the tap, the kept channel indices per
layer and the head's classes (JSON). ``build_subgraph`` rebuilds the modules from the base model with
a pure function; ``save_subgraph_weights`` can additionally store the sliced tensors (safetensors).
Nothing is ever pickled.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .cost import count_flops, module_cost, stem_cost, stem_output, tail_cost
from .data import Hierarchy, ImageDataset, iterate_batches
from .device import autocast, module_device, timed
from .errors import SinfError
from .fusion import prepare_for_inference
from .io import atomic_write, write_json
from .models import PrunableLayer, SinfModel, build_model

if TYPE_CHECKING:
    from .stats import ActivationStats
from .models.resnet_cifar import CifarResNet
from .models.vgg_cifar import CifarVGG

SPECS_FORMAT = "sinf-subgraph-specs"
SPECS_VERSION = 1

# --------------------------------------------------------------------------------------------------
# Retention schedule and kept indices
# --------------------------------------------------------------------------------------------------


def _check_ratio(name: str, r: float) -> float:
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise SinfError(f"{name} must be a number in [0, 1), got {r!r}") from None
    if not (0.0 <= r < 1.0):  # also rejects NaN
        raise SinfError(f"{name} must be a removed fraction in [0, 1) (e.g. 0.5 = remove half), got {r}")
    return r


def removed_fractions(n_layers: int, first: int, r_M: float, r_L: float) -> list[float]:
    """r_l for layers ``first..n_layers-1``: r_M + (r_L - r_M)(l - M)/(L - M) (METHOD.md section 5).
    A single pruned layer (M == L) gets r_L."""
    r_M, r_L = _check_ratio("r_M", r_M), _check_ratio("r_L", r_L)
    if not 0 <= first <= n_layers:
        raise SinfError(f"first pruned layer index {first} out of range 0..{n_layers}")
    last = n_layers - 1
    if first == last:
        return [r_L]
    return [r_M + (r_L - r_M) * (l - first) / (last - first) for l in range(first, n_layers)]


def kept_count(channels: int, r: float, multiple_of: int | None = None) -> int:
    """ceil((1 - r) * C), optionally rounded *up* to a multiple of ``multiple_of`` (never above C),
    never below 1."""
    c = int(channels)
    if c < 1:
        raise SinfError(f"a layer needs at least one channel, got {channels}")
    keep = math.ceil((1.0 - r) * c - 1e-9)  # tolerance: (1 - 0.3) * 10 is 7.000000000000001
    if multiple_of is not None:
        if int(multiple_of) < 1:
            raise SinfError(f"multiple_of must be a positive integer, got {multiple_of}")
        m = int(multiple_of)
        keep = m * math.ceil(keep / m)
    return int(min(c, max(1, keep)))


def retention_schedule(
    layers: Sequence[str],
    first: int,
    r_M: float,
    r_L: float,
    multiple_of: int | None = None,
    channels: Sequence[int] | None = None,
) -> dict[str, int]:
    """Kept channel counts for the pruned layers ``layers[first:]`` (forward order; ``first`` = M, the
    first layer after the tap, as an index into ``layers``; L = the last layer). ``channels[i]`` is
    C of ``layers[i]``. r_l is interpolated linearly from r_M at M to r_L at L; the layer keeps
    ceil((1 - r_l) C_l) channels (see ``kept_count``). Layers before ``first`` are the shared stem and
    are not in the result; ``first == len(layers)`` gives ``{}`` (nothing left to prune).
    Per-cluster overrides are simply a call with that cluster's (r_M, r_L)."""
    layers = list(layers)
    if channels is None:
        raise SinfError("retention_schedule needs the channel count of every layer (channels=...)")
    channels = [int(c) for c in channels]
    if len(channels) != len(layers):
        raise SinfError(f"got {len(channels)} channel counts for {len(layers)} layers")
    if len(set(layers)) != len(layers):
        raise SinfError("layer names in a retention schedule must be unique")
    rs = removed_fractions(len(layers), int(first), r_M, r_L)
    return {layers[first + i]: kept_count(channels[first + i], r, multiple_of) for i, r in enumerate(rs)}


def first_pruned_index(model: SinfModel, tap: str | int | None) -> int:
    """Index into ``model.prunable_layers()`` of the first layer after ``tap`` (M); len(...) when none."""
    layers = model.prunable_layers()
    t = -1 if tap is None else model.unit_index(tap)
    for i, layer in enumerate(layers):
        if layer.unit > t:
            return i
    return len(layers)


def model_schedule(
    model: SinfModel, tap: str | int | None, r_M: float, r_L: float, multiple_of: int | None = None
) -> dict[str, int]:
    """``retention_schedule`` over ``model``'s prunable layers after ``tap``."""
    layers = model.prunable_layers()
    return retention_schedule([l.name for l in layers], first_pruned_index(model, tap), r_M, r_L,
                              multiple_of, [l.channels for l in layers])


def keep_indices(scores: Mapping[str, torch.Tensor], kept: Mapping[str, int]) -> dict[str, list[int]]:
    """Per layer in ``kept``: the indices of the ``kept[layer]`` highest scores, sorted ascending.
    Ties go to the lower channel index (stable sort), so the result is deterministic."""
    out: dict[str, list[int]] = {}
    for name, k in kept.items():
        if name not in scores:
            raise SinfError(f"no scores for layer {name!r}")
        s = torch.as_tensor(scores[name]).detach().flatten().to("cpu", torch.float64)
        k = int(k)
        if not 1 <= k <= s.numel():
            raise SinfError(f"layer {name!r}: cannot keep {k} of {s.numel()} channels")
        if torch.isnan(s).any():
            raise SinfError(f"layer {name!r}: scores contain NaN")
        order = torch.sort(s, descending=True, stable=True).indices[:k]
        out[name] = sorted(int(i) for i in order)
    return out


# --------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------


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


FILLS = ("mean", "zero")  # what replaces a removed channel: its mean activation (folded), or zero


def check_fill(fill: str) -> str:
    if fill not in FILLS:
        raise SinfError(f"fill must be one of {FILLS} (what replaces a removed channel), got {fill!r}")
    return fill


DEFAULT_BN_SAMPLES = 256  # fit images per cluster on which subgraph BatchNorm statistics are re-estimated


def check_bn_samples(n) -> int:
    """Fit images per cluster for BatchNorm re-estimation: 0 (off) or at least 2."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or n == 1:
        raise SinfError(f"bn_samples must be 0 (keep the base model's BatchNorm statistics) or an integer >= 2, got {n!r}")
    return int(n)


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

    ``base_model``: registry name of the base model. ``tap``: the unit where the shared stem ends
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
            raise SinfError("a subgraph spec needs the base model's registry name")
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


def make_cluster_specs(
    model: SinfModel,
    base_model: str,
    tap: str | None,
    scores_by_cluster: Mapping[int, Mapping[str, torch.Tensor]],
    hierarchy: Hierarchy,
    r_M: float,
    r_L: float,
    multiple_of: int | None = None,
    overrides: Mapping[int, tuple[float, float]] | None = None,
    restricted: bool = True,
    fill_stats: "ActivationStats | None" = None,
    bn_samples: "BatchNormSamples | None" = None,
    on_progress: Callable[[int, int], None] | None = None,
    built: dict[int, "Subgraph"] | None = None,
) -> dict[int, SubgraphSpec]:
    """One spec per cluster index in ``scores_by_cluster``: the schedule (r_M, r_L), or the cluster's
    ``overrides[m]``, applied to the cluster's scores; head restricted to the cluster's classes
    unless ``restricted`` is False. With ``fill_stats`` (activation statistics of the fit split),
    removed channels are replaced by their mean activation over the cluster's classes (mean
    replacement) instead of by zero. With ``bn_samples``, each subgraph's BatchNorm statistics are
    re-estimated on its cluster's fit samples (``estimate_bn_stats``; a cluster with fewer than 2
    keeps the base model's); ``on_progress(done, total)``
    is called after each cluster. ``built``: a dict that receives each cluster's subgraph, built once
    (the BatchNorm pass's own build, with the new statistics set; else built here), for a caller that
    evaluates the specs next."""
    specs = {}
    for m, scores in scores_by_cluster.items():
        if not 0 <= int(m) < hierarchy.num_clusters:
            raise SinfError(f"cluster index {m} out of range 0..{hierarchy.num_clusters - 1}")
        rm, rl = (overrides or {}).get(m, (r_M, r_L))
        kept = model_schedule(model, tap, rm, rl, multiple_of)
        keep = keep_indices(scores, kept)
        members = hierarchy.members(int(m))
        fill = {} if fill_stats is None else {
            name: fill_stats.group_mean(name, members).tolist() for name, idx in keep.items()}
        spec = SubgraphSpec(base_model, tap, keep, members if restricted else None, fill)
        if bn_samples is not None and len(bn_samples.indices[int(m)]) >= 2:  # else: the base statistics
            spec, sub = bn_samples.estimate_built(spec, int(m))
        else:
            sub = build_subgraph(model, spec) if built is not None else None
        if built is not None:
            built[int(m)] = sub
        specs[int(m)] = spec
        if on_progress:
            on_progress(len(specs), len(scores_by_cluster))
    return specs


# --------------------------------------------------------------------------------------------------
# Physical slicing
# --------------------------------------------------------------------------------------------------


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.clone().contiguous(), requires_grad=like.requires_grad)


def _conv_out(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    conv.weight = _param(conv.weight.data.index_select(0, idx), conv.weight)
    if conv.bias is not None:
        conv.bias = _param(conv.bias.data.index_select(0, idx), conv.bias)
    conv.out_channels = int(idx.numel())


def _conv_in(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    if conv.groups != 1:
        raise SinfError(f"cannot slice the input channels of a grouped conv ({conv})")
    conv.weight = _param(conv.weight.data.index_select(1, idx), conv.weight)
    conv.in_channels = int(idx.numel())


def _bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    if bn.affine:
        bn.weight = _param(bn.weight.data.index_select(0, idx), bn.weight)
        bn.bias = _param(bn.bias.data.index_select(0, idx), bn.bias)
    if bn.track_running_stats:
        bn.running_mean = bn.running_mean.index_select(0, idx).clone()
        bn.running_var = bn.running_var.index_select(0, idx).clone()
    bn.num_features = int(idx.numel())


def _linear_in(lin: nn.Linear, channels: int, idx: torch.Tensor) -> None:
    """Keep the input features of channels ``idx`` after a flatten of [C, H, W] (feature c*H*W + s)."""
    if lin.in_features % channels:
        raise SinfError(f"{lin} does not read a flattened [{channels}, H, W] map")
    spatial = lin.in_features // channels
    feat = (idx.view(-1, 1) * spatial + torch.arange(spatial, device=idx.device).view(1, -1)).flatten()
    lin.weight = _param(lin.weight.data.index_select(1, feat), lin.weight)
    lin.in_features = int(feat.numel())


def _linear_out(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = _param(lin.weight.data.index_select(0, idx), lin.weight)
    if lin.bias is not None:
        lin.bias = _param(lin.bias.data.index_select(0, idx), lin.bias)
    lin.out_features = int(idx.numel())


def _channel_reader(layer: PrunableLayer, unit: nn.Module, all_layers: list[PrunableLayer],
                    flat_linear: nn.Linear | None) -> tuple[nn.Module, nn.BatchNorm2d | None]:
    """The module that reads ``layer``'s output channels, and the BatchNorm after it (None for a linear)."""
    if layer.role == "vgg":
        pos = [l.name for l in all_layers].index(layer.name)
        if pos + 1 < len(all_layers):
            return all_layers[pos + 1].conv, all_layers[pos + 1].bn
        if flat_linear is not None:
            return flat_linear, None
        raise SinfError(f"cannot find the layer that reads {layer.name!r}")
    if layer.role in ("basic", "bottleneck1"):
        return unit.conv2, unit.bn2
    if layer.role == "bottleneck2":
        return unit.conv3, unit.bn3
    raise SinfError(f"layer {layer.name!r}: unknown prunable role {layer.role!r}")


def _removed_input_shift(reader: nn.Module, channels: int, idx: torch.Tensor, fill: list[float]) -> torch.Tensor:
    """What the removed input channels (those not in ``idx``) add to ``reader``'s output when each
    holds the constant ``fill[c]``: sum_c fill[c] * (sum of the weights reading channel c). Exact for
    a linear layer and for a convolution away from its zero-padded border."""
    w = reader.weight.data
    removed = torch.ones(channels, dtype=torch.bool, device=w.device)
    removed[idx] = False
    values = torch.as_tensor(fill, dtype=w.dtype, device=w.device) * removed
    if isinstance(reader, nn.Conv2d):
        return torch.einsum("oc,c->o", w.sum(dim=(2, 3)), values)
    spatial = reader.in_features // channels  # nn.Linear after a flatten of [C, H, W]
    return w @ values.repeat_interleave(spatial)


def _add_output_shift(reader: nn.Module, bn: nn.BatchNorm2d | None, shift: torch.Tensor) -> None:
    """Fold a constant per-output-channel shift into ``reader``'s bias, or into the running mean of
    the BatchNorm that follows a bias-free conv (BN(y + s) == BN'(y) with mean' = mean - s)."""
    if reader.bias is not None:
        reader.bias = _param(reader.bias.data + shift, reader.bias)
    elif bn is not None and bn.track_running_stats:
        bn.running_mean = bn.running_mean - shift
    else:
        raise SinfError(f"cannot fold mean replacement into {reader}: no bias and no BatchNorm statistics")


def _head_source(model: SinfModel) -> tuple[nn.Module, nn.Linear | None]:
    """A module computing exactly ``model.head`` from the model's own modules, and the linear layer
    that reads the last conv's flattened channels (VGG) or None (ResNet: the residual stream)."""
    if isinstance(model, CifarResNet):
        return nn.Sequential(model.avgpool, nn.Flatten(1), model.fc), None
    if isinstance(model, CifarVGG):
        first = model.classifier[0]
        return nn.Sequential(nn.Flatten(1), model.classifier), first if isinstance(first, nn.Linear) else None
    raise SinfError(f"subgraphs are implemented for CIFAR ResNets and VGGs, not {type(model).__name__}")


class Subgraph(nn.Module):
    """A sliced copy of the units after the tap plus the head; plain dense modules.

    ``forward(h)``: h = the stem output at the tap [N, C, H, W] (images when the tap is None) ->
    logits [N, num_classes] in the global class space; with a restricted head, classes outside
    ``classes`` get -inf.
    """

    def __init__(self, units: list[tuple[str, nn.Module]], head: nn.Module, num_classes: int,
                 classes: list[int] | None, tap: str | None = None):
        super().__init__()
        self.unit_names = [n for n, _ in units]
        self.units = nn.ModuleList([m for _, m in units])
        self.head = head
        self.num_classes = int(num_classes)
        self.tap = tap
        self.register_buffer("classes", None if classes is None else torch.as_tensor(classes, dtype=torch.long),
                             persistent=False)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            h = unit(h)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(h))
        if self.classes is None:
            return logits
        out = logits.new_full((logits.shape[0], self.num_classes), float("-inf"))
        return out.index_copy(1, self.classes, logits)


@torch.no_grad()
def build_subgraph(model: SinfModel, spec: SubgraphSpec) -> Subgraph:
    """The physically pruned subgraph of ``spec`` (a pure function: ``model`` is deep-copied, never
    modified). Same device, dtype and train/eval mode as ``model``."""
    pruned = validate_spec(model, spec)
    t = -1 if spec.tap is None else model.unit_index(spec.tap)
    units = model.units()[t + 1 :]
    head_src, flat_linear = _head_source(model)
    memo: dict = {}
    copied_units, copied_head = copy.deepcopy(([m for _, m in units], head_src), memo)

    def twin(module: nn.Module) -> nn.Module:
        return memo[id(module)]

    all_layers = model.prunable_layers()
    cuts = []  # (layer, kept indices, the module reading its channels, that module's BatchNorm or None)
    for name, idx_list in spec.keep.items():
        layer = pruned[name]
        if len(idx_list) == layer.channels and idx_list == list(range(layer.channels)):
            continue  # keeps everything in order: nothing to slice
        idx = torch.as_tensor(sorted(idx_list), dtype=torch.long, device=layer.conv.weight.device)
        cuts.append((layer, idx, *_channel_reader(layer, units[layer.unit - t - 1][1], all_layers, flat_linear)))
    # mean replacement first, on unsliced twins, from the base model's own (unsliced) readers
    for layer, idx, reader, reader_bn in cuts:
        if layer.name in spec.fill:
            shift = _removed_input_shift(reader, layer.channels, idx, spec.fill[layer.name])
            _add_output_shift(twin(reader), None if reader_bn is None else twin(reader_bn), shift)
    for layer, idx, reader, _ in cuts:
        _conv_out(twin(layer.conv), idx)
        _bn(twin(layer.bn), idx)
        if isinstance(reader, nn.Linear):
            _linear_in(twin(reader), layer.channels, idx)
        else:
            _conv_in(twin(reader), idx)
    if spec.bn:
        base_bns = dict(tail_batchnorms(model, spec.tap))
        for name, st in spec.bn.items():
            bn = twin(base_bns[name])
            like = bn.running_mean
            bn.running_mean = torch.tensor(st["mean"], dtype=like.dtype, device=like.device)
            bn.running_var = torch.tensor(st["var"], dtype=like.dtype, device=like.device)
    if spec.classes is not None:
        fc = model.classifier_layer()
        _linear_out(twin(fc), torch.as_tensor(spec.classes, dtype=torch.long, device=fc.weight.device))
    sub = Subgraph(list(zip([n for n, _ in units], copied_units)), copied_head, model.num_classes, spec.classes, spec.tap)
    p = next(model.parameters(), None)
    if p is not None and sub.classes is not None:
        sub.classes = sub.classes.to(p.device)
    return sub.train(model.training)


# --------------------------------------------------------------------------------------------------
# BatchNorm statistics of a pruned subgraph
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
    layer_of = {id(l.bn): l.name for l in model.prunable_layers() if l.bn is not None}
    return [(name, bn, sorted(spec.keep[layer_of[id(bn)]]) if layer_of.get(id(bn)) in spec.keep else None)
            for name, bn in tail_batchnorms(model, spec.tap)]


def tail_batchnorm_sizes(model: SinfModel, spec: SubgraphSpec) -> dict[str, int]:
    """BatchNorm name -> the number of channels it has in ``spec``'s subgraph."""
    return {name: bn.num_features if kept is None else len(kept) for name, bn, kept in _tail_batchnorm_kept(model, spec)}


@torch.no_grad()
def _batch_statistics(sub: Subgraph, h: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm of ``sub.units`` (module order): the mean and variance of its input over ``h``,
    every BatchNorm normalising with its batch statistics (``sub`` is modified: pass a throwaway copy)."""
    bns = [m for m in sub.units.modules() if isinstance(m, nn.BatchNorm2d)]
    sub.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    for start in range(0, len(h), batch_size):
        sub.features(h[start : start + batch_size])
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]


def unpruned_batch_statistics(model: SinfModel, tap: str | None, h: torch.Tensor,
                              batch_size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What ``estimate_bn_stats`` measures on the unpruned tail after ``tap`` over ``h``; it depends
    on the tap and the samples only, so callers that prune one sample set many ways compute it once."""
    whole = SubgraphSpec("unpruned tail", tap)  # a throwaway spec: keeps everything, the name is a label
    return _batch_statistics(build_subgraph(model, whole), h.float(), batch_size)


@torch.no_grad()
def estimate_bn_stats(model: SinfModel, spec: SubgraphSpec, h: torch.Tensor, batch_size: int = 256,
                      unpruned: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> SubgraphSpec:
    """``spec`` with re-estimated BatchNorm statistics (field ``bn``) for every BatchNorm after its tap.

    Removing channels changes what every later BatchNorm sees while its running statistics still
    describe the unpruned network; on a network without skip connections the mismatch compounds
    layer by layer (VGG16-BN, 5 consecutively pruned layers: every prediction the same class). Both
    the subgraph and the unpruned tail run on ``h`` [N, ...] (stem outputs at the tap of fit-split
    samples, e.g. the cluster's own) with batch statistics, and each BatchNorm gets the base model's
    statistics corrected by what the pruning changed on those samples (kept channels):
    mean = mean_base + (mean_pruned - mean_unpruned), var = var_base * var_pruned / var_unpruned.
    Measuring the change, rather than taking the samples' own statistics, keeps the normalisation the
    later layers were trained with: normalising a VGG16 subgraph to its cluster's own statistics cost
    14 points of oracle accuracy with no channel removed at all. ``unpruned``: the unpruned tail's
    statistics over the same ``h`` (``unpruned_batch_statistics``), computed here when None. No
    weight changes; ``model`` and ``spec`` are not modified."""
    return estimate_bn_stats_built(model, spec, h, batch_size, unpruned)[0]


def estimate_bn_stats_built(model: SinfModel, spec: SubgraphSpec, h: torch.Tensor, batch_size: int = 256,
                            unpruned: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[SubgraphSpec, "Subgraph"]:
    """``estimate_bn_stats`` and the subgraph of the returned spec, built once: the module the
    statistics pass ran, with the new statistics set (equal to ``build_subgraph`` of the spec)."""
    if h.shape[0] < 2:
        raise SinfError("re-estimating BatchNorm statistics needs at least 2 samples")
    h = h.float()
    sub = build_subgraph(model, dataclasses.replace(spec, bn={}))
    bns = [m for m in sub.units.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(bn.momentum, bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None) for bn in bns]
    pruned = _batch_statistics(sub, h, batch_size)
    full = unpruned if unpruned is not None else unpruned_batch_statistics(model, spec.tap, h, batch_size)
    out = {}
    for (name, base_bn, kept), (mp, vp), (mu, vu), bn, (momentum, tracked) in zip(
            _tail_batchnorm_kept(model, spec), pruned, full, bns, saved):
        mb, vb = base_bn.running_mean, base_bn.running_var
        if kept is not None:
            idx = torch.as_tensor(kept, dtype=torch.long, device=mb.device)
            mu, vu, mb, vb = (t.index_select(0, idx) for t in (mu, vu, mb, vb))
        mean, var = mb + mp - mu, (vb * vp / vu.clamp_min(1e-12)).clamp_min(0.0)
        out[name] = {"mean": mean.tolist(), "var": var.tolist()}
        bn.running_mean, bn.running_var = mean.to(bn.running_mean.dtype), var.to(bn.running_var.dtype)
        bn.momentum = momentum
        if tracked is not None:
            bn.num_batches_tracked = tracked
    return dataclasses.replace(spec, bn=out), sub.train(model.training)


class BatchNormSamples:
    """Fit-split samples for ``estimate_bn_stats``: up to ``per_cluster`` random images of each
    cluster (fixed by ``seed``), with their stem outputs computed once per tap and kept.

    ``features(tap, m)``: the stem outputs of cluster m's samples; ``features(tap)``: of all samples
    (every cluster, for a network that serves all classes)."""

    def __init__(self, model: SinfModel, data: ImageDataset, hierarchy: Hierarchy | None = None,
                 per_cluster: int = DEFAULT_BN_SAMPLES, seed: int = 0, batch_size: int = 256):
        if check_bn_samples(per_cluster) == 0:
            raise SinfError("BatchNorm re-estimation needs at least 2 samples per cluster, got 0")
        hierarchy = hierarchy or data.hierarchy
        self.model, self.data, self.batch_size = model, data, int(batch_size)
        self.per_cluster = int(per_cluster)
        cluster = hierarchy.cluster_array()[data.labels.numpy()]
        rng = np.random.default_rng(seed)
        self.indices = {m: np.sort(rng.permutation(np.flatnonzero(cluster == m))[: self.per_cluster])
                        for m in range(hierarchy.num_clusters)}
        self._stem: dict[str | None, tuple[torch.Tensor, dict[int, slice]]] = {}
        self._unpruned: dict[tuple[str | None, int | None], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @torch.no_grad()
    def _at(self, tap: str | None) -> tuple[torch.Tensor, dict[int, slice]]:
        if tap not in self._stem:
            device = module_device(self.model)
            was_training = self.model.training
            self.model.eval()
            parts = [x if tap is None else self.model.forward_stem(x, tap)
                     for x, _ in iterate_batches(self.data, self.batch_size, self.order(), device)]
            self.model.train(was_training)
            self.set_features(tap, torch.cat(parts))
        return self._stem[tap]

    def order(self) -> np.ndarray:
        """Indices into the data of every sample, cluster by cluster (the row order of ``features(tap)``)."""
        return np.concatenate([self.indices[m] for m in sorted(self.indices)])

    def set_features(self, tap: str | None, h: torch.Tensor) -> None:
        """Use ``h`` [len(order()), ...] as the samples' stem outputs at ``tap`` (e.g. stored ones)."""
        if h.shape[0] != len(self.order()):
            raise SinfError(f"stored BatchNorm sample features have {h.shape[0]} rows, the samples are {len(self.order())}")
        spans, start = {}, 0
        for m in sorted(self.indices):
            spans[m] = slice(start, start + len(self.indices[m]))
            start += len(self.indices[m])
        self._stem[tap] = (h.float(), spans)

    def features(self, tap: str | None, cluster: int | None = None) -> torch.Tensor:
        h, spans = self._at(tap)
        if cluster is None:
            return h
        if int(cluster) not in spans:
            raise SinfError(f"cluster index {cluster} out of range 0..{len(spans) - 1}")
        return h[spans[int(cluster)]]

    def estimate(self, spec: SubgraphSpec, cluster: int | None = None) -> SubgraphSpec:
        """``estimate_bn_stats`` of ``spec`` on cluster ``cluster``'s samples (None: all samples); the
        unpruned tail's statistics over them are computed once per (tap, cluster) and kept."""
        return self.estimate_built(spec, cluster)[0]

    def estimate_built(self, spec: SubgraphSpec, cluster: int | None = None) -> tuple[SubgraphSpec, "Subgraph"]:
        """``estimate`` and the subgraph of the returned spec (``estimate_bn_stats_built``)."""
        h = self.features(spec.tap, cluster)
        key = (spec.tap, None if cluster is None else int(cluster))
        if key not in self._unpruned:
            self._unpruned[key] = unpruned_batch_statistics(self.model, spec.tap, h, self.batch_size)
        return estimate_bn_stats_built(self.model, spec, h, self.batch_size, self._unpruned[key])


def save_subgraph_weights(path: str | Path, subgraph: Subgraph, spec: SubgraphSpec) -> Path:
    """The sliced tensors as safetensors, with the spec in the file's metadata (for bundles whose
    base weights are not at hand). Read back with ``load_subgraph_weights``."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in subgraph.state_dict().items()}
    meta = {"format": SPECS_FORMAT, "version": str(SPECS_VERSION), "spec": json.dumps(spec.to_json())}
    return atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))


def load_subgraph_weights(path: str | Path, base: SinfModel | None = None) -> tuple[Subgraph, SubgraphSpec]:
    """Rebuild a subgraph from ``save_subgraph_weights`` output: the architecture comes from the
    spec (on ``base``, or on a freshly built registry model of ``spec.base_model``), the tensors
    from the file (strict shapes). Never unpickles."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SinfError(f"subgraph weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise SinfError(f"cannot read subgraph weights {path}: {exc}") from exc
    if meta.get("format") != SPECS_FORMAT or "spec" not in meta:
        raise SinfError(f"{path} is not a SINF subgraph weights file")
    spec = SubgraphSpec.from_json(json.loads(meta["spec"]))
    sub = build_subgraph((base if base is not None else build_model(spec.base_model)).eval(), spec)
    own = sub.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise SinfError(f"{path} does not match its spec's architecture")
    sub.load_state_dict(state, strict=True)
    return sub.eval(), spec


# --------------------------------------------------------------------------------------------------
# Per-cluster evaluation and speed
# --------------------------------------------------------------------------------------------------


def _resolve_cluster(key: int | str, hierarchy: Hierarchy) -> int:
    if isinstance(key, str) and not key.lstrip("-").isdigit():
        if key not in hierarchy.cluster_names:
            raise SinfError(f"unknown cluster {key!r}; clusters: {', '.join(hierarchy.cluster_names)}")
        return hierarchy.cluster_names.index(key)
    m = int(key)
    if not 0 <= m < hierarchy.num_clusters:
        raise SinfError(f"cluster index {m} out of range 0..{hierarchy.num_clusters - 1}")
    return m


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate_cluster_subgraphs(
    model: SinfModel,
    specs_by_cluster: Mapping[int | str, SubgraphSpec],
    data: ImageDataset,
    hierarchy: Hierarchy | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    baseline: bool = False,
    on_batch: Callable[[int], None] | None = None,
    stem_cache: dict | None = None,
) -> dict:
    """Oracle-routed accuracy, parameters and FLOPs of each cluster's subgraph.

    ``stem_cache``: a dict reused across calls on the same ``data`` (e.g. a grid of schedules): the
    stem output of every sample at each tap is computed once, kept there, and sliced afterwards.

    Every sample of cluster m (by its true label and ``hierarchy``, default ``data.hierarchy``) goes
    through the stem once and then through m's subgraph; the prediction is the argmax of its logits
    (with a restricted head: among m's head classes). Samples are visited grouped by cluster, so most
    batches feed one subgraph. ``baseline=True`` also runs the unpruned tail on the same stem
    features and scores it the same way (restricted to the spec's classes).

    Returns ``{"clusters": [per cluster], "mean": {...}, "stem": Cost, "tail": Cost, ...}``. Per
    cluster: n, accuracy (% or None when the cluster has no samples), params / flops of the subgraph,
    flops_with_stem, params_with_stem, flop_ratio (subgraph / unpruned tail). FLOPs are per image, 2 x
    MACs (see ``sinf_core.cost``). The means are unweighted over clusters; accuracy means skip
    clusters with no samples (listed in ``empty_clusters``). Clusters without a spec are not evaluated.
    """
    hierarchy = hierarchy or data.hierarchy
    if hierarchy.class_names != data.hierarchy.class_names:
        raise SinfError("the hierarchy is for a different set of classes than the data")
    if not specs_by_cluster:
        raise SinfError("no subgraph specs to evaluate")
    device = torch.device(device)
    model = model.to(device).eval()
    specs = {_resolve_cluster(k, hierarchy): s for k, s in specs_by_cluster.items()}
    subs = {m: build_subgraph(model, s).to(device).eval() for m, s in specs.items()}
    input_shape = tuple(data.images.shape[1:])

    # Costs per image (float32 counts; the FLOP counter is independent of bf16).
    taps = sorted({s.tap for s in specs.values()}, key=lambda x: (x is not None, x or ""))
    stem = {tap: stem_cost(model, tap, input_shape) for tap in taps}
    tail = {tap: tail_cost(model, tap, input_shape) for tap in taps}
    sub_cost = {m: module_cost(subs[m], stem_output(model, specs[m].tap, input_shape)) for m in specs}

    cl_of_sample = hierarchy.cluster_array()[data.labels.numpy()]
    wanted = np.isin(cl_of_sample, list(specs))
    order = np.flatnonzero(wanted)
    order = order[np.argsort(cl_of_sample[order], kind="stable")]
    correct = {m: 0 for m in specs}
    base_correct = {m: 0 for m in specs}
    count = {m: 0 for m in specs}
    cl_t = torch.as_tensor(cl_of_sample)
    if batch_size < 1:
        raise SinfError("batch size must be at least 1")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x, y = next(iterate_batches(data, len(idx), idx, device))
        cl = cl_t[torch.as_tensor(idx)].to(device)
        present = sorted(int(m) for m in torch.unique(cl).tolist())
        with torch.inference_mode(), autocast(device, bf16):
            for tap in taps:
                members = [m for m in present if specs[m].tap == tap]
                if not members:
                    continue
                if stem_cache is not None and tap is not None:
                    if tap not in stem_cache:
                        stem_cache[tap] = torch.cat([model.forward_stem(xb, tap) for xb, _ in
                                                     iterate_batches(data, batch_size, None, device)])
                    h = stem_cache[tap].index_select(0, torch.as_tensor(idx, device=device))
                else:
                    h = x if tap is None else model.forward_stem(x, tap)
                base_logits = None
                if baseline:
                    base_logits = (model(h) if tap is None else model.forward_tail(h, tap)).float()
                for m in members:
                    sel = (cl == m).nonzero().flatten()
                    logits = subs[m](h.index_select(0, sel)).float()
                    ym = y.index_select(0, sel)
                    correct[m] += int((logits.argmax(1) == ym).sum())
                    count[m] += int(sel.numel())
                    if base_logits is not None:
                        bl = base_logits.index_select(0, sel)
                        if specs[m].classes is not None:
                            cls = torch.as_tensor(specs[m].classes, device=bl.device)
                            pred = cls[bl.index_select(1, cls).argmax(1)]
                        else:
                            pred = bl.argmax(1)
                        base_correct[m] += int((pred == ym).sum())
        if on_batch:
            on_batch(len(idx))

    rows = []
    for m in sorted(specs):
        spec, n = specs[m], count[m]
        c, st, tl = sub_cost[m], stem[specs[m].tap], tail[specs[m].tap]
        row = {
            "cluster": hierarchy.cluster_names[m], "index": m, "n": n,
            "accuracy": round(100.0 * correct[m] / n, 4) if n else None,
            "params": c.params, "flops": c.flops,
            "params_with_stem": c.params + st.params, "flops_with_stem": c.flops + st.flops,
            "flop_ratio": c.flops / tl.flops if tl.flops else None,
            "param_ratio": c.params / tl.params if tl.params else None,
            "kept": spec.kept_counts(), "tap": spec.tap,
        }
        if baseline:
            row["base_accuracy"] = round(100.0 * base_correct[m] / n, 4) if n else None
        rows.append(row)
    mean = {key: _mean([r[key] for r in rows]) for key in
            ("accuracy", "params", "flops", "params_with_stem", "flops_with_stem", "flop_ratio", "param_ratio")}
    if baseline:
        mean["base_accuracy"] = _mean([r["base_accuracy"] for r in rows])
    total = sum(count.values())
    return {
        "clusters": rows,
        "mean": mean,
        "pooled_accuracy": round(100.0 * sum(correct.values()) / total, 4) if total else None,
        "n": total,
        "empty_clusters": [r["cluster"] for r in rows if r["n"] == 0],
        "stem": {str(k): v.to_json() for k, v in stem.items()},
        "tail": {str(k): v.to_json() for k, v in tail.items()},
        "flops_unit": "FLOPs per image = 2 x MACs (torch.utils.flop_counter)",
        "bf16": bool(bf16),
    }


def compare_tail_speed(
    model: SinfModel,
    spec: SubgraphSpec | None = None,
    x: torch.Tensor | None = None,
    reps: int = 20,
    warmup: int = 3,
    bf16: bool = False,
    channels_last: bool = False,
    subgraph: Subgraph | None = None,
    fold_bn: bool = False,
) -> dict:
    """Wall-clock of the unpruned tail versus the subgraph on the same stem features, side by side.

    ``x``: a normalised image batch [N, 3, H, W] on the model's device; the stem runs once, then the
    two tails alternate (ABBA order over repetitions, so drift hits both alike). Reports medians in
    ms, ``time_ratio`` = subgraph / tail (< 1: the subgraph is faster), ``speedup`` = tail / subgraph,
    and per-image FLOPs with ``flop_ratio`` = subgraph / tail. ``fold_bn``: both tails run with their
    BatchNorms folded into the convs (``fusion.fold_batchnorm``), as ``sinf bench`` runs them.
    """
    if x is None or x.ndim != 4:
        raise SinfError("compare_tail_speed needs an image batch [N, 3, H, W]")
    if reps < 1 or warmup < 0:
        raise SinfError("reps must be >= 1 and warmup >= 0")
    model = model.eval()
    if subgraph is None:
        if spec is None:
            raise SinfError("compare_tail_speed needs a spec or a built subgraph")
        subgraph = build_subgraph(model, spec)
    tap = subgraph.tap
    subgraph = subgraph.eval()
    device = x.device
    base = model
    if fold_bn or channels_last:  # on copies (folding makes its own): the caller's modules stay as they are
        base, subgraph = (prepare_for_inference(m, fold_bn, channels_last)
                          for m in (model, subgraph))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, bf16):
        h = x if tap is None else base.forward_stem(x, tap)
    tail_fn = run_tail_fn(base, tap)

    def run_tail() -> torch.Tensor:
        return tail_fn(h)

    def run_sub() -> torch.Tensor:
        return subgraph(h)

    def clock(fn: Callable[[], torch.Tensor]) -> float:
        with torch.inference_mode():
            t0 = timed(device)
            with autocast(device, bf16):
                fn()
            return (timed(device) - t0) * 1000.0

    for _ in range(warmup):
        clock(run_tail)
        clock(run_sub)
    t_tail, t_sub = [], []
    for i in range(reps):
        if i % 2 == 0:
            t_tail.append(clock(run_tail))
            t_sub.append(clock(run_sub))
        else:
            t_sub.append(clock(run_sub))
            t_tail.append(clock(run_tail))
    h1 = h[:1].float()
    tail_flops = count_flops(tail_fn, h1)
    sub_flops = count_flops(subgraph, h1)
    tail_ms, sub_ms = statistics.median(t_tail), statistics.median(t_sub)
    return {
        "batch": int(x.shape[0]), "reps": int(reps), "tap": tap, "bf16": bool(bf16), "channels_last": bool(channels_last),
        "fold_bn": bool(fold_bn), "threads": torch.get_num_threads(),
        "tail_ms": tail_ms, "subgraph_ms": sub_ms,
        "time_ratio": sub_ms / tail_ms, "speedup": tail_ms / sub_ms,
        "tail_flops": tail_flops, "subgraph_flops": sub_flops, "flop_ratio": sub_flops / tail_flops,
        "tail_ms_all": t_tail, "subgraph_ms_all": t_sub,
    }


def run_tail_fn(model: SinfModel, tap: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The unpruned tail as a function of the stem output (the whole model when ``tap`` is None)."""
    return model if tap is None else (lambda h: model.forward_tail(h, tap))
