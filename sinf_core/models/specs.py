"""Model specs users already know: ``torchvision:NAME``, ``timm:NAME`` and ``package.module:callable``.

A spec names an architecture outside SINF's registry; the builders return it wrapped as a
``GraphModel`` (its state-dict keys are the wrapped module's, so plain torchvision / timm checkpoints
load). Weights always come from a file (``--checkpoint``): nothing is downloaded.

The class count travels in the name: ``torchvision:resnet18@10`` is resnet18 with a 10-way classifier.
A bare spec (no ``@N``) means the library's own default (1000 for torchvision and timm, the callable's
default), and ``open_experiment`` turns it into ``NAME@N`` with N the data set's class count. That
canonical name is what experiments, bundles and subgraph specs store, so a model is rebuilt from its
name alone wherever no data set is at hand (``load_subgraph_weights``, ``count_parameters``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass, replace

from torch import nn

from ..artifacts import folder_name  # noqa: F401  (re-exported: the one name a model takes on disk)
from ..errors import SinfError

TORCHVISION, TIMM, CALLABLE = "torchvision", "timm", "callable"
SPEC_FORMS = "torchvision:NAME, timm:NAME or package.module:callable (optionally @N for N classes)"
_LIB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # torchvision / timm model names (timm tags: name.tag)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # a module path or an attribute path


@dataclass(frozen=True)
class ModelSpec:
    """``kind``: 'torchvision', 'timm' or 'callable'; ``target``: the library's model name, or
    ``package.module:callable``; ``num_classes``: the classifier's width (None: the builder's default)."""

    kind: str
    target: str
    num_classes: int | None = None

    @property
    def base(self) -> str:
        """The spec without its class count: ``torchvision:resnet18``."""
        return self.target if self.kind == CALLABLE else f"{self.kind}:{self.target}"

    @property
    def name(self) -> str:
        """The canonical spec string: ``torchvision:resnet18@10`` (no ``@N`` when the count is the default)."""
        return self.base if self.num_classes is None else f"{self.base}@{self.num_classes}"

    def with_classes(self, num_classes: int) -> "ModelSpec":
        return replace(self, num_classes=int(num_classes))


def is_spec(name: str) -> bool:
    """Whether ``name`` is written as a spec (registered names never hold a colon)."""
    return isinstance(name, str) and ":" in name


def parse_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` of ``name``; a malformed one raises ``SinfError`` saying what is wrong. Only the
    spelling is checked here (no import): ``check_spec`` looks the name up."""
    text = name.strip()
    count = None
    if "@" in text:
        text, _, suffix = text.rpartition("@")
        if not suffix.isdigit() or int(suffix) < 1:
            raise SinfError(f"model spec {name!r}: the class count after '@' must be a positive whole number "
                            f"(e.g. {text or 'torchvision:resnet18'}@10), not {suffix!r}")
        count = int(suffix)
    prefix, sep, rest = text.partition(":")
    if not sep:
        raise SinfError(f"{name!r} is not a model spec; a spec is {SPEC_FORMS}")
    if prefix in (TORCHVISION, TIMM):
        if not rest:
            raise SinfError(f"model spec {name!r} names no model; e.g. {prefix}:resnet18")
        if ":" in rest:
            raise SinfError(f"model spec {name!r}: {prefix} models are named without a further ':' (hub names "
                            "such as hf-hub:... would download; SINF loads weights only from --checkpoint)")
        if not _LIB_NAME.fullmatch(rest):
            raise SinfError(f"model spec {name!r}: {rest!r} is not a {prefix} model name")
        return ModelSpec(prefix, rest, count)
    if not _DOTTED.fullmatch(prefix) or not _DOTTED.fullmatch(rest):
        raise SinfError(f"model spec {name!r} is not {SPEC_FORMS}: "
                        f"{prefix!r} must be a module path and {rest!r} a callable in it (Python names joined by dots)")
    return ModelSpec(CALLABLE, f"{prefix}:{rest}", count)


def same_model(given: str, stored: str) -> bool:
    """Whether the model ``given`` (as typed) is the ``stored`` one (as a bundle records it): the same
    name, or the same spec where ``given`` leaves the class count open (``torchvision:resnet18`` matches
    ``torchvision:resnet18@10``)."""
    if given == stored:
        return True
    if not (is_spec(given) and is_spec(stored)):
        return False
    try:
        g, s = parse_spec(given), parse_spec(stored)
    except SinfError:
        return False
    return g.base == s.base and (g.num_classes is None or g.num_classes == s.num_classes)


# --------------------------------------------------------------------------------------------------
# Looking names up, and building
# --------------------------------------------------------------------------------------------------


def _close(name: str, known: list[str], n: int = 6) -> str:
    close = difflib.get_close_matches(name, known, n=n, cutoff=0.6)
    close += [k for k in known if name.lower() in k.lower() and k not in close][: n - len(close)]
    return ", ".join(close) if close else ", ".join(sorted(known)[:n]) + ", ..."


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))  # the classification models only


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise SinfError("timm:NAME model specs need the timm package: pip install timm") from exc
    return timm


