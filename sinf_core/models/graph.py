"""Any ``torch.fx``-traceable CNN as a ``SinfModel``: units, taps, head and prunable layers read off its graph.

``GraphModel(module)`` traces ``module`` once and splits its graph into *units* at the points where one
tensor carries everything forward (a cut of the graph), grouped by module: a unit is a block of a
top-level container (``layer1.0``, ``features.3``) or a run of top-level layers (``conv1`` ... ``maxpool``),
always ending after an activation, a pool or an addition, never after a conv or a BatchNorm. Every unit
holds at least one convolution; what follows the last one (pooling, flatten, classifier) is the head.
Each unit and the head are ``torch.fx.GraphModule`` views of the module's own layers, so parameters are
shared and ``state_dict()`` keys are exactly ``module``'s: a plain torchvision / timm checkpoint loads.

A conv is *prunable* when its output channels reach exactly one reader and nothing else: the conv
(ungrouped, called once) feeds one BatchNorm, then channel-wise steps only (activations, dropout,
pooling, depthwise convs with their BatchNorms), then one ungrouped conv, or a flatten and a linear
layer. Channels that meet a residual addition, a concatenation or a gate (squeeze-excitation) are left
alone, as are the convs that write the residual stream. This is the same rule the hand-written CIFAR
families follow (``conv1`` of a BasicBlock, ``conv1``/``conv2`` of a Bottleneck, every conv of a VGG).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import SinfError
from .base import DEFAULT_INPUT_SHAPE, PrunableLayer, SinfModel

# Steps that keep each channel apart (channel c of the output depends only on channel c of the input)
# and have no parameters: a pruned channel passes through them unchanged in meaning.
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.Mish, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.silu,
    torch.nn.functional.gelu, torch.nn.functional.hardswish, torch.nn.functional.leaky_relu,
    torch.sigmoid, torch.tanh, torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
_ACTIVATION_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.silu,
                         torch.nn.functional.gelu, torch.nn.functional.hardswish, torch.nn.functional.leaky_relu,
                         "relu", "relu_"}
_ATTACH_FUNCTIONS = _ACTIVATION_FUNCTIONS | {torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d}
_FLATTEN_FUNCTIONS = {torch.flatten}
_UNIT_ENDS_AFTER_NOT = (nn.Conv2d, nn.Linear)  # a tap never sits between a conv and its BatchNorm
_UNIT_ATTACHES = (nn.MaxPool2d, nn.AvgPool2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.Identity)


def _scope(node: fx.Node, depth: int) -> str:
    """The module path of ``node`` cut to ``depth`` levels ('' for a top-level layer or function)."""
    stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    return stack[depth - 1] if len(stack) >= depth else ""


Segment = list  # the nodes of one unit (or of the head), in graph order


class GraphModel(SinfModel):
    """``module`` (any nn.Module ``torch.fx`` can trace) as a SinfModel; see the module docstring.

    ``input_shape`` (C, H, W) is what the graph is shape-checked with; ``unit_depth`` the module-tree
    depth that names units (2: blocks of top-level containers)."""

    def __init__(self, module: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, unit_depth: int = 2):
        super().__init__()
        for name, child in module.named_children():
            self.add_module(name, child)
        for name, p in module.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in module.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.source_type = f"{type(module).__module__}.{type(module).__qualname__}"
        try:
            traced = fx.symbolic_trace(module)
        except Exception as exc:  # torch.fx raises many kinds for dynamic control flow
            raise SinfError(f"{self.source_type} cannot be traced by torch.fx ({type(exc).__name__}: {exc}); SINF "
                            "needs a traceable model (no data-dependent Python control flow in forward)") from exc
        self._graph = traced.graph
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                ShapeProp(traced).propagate(torch.zeros(2, *input_shape))
        except Exception as exc:
            raise SinfError(f"{self.source_type} does not run on inputs of shape {tuple(input_shape)}: "
                            f"{type(exc).__name__}: {exc}") from exc
        finally:
            module.train(was_training)
        self.input_shape = tuple(int(v) for v in input_shape)
        segments, head = self._split(unit_depth)
        # plain attributes, not submodules: views of the layers registered above (keys stay the module's)
        self._unit_list = [(name, self._graph_module(seg)) for name, seg in segments]
        object.__setattr__(self, "_head_module", self._graph_module(head))
        object.__setattr__(self, "_classifier", self._find_classifier(head))
        self.num_classes = int(self._classifier.out_features)
        self._prunable = self._find_prunable(segments)

    # ------------------------------------------------------------------------------ graph splitting
    def _split(self, depth: int) -> tuple[list[tuple[str, Segment]], Segment]:
        nodes = [n for n in self._graph.nodes if n.op not in ("placeholder", "output")]
        inputs = [n for n in self._graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise SinfError(f"{self.source_type}: forward takes {len(inputs)} inputs; SINF needs exactly one (the images)")
        order = {n: i for i, n in enumerate(nodes)}
        order[inputs[0]] = -1
        last_use = {n: max((order.get(u, len(nodes)) for u in n.users), default=order[n]) for n in order}
        named = dict(self.named_modules())
        live: set[fx.Node] = {inputs[0]}
        cuts = []
        for i, node in enumerate(nodes):
            live.add(node)
            live = {n for n in live if last_use[n] > i}
            if live != {node} or i + 1 == len(nodes):
                continue
            shape = getattr(node.meta.get("tensor_meta"), "shape", None)
            if shape is None or len(shape) != 4:
                continue
            nxt = nodes[i + 1]
            mod, nxt_mod = named.get(node.target) if node.op == "call_module" else None, \
                named.get(nxt.target) if nxt.op == "call_module" else None
            if isinstance(mod, _UNIT_ENDS_AFTER_NOT) or isinstance(nxt_mod, _UNIT_ATTACHES):
                continue
            if nxt.op in ("call_function", "call_method") and nxt.target in _ATTACH_FUNCTIONS:
                continue  # an activation or a local pool belongs with what it follows
            if _scope(node, depth) and _scope(node, depth) == _scope(nxt, depth):
                continue  # inside one block
            cuts.append(i)
        pieces, start = [], 0
        for i in cuts + [len(nodes) - 1]:
            pieces.append(nodes[start : i + 1])
            start = i + 1

        def has_conv(seg: list[fx.Node]) -> bool:
            return any(n.op == "call_module" and isinstance(named.get(n.target), nn.Conv2d) for n in seg)

        if not has_conv(nodes):
            raise SinfError(f"{self.source_type} has no convolution: not a CNN SINF can prune")
        merged: list[list[fx.Node]] = []
        pending: list[fx.Node] = []
        for seg in pieces:
            pending = pending + seg
            if has_conv(pending):
                merged.append(pending)
                pending = []
        if pending:  # no conv after the last cut: that is the head
            head = pending
        else:
            head = merged.pop()  # the last piece holds a conv but also the classifier
        if not merged:
            raise SinfError(f"{self.source_type}: found no point to split the network at (no unit before the head)")
        out = []
        for seg in merged:
            scopes = {_scope(n, depth) for n in seg}
            if len(scopes) == 1 and "" not in scopes:
                name = scopes.pop()
            else:
                convs = [n.target for n in seg if n.op == "call_module" and isinstance(named.get(n.target), nn.Conv2d)]
                name = convs[0]
            if any(name == n for n, _ in out):
                name = f"{name}@{len(out)}"
            out.append((name, seg))
        return out, head

    def _graph_module(self, seg: Segment) -> fx.GraphModule:
        """A GraphModule running ``seg``'s nodes on one input (the previous unit's output)."""
        g = fx.Graph()
        inside = set(seg)
        first_inputs = [a for n in seg for a in n.all_input_nodes if a not in inside]
        if len(set(first_inputs)) != 1:
            raise SinfError(f"{self.source_type}: internal error, a unit reads {len(set(first_inputs))} outside values")
        env = {first_inputs[0]: g.placeholder("x")}
        for n in seg:
            env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[seg[-1]])
        return fx.GraphModule(self, g)

    def _find_classifier(self, head: Segment) -> nn.Linear:
        named = dict(self.named_modules())
        linears = [n for n in head if n.op == "call_module" and isinstance(named.get(n.target), nn.Linear)]
        if not linears:
            raise SinfError(f"{self.source_type}: the head (after the last convolution) has no nn.Linear classifier")
        last = linears[-1]
        after = head[head.index(last) + 1 :]
        if after:
            raise SinfError(f"{self.source_type}: the classifier {last.target!r} is not the network's last step "
                            f"(then: {', '.join(str(n.target) for n in after[:3])})")
        return named[last.target]

    # ------------------------------------------------------------------------------ prunable layers
    def _find_prunable(self, segments: list[tuple[str, Segment]]) -> list[PrunableLayer]:
        named = dict(self.named_modules())
        calls: dict[str, int] = {}
        for n in self._graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        out = []
        for u, (_, seg) in enumerate(segments):
            for node in seg:
                conv = named.get(node.target) if node.op == "call_module" else None
                if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or calls[node.target] != 1:
                    continue
                found = self._follow(node, named, calls)
                if found is None:
                    continue
                bn, reader, reader_bn, through, _ = found
                out.append(PrunableLayer(node.target, conv, bn, u, "graph", reader=reader, reader_bn=reader_bn,
                                         through=tuple(through)))
        return out

    def _follow(self, conv_node: fx.Node, named: dict, calls: dict):
        """From a conv, the chain to its one reader, or None when its channels go anywhere else."""
        def only_user(n: fx.Node) -> fx.Node | None:
            return next(iter(n.users)) if len(n.users) == 1 else None

        bn_node = only_user(conv_node)
        bn = named.get(bn_node.target) if bn_node is not None and bn_node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or calls[bn_node.target] != 1:
            return None
        through: list[Callable] = []
        node = bn_node
        first_activation = True
        while True:
            nxt = only_user(node)
            if nxt is None or nxt.op == "output":
                return None
            if nxt.op == "call_module":
                mod = named.get(nxt.target)
                if isinstance(mod, nn.Conv2d):
                    if mod.groups == 1 and nxt.args[0] is node and calls[nxt.target] == 1:
                        rbn_node = only_user(nxt)
                        rbn = named.get(rbn_node.target) if rbn_node is not None and rbn_node.op == "call_module" else None
                        rbn = rbn if isinstance(rbn, nn.BatchNorm2d) and calls[rbn_node.target] == 1 else None
                        return bn, mod, rbn, through, nxt
                    if mod.groups == mod.in_channels == mod.out_channels and calls[nxt.target] == 1:
                        dbn_node = only_user(nxt)
                        dbn = named.get(dbn_node.target) if dbn_node is not None and dbn_node.op == "call_module" else None
                        if not isinstance(dbn, nn.BatchNorm2d) or calls[dbn_node.target] != 1:
                            return None
                        through += [mod, dbn]
                        node, first_activation = dbn_node, False
                        continue
                    return None
                if isinstance(mod, nn.Linear):
                    return None  # a linear straight on a 4-D map: not a classifier read SINF slices
                if isinstance(mod, nn.PReLU) and mod.num_parameters != 1:
                    return None
                if isinstance(mod, _CHANNELWISE_MODULES):
                    if not (first_activation and _is_activation(mod)):
                        through.append(mod)
                    first_activation = False
                    node = nxt
                    continue
                return None
            if nxt.op == "call_function" and nxt.target in _FLATTEN_FUNCTIONS or (
                    nxt.op == "call_method" and nxt.target in ("flatten", "view", "reshape")):
                lin_node = only_user(nxt)
                while lin_node is not None and lin_node.op == "call_module" and isinstance(
                        named.get(lin_node.target), (nn.Dropout, nn.Identity)):
                    lin_node = only_user(lin_node)
                lin = named.get(lin_node.target) if lin_node is not None and lin_node.op == "call_module" else None
                if isinstance(lin, nn.Linear) and calls[lin_node.target] == 1:
                    return bn, lin, None, through, lin_node
                return None
            if nxt.op in ("call_function", "call_method") and (
                    nxt.target in _CHANNELWISE_FUNCTIONS or nxt.target in _CHANNELWISE_METHODS) \
                    and nxt.args and nxt.args[0] is node \
                    and not any(isinstance(a, fx.Node) for a in list(nxt.args[1:]) + list(nxt.kwargs.values())):
                if not (first_activation and nxt.target in _ACTIVATION_FUNCTIONS):
                    through.append(_bound(nxt))
                first_activation = False
                node = nxt
                continue
            return None

    # ------------------------------------------------------------------------------ the contract
    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self._head_module(h)

    def head_module(self) -> nn.Module:
        return self._head_module

    def classifier_layer(self) -> nn.Linear:
        return self._classifier

    def prunable_layers(self) -> list[PrunableLayer]:
        return list(self._prunable)

    def __deepcopy__(self, memo):  # the graph's nodes are not needed by a copy (and copy slowly)
        import copy

        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = v if k == "_graph" else copy.deepcopy(v, memo)
        return new


def _is_activation(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU))


def _bound(node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
    """A call_function / call_method node as a one-input function (its other arguments are constants)."""
    args, kwargs = tuple(node.args[1:]), dict(node.kwargs)
    kwargs.pop("inplace", None)
    if node.op == "call_method":
        name = node.target.rstrip("_")
        return lambda x: getattr(x, name)(*args, **kwargs)
    fn = node.target
    return lambda x: fn(x, *args, **kwargs)


