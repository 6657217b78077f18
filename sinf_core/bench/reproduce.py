"""Running an earlier benchmark again (``sinf bench MODEL --reproduce RESULT.json``): its options, with
its chosen operating points pinned, then the two runs compared.

Everything the benchmark decides on calibration is deterministic except one step: among the few
cheapest points within the budget it serves the one measured fastest (the timing screen), and measured
speed differs between machines and loads. Pinning the earlier choices takes that step out, so on any
machine the same points are served and their accuracies can be compared number for number.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import SinfError
from .options import MODES, SELECT, SELECT_COMBOS
_POINT_KEYS = ("mode", "tap", "r_M", "r_L", "gamma", "tau")


def point_id(p: Mapping) -> tuple:
    """What names an operating point (mode, tap, schedule, thresholds), rounded as results record it."""
    out = [(k, None if p.get(k) is None else (round(float(p[k]), 4) if k not in ("mode", "tap") else p[k]))
           for k in _POINT_KEYS if k in p]
    if p.get("thresholds") is not None:
        out.append(("thresholds", tuple(round(float(t), 4) for t in p["thresholds"])))
    return tuple(out)


def pinned_from(earlier: Mapping) -> dict:
    """{mode: operating point} chosen in an earlier result, and the mode its static network matched."""
    pins: dict[str, Any] = {}
    for mode in MODES + (SELECT,) + SELECT_COMBOS:
        point = (earlier.get(mode) or {}).get("operating_point") if isinstance(earlier.get(mode), Mapping) else None
        if isinstance(point, Mapping):
            pins[mode] = {k: point[k] for k in _POINT_KEYS + ("thresholds",) if k in point}
    static = earlier.get("static")
    if isinstance(static, Mapping) and static.get("matched_mode"):
        pins["static"] = static["matched_mode"]
    return pins


def options_from(earlier: Mapping) -> dict:
    """The options of an earlier result (its recorded runtime fields included), its choices pinned."""
    if not isinstance(earlier, Mapping) or earlier.get("format") != "sinf-bench" or not isinstance(
            earlier.get("options"), Mapping):
        raise SinfError("--reproduce takes the JSON result of `sinf bench` (format sinf-bench, with its options)")
    opts = {k: v for k, v in earlier["options"].items() if k not in ("cache_dir", "pinned")}
    opts["pinned"] = pinned_from(earlier)
    return opts


def pin_candidates(points: Sequence[dict], mode: str, pinned: Mapping) -> list[dict]:
    """The swept point equal to ``pinned[mode]`` as the one candidate of ``mode``; a clear error when
    this run did not sweep it (another grid, taps or chain)."""
    want = point_id({**pinned[mode], "mode": mode})
    same = [p for p in points if point_id(p) == want]
    if not same:
        raise SinfError(f"the pinned {mode} point {dict(want)} is not among this run's {len(points)} swept points: "
                        "the options differ from the earlier run's")
    return same[:1]


def compare(earlier: Mapping, now: Mapping) -> dict:
    """Per contender: the earlier and the new point, calibration and report top-1; ``reproduced`` when
    every point and accuracy is the same (accuracies to 0.01 points, as results print them)."""
    rows, same_all = {}, True
    for name in ("base",) + MODES + ("static", SELECT) + SELECT_COMBOS:
        a, b = earlier.get(name), now.get(name)
        if not isinstance(a, Mapping) and not isinstance(b, Mapping):
            continue
        a, b = a or {}, b or {}
        pa, pb = a.get("operating_point"), b.get("operating_point")
        row = {"point_same": (pa is None and pb is None) or (pa is not None and pb is not None
                                                               and point_id(pa) == point_id(pb)),
               "point": pb or pa}
        for k in ("calib_top1", "top1"):
            row[k] = [a.get(k), b.get(k)]
            row[f"{k}_same"] = a.get(k) is None and b.get(k) is None or (
                a.get(k) is not None and b.get(k) is not None and round(a[k], 2) == round(b[k], 2))
        row["same"] = row["point_same"] and row["calib_top1_same"] and row["top1_same"]
        same_all &= row["same"]
        rows[name] = row
    return {"reproduced": same_all, "contenders": rows,
            "earlier_hardware": (earlier.get("hardware") or {}).get("cpu"), "hardware": (now.get("hardware") or {}).get("cpu")}


def format_comparison(cmp: Mapping) -> str:
    def num(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [f"reproduction of a run on {cmp.get('earlier_hardware')} on {cmp.get('hardware')}: "
             + ("every chosen point and accuracy is the same" if cmp["reproduced"] else "NOT the same")]
    for name, r in cmp["contenders"].items():
        lines.append(f"  {name:<8} point {'same' if r['point_same'] else 'DIFFERS'}; calibration top-1 "
                     f"{num(r['calib_top1'][0])} -> {num(r['calib_top1'][1])}; report top-1 {num(r['top1'][0])} -> "
                     f"{num(r['top1'][1])}{'' if r['same'] else '   <-- differs'}")
    return "\n".join(lines)