def _import_module(modname: str, spec: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        # `python -m` puts the working folder on sys.path, the `sinf` script does not: look there too
        cwd = os.getcwd()
        if exc.name == modname.split(".")[0] and cwd not in sys.path:
            sys.path.append(cwd)
            try:
                return importlib.import_module(modname)
            except ModuleNotFoundError:
                sys.path.remove(cwd)
        raise SinfError(f"model spec {spec!r}: cannot import module {modname!r} ({exc}); install it, or run "
                        "from the folder that holds it or add that folder to PYTHONPATH") from exc
    except Exception as exc:  # the module itself fails on import: say so rather than crash
        raise SinfError(f"model spec {spec!r}: importing module {modname!r} failed: "
                        f"{exc.__class__.__name__}: {exc}") from exc


def _callable_of(spec: ModelSpec):
    modname, _, attr = spec.target.partition(":")
    obj = _import_module(modname, spec.name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = [n for n in dir(obj) if not n.startswith("_")]
            raise SinfError(f"model spec {spec.name!r}: module {modname!r} has no {attr!r}"
                            + (f" (close names: {_close(part, known)})" if known else ""))
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        raise SinfError(f"model spec {spec.name!r}: {attr} is a module instance; name the function or class "
                        "that builds it, so SINF can build fresh copies")
    if not callable(obj):
        raise SinfError(f"model spec {spec.name!r}: {attr} is not callable (it is of type {type(obj).__name__}); "
                        "name a function or class that returns a torch.nn.Module")
    return obj


def takes_num_classes(fn) -> bool:
    """Whether ``fn`` can be called with ``num_classes=`` (a parameter of that name, or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): call it without
        return False
    return any((p.name == "num_classes" and p.kind != p.POSITIONAL_ONLY) or p.kind == p.VAR_KEYWORD for p in params)


def check_spec(spec: ModelSpec) -> None:
    """Look ``spec``'s name up without building it: an unknown torchvision / timm name (with close
    names), a module that does not import, a missing or non-callable attribute, or an ``@N`` for a
    callable that takes no ``num_classes`` raise ``SinfError``."""
    if spec.kind == TORCHVISION:
        known = _torchvision_names()
        if spec.target not in known:
            raise SinfError(f"unknown torchvision classification model {spec.target!r}; close names: "
                            f"{_close(spec.target, known)} (all: torchvision.models.list_models())")
    elif spec.kind == TIMM:
        timm = _timm()
        if not timm.is_model(spec.target):
            raise SinfError(f"unknown timm model {spec.target!r}; close names: "
                            f"{_close(spec.target.split('.')[0], timm.list_models())} (all: timm.list_models())")
    else:
        fn = _callable_of(spec)
        if spec.num_classes is not None and not takes_num_classes(fn):
            raise SinfError(f"model spec {spec.name!r}: {spec.target} takes no num_classes argument, so it "
                            f"cannot be built for {spec.num_classes} classes; name it without @{spec.num_classes}")


def for_classes(spec: ModelSpec, num_classes: int) -> ModelSpec:
    """``spec`` built for ``num_classes`` classes: an open count is filled in (a callable without a
    ``num_classes`` parameter stays as it is: its own head decides, and the data set check says if it fits)."""
    if spec.num_classes is not None:
        return spec
    if spec.kind == CALLABLE and not takes_num_classes(_callable_of(spec)):
        return spec
    return spec.with_classes(num_classes)


def build_module(spec: ModelSpec) -> nn.Module:
    """The plain ``nn.Module`` of ``spec``, randomly initialised (never downloads weights)."""
    check_spec(spec)
    n = {} if spec.num_classes is None else {"num_classes": spec.num_classes}
    if spec.kind == TORCHVISION:
        import torchvision.models as tvm

        build, call = (lambda: tvm.get_model(spec.target, weights=None, **n)), f"torchvision.models.get_model({spec.target!r}, weights=None"
    elif spec.kind == TIMM:
        timm = _timm()
        build, call = (lambda: timm.create_model(spec.target, pretrained=False, **n)), f"timm.create_model({spec.target!r}, pretrained=False"
    else:
        fn = _callable_of(spec)
        build, call = (lambda: fn(**n)), f"{spec.target}("
    try:
        module = build()
    except Exception as exc:
        args = (", " if not call.endswith("(") else "") + f"num_classes={spec.num_classes}" if n else ""
        raise SinfError(f"model spec {spec.name!r}: {call}{args}) failed: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise SinfError(f"model spec {spec.name!r}: {spec.target} returned an object of type "
                        f"{type(module).__name__}, not a torch.nn.Module")
    return module


def build_spec_model(spec: ModelSpec, input_shape=None):
    """``spec``'s module wrapped into SINF's model contract (``GraphModel``: units, head, prunable layers),
    traced and checked on images of ``input_shape`` (C, H, W; default ``GraphModel``'s)."""
    from .graph import GraphModel

    module = build_module(spec)
    return GraphModel(module) if input_shape is None else GraphModel(module, input_shape)


def describe_spec(spec: ModelSpec) -> str:
    how = {TORCHVISION: "torchvision.models.get_model", TIMM: "timm.create_model", CALLABLE: "a user callable"}[spec.kind]
    classes = f"{spec.num_classes} classes" if spec.num_classes is not None else "the builder's default class count"
    return f"{spec.base} ({how}, {classes}); weights from --checkpoint"
