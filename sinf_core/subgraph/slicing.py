"""Physical slicing: ``build_subgraph`` turns a ``SubgraphSpec`` into a ``Subgraph`` of plain dense modules
(kept output channels of each prunable conv, its BatchNorm, the reader's input channels, mean fill folded
into the reader's bias or BatchNorm mean), and the sliced tensors' file (``save_subgraph_weights``)."""

from __future__ import annotations

import copy
import json
from typing import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import SinfError
from ..io import atomic_write
from ..models import PrunableLayer, SinfModel, build_model, is_spec, parse_spec
from .spec import SPECS_FORMAT, SPECS_VERSION, SubgraphSpec, tail_batchnorms, validate_spec


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    """``t``, a new tensor (a slice taken by ``index_select`` or a sum), as a parameter like ``like``."""
    return nn.Parameter(t.contiguous(), requires_grad=like.requires_grad)


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
        bn.running_mean = bn.running_mean.index_select(0, idx)
        bn.running_var = bn.running_var.index_select(0, idx)
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


def _through_output(layer: PrunableLayer, fill: list[float], like: torch.Tensor) -> list[float]:
    """What the reader sees on each channel when A_l holds the constant ``fill[c]``: the constant
    pushed through the layer's channel-wise steps (``layer.through``: depthwise convs, BatchNorms, pools,
    activations), read at the centre of a map wide enough that no border reaches it. The steps run on
    the base model's own (unsliced) modules, in eval mode."""
    if not layer.through:
        return fill
    x = torch.as_tensor(fill, dtype=like.dtype, device=like.device).view(1, -1, 1, 1).expand(1, len(fill), 33, 33).clone()
    for step in layer.through:
        was = step.training if isinstance(step, nn.Module) else None
        if was:
            step.eval()
        try:
            x = step(x)
        finally:
            if was:
                step.train()
    return x[0, :, x.shape[2] // 2, x.shape[3] // 2].tolist()


def _depthwise(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    _conv_out(conv, idx)
    conv.in_channels = conv.groups = int(idx.numel())


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

    def features(self, h: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The output of the last unit; ``start``: ``h`` is the output of the first ``start`` units."""
        for unit in self.units[start:]:
            h = unit(h)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(h))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head on the last unit's output, in the global class space."""
        logits = self.head(features)
        if self.classes is None:
            return logits
        out = logits.new_full((logits.shape[0], self.num_classes), float("-inf"))
        return out.index_copy(1, self.classes, logits)


def _own_tensors(module: nn.Module, base: Mapping[int, torch.Tensor]) -> None:
    """Clone every parameter and buffer of ``module`` that is still one of the base model's (``base``
    by id), so that the subgraph shares no tensor with the model it was cut from."""
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in base:
                mod._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and id(b) in base:
                mod._buffers[name] = b.clone()


@torch.no_grad()
def build_subgraph(model: SinfModel, spec: SubgraphSpec) -> Subgraph:
    """The physically pruned subgraph of ``spec`` (a pure function: ``model`` is deep-copied, never
    modified). Same device, dtype and train/eval mode as ``model``."""
    pruned = validate_spec(model, spec)
    t = -1 if spec.tap is None else model.unit_index(spec.tap)
    units = model.units()[t + 1 :]
    head_src = model.head_module()
    # the modules are copied, their tensors at first shared (most are replaced by sliced copies below;
    # ``_own_tensors`` clones the rest at the end): copying every weight only to slice it cost more than
    # the slicing on a deep tap (VGG16-BN: a third of building 20 subgraphs)
    base_tensors = {id(t): t for m in [*(m for _, m in units), head_src]
                    for t in (*m.parameters(), *m.buffers())}
    memo: dict = dict(base_tensors)
    copied_units, copied_head = copy.deepcopy(([m for _, m in units], head_src), memo)

    def twin(module: nn.Module) -> nn.Module:
        return memo[id(module)]

    cuts = []  # (layer, kept indices)
    for name, idx_list in spec.keep.items():
        layer = pruned[name]
        if len(idx_list) == layer.channels and idx_list == list(range(layer.channels)):
            continue  # keeps everything in order: nothing to slice
        if not isinstance(layer.reader, (nn.Conv2d, nn.Linear)):
            raise SinfError(f"layer {name!r}: no conv or linear layer reads its channels ({layer.reader!r})")
        cuts.append((layer, torch.as_tensor(sorted(idx_list), dtype=torch.long, device=layer.conv.weight.device)))
    # mean replacement first, on unsliced twins, from the base model's own (unsliced) readers
    for layer, idx in cuts:
        if layer.name in spec.fill:
            seen = _through_output(layer, spec.fill[layer.name], layer.conv.weight)
            shift = _removed_input_shift(layer.reader, layer.channels, idx, seen)
            _add_output_shift(twin(layer.reader), None if layer.reader_bn is None else twin(layer.reader_bn), shift)
    for layer, idx in cuts:
        _conv_out(twin(layer.conv), idx)
        _bn(twin(layer.bn), idx)
        for step in layer.through:
            if isinstance(step, nn.Conv2d):
                _depthwise(twin(step), idx)
            elif isinstance(step, nn.BatchNorm2d):
                _bn(twin(step), idx)
        if isinstance(layer.reader, nn.Linear):
            _linear_in(twin(layer.reader), layer.channels, idx)
        else:
            _conv_in(twin(layer.reader), idx)
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
    _own_tensors(sub, base_tensors)
    p = next(model.parameters(), None)
    if p is not None and sub.classes is not None:
        sub.classes = sub.classes.to(p.device)
    return sub.train(model.training)


# --------------------------------------------------------------------------------------------------
# The sliced tensors as a file
# --------------------------------------------------------------------------------------------------


def save_subgraph_weights(path: str | Path, subgraph: Subgraph, spec: SubgraphSpec) -> Path:
    """The sliced tensors as safetensors, with the spec in the file's metadata (for bundles whose
    base weights are not at hand). Read back with ``load_subgraph_weights``."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in subgraph.state_dict().items()}
    meta = {"format": SPECS_FORMAT, "version": str(SPECS_VERSION), "spec": json.dumps(spec.to_json())}
    return atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))


def load_subgraph_weights(path: str | Path, base: SinfModel | None = None) -> tuple[Subgraph, SubgraphSpec]:
    """Rebuild a subgraph from ``save_subgraph_weights`` output: the architecture comes from the
    spec (on ``base``, or on a model freshly built from ``spec.base_model``: a registered name or a
    canonical torchvision / timm spec, whose ``@N`` gives the class count), the tensors from the file
    (strict shapes). Never unpickles, and never imports code a ``module:callable`` base names."""
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
    if base is None and is_spec(spec.base_model) and parse_spec(spec.base_model).kind == "callable":
        raise SinfError(f"{path} is for {spec.base_model}, a model built by calling user code; a file does not "
                        "make SINF import and run code: build the base model yourself and pass it as base=")
    sub = build_subgraph((base if base is not None else build_model(spec.base_model)).eval(), spec)
    own = sub.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise SinfError(f"{path} does not match its spec's architecture")
    sub.load_state_dict(state, strict=True)
    return sub.eval(), spec
