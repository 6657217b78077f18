"""The pruning / operating configuration a user saves (the app's ``config.json`` in a bundle).

Its defaults are written once, here; ``validate_config`` turns any mapping (a JSON file, the app's
session state) into a clean dict with the defaults filled in, or raises one ``SinfError`` that names
where the configuration came from, the bad key and its value. Light on imports (no torch) so the app
and the bundle can use it anywhere.

Keys (METHOD.md notation):

- ``method`` (str): the filter score that ranks channels, e.g. ``"dcs"``.
- ``r_M``, ``r_L`` (numbers in [0, 0.95]): removed fraction of channels at the first pruned layer (M)
  and at the last (L); linear in between.
- ``overrides`` ({cluster name: [r_M, r_L]}): a cluster's own pair, same ranges.
- ``fill`` ("mean" or "zero"): what replaces a removed channel.
- ``bn`` (bool): re-estimate each subgraph's BatchNorm statistics on the cluster's fit images.
- ``gamma``, ``tau`` (numbers in [0, 1]): the router's trust threshold and the early exit's threshold.
- optional: ``tap`` (str, the stem/tail split unit), ``mode`` ("sinf", "exit" or "cascade"),
  ``multiple_of`` (int >= 1 or None: kept channel counts rounded up to a multiple of it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from .artifacts import CONFIG as CONFIG_FILE  # noqa: F401  (re-exported)
from .errors import SinfError

CONFIG_STEP = "config"  # the bundle step that stores it
DEFAULT_FILL = "mean"  # mean replacement: a removed channel's mean activation, folded into the next layer

DEFAULT_CONFIG: dict[str, Any] = {
    "method": "dcs", "r_M": 0.05, "r_L": 0.5, "overrides": {}, "fill": DEFAULT_FILL, "bn": True, "gamma": 0.5,
    "tau": 1.0,
}
OPTIONAL_KEYS = ("tap", "mode", "multiple_of")  # absent unless given (None is a valid value of each)
KEYS = (*DEFAULT_CONFIG, *OPTIONAL_KEYS)

RATIO_RANGE = (0.0, 0.95)  # r_M, r_L and the overrides' pairs: never remove every channel
THRESHOLD_RANGE = (0.0, 1.0)  # gamma, tau
FILLS = ("mean", "zero")  # what replaces a removed channel (sinf_core.subgraph imports it from here)
DEFAULT_BN_SAMPLES = 256  # fit images per cluster on which subgraph BatchNorm statistics are re-estimated
MODES = ("sinf", "exit", "cascade")  # as sinf_core.engine.MODES


def default_config() -> dict[str, Any]:
    """A fresh copy of the defaults (safe to modify)."""
    return copy.deepcopy(DEFAULT_CONFIG)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(where: str, key: str, v: Any, lo: float, hi: float) -> float:
    if not _is_number(v) or not (lo <= float(v) <= hi):  # NaN fails the range test too
        raise SinfError(f"{where}: {key} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _choice(where: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise SinfError(f"{where}: {key} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def _overrides(where: str, v: Any) -> dict[str, list[float]]:
    if not isinstance(v, Mapping):
        raise SinfError(f"{where}: overrides must be an object {{cluster name: [r_M, r_L]}}, got {v!r}")
    out = {}
    for name, pair in v.items():
        if not isinstance(name, str) or not name:
            raise SinfError(f"{where}: overrides keys must be cluster names, got {name!r}")
        key = f"overrides[{name!r}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise SinfError(f"{where}: {key} must be a pair [r_M, r_L], got {pair!r}")
        out[name] = [_number(where, f"{key} r_M", pair[0], *RATIO_RANGE), _number(where, f"{key} r_L", pair[1], *RATIO_RANGE)]
    return out


def validate_config(d: Mapping, where: str = "config") -> dict[str, Any]:
    """A clean copy of ``d``: every key of ``DEFAULT_CONFIG`` (the default where ``d`` lacks it), the
    optional keys ``d`` has, numbers as floats, override pairs as lists. Raises ``SinfError``
    ("``where``: KEY must be ..., got VALUE") for an unknown key or a wrong type or range."""
    if not isinstance(d, Mapping):
        raise SinfError(f"{where}: a configuration must be an object of settings, got {type(d).__name__} {d!r}")
    unknown = [k for k in d if k not in KEYS]
    if unknown:
        k = unknown[0]
        raise SinfError(f"{where}: unknown key {k!r} (value {d[k]!r}); the keys are {', '.join(KEYS)}")
    cfg = {**default_config(), **d}
    out: dict[str, Any] = {}
    if not isinstance(cfg["method"], str) or not cfg["method"]:
        raise SinfError(f"{where}: method must be the name of a filter score (a string), got {cfg['method']!r}")
    out["method"] = cfg["method"]
    out["r_M"] = _number(where, "r_M", cfg["r_M"], *RATIO_RANGE)
    out["r_L"] = _number(where, "r_L", cfg["r_L"], *RATIO_RANGE)
    out["overrides"] = _overrides(where, cfg["overrides"])
    out["fill"] = _choice(where, "fill", cfg["fill"], FILLS)
    if not isinstance(cfg["bn"], bool):
        raise SinfError(f"{where}: bn must be true or false, got {cfg['bn']!r}")
    out["bn"] = cfg["bn"]
    out["gamma"] = _number(where, "gamma", cfg["gamma"], *THRESHOLD_RANGE)
    out["tau"] = _number(where, "tau", cfg["tau"], *THRESHOLD_RANGE)
    if "tap" in d:
        if d["tap"] is not None and (not isinstance(d["tap"], str) or not d["tap"]):
            raise SinfError(f"{where}: tap must be the name of a unit (a string) or null, got {d['tap']!r}")
        out["tap"] = d["tap"]
    if "mode" in d:
        out["mode"] = None if d["mode"] is None else _choice(where, "mode", d["mode"], MODES)
    if "multiple_of" in d:
        m = d["multiple_of"]
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise SinfError(f"{where}: multiple_of must be an integer >= 1 or null, got {m!r}")
        out["multiple_of"] = m
    return out


def config_from_json(data: bytes | str, where: str = "config") -> dict[str, Any]:
    """``validate_config`` of JSON text (e.g. an uploaded or stored ``config.json``)."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SinfError(f"{where}: not valid JSON ({exc})") from exc
    return validate_config(obj, where)

