"""The speed-up report from a benchmark (``sinf bench --json`` / a bundle's bench.json): a table with
ratios to the base model, the operating points, and exports as standalone HTML, CSV and JSON.

The benchmark JSON holds, for each mode (``base``, ``sinf``, ``exit``, ``cascade``, ``static``):
``top1``, ``latency_ms_bs1``, ``throughput_ips``, ``flops``, ``params``; the modes sit under ``modes``
or at the top level. Operating points (``pareto`` or ``points``: a list of dicts with ``mode`` or a
{mode: [points]} mapping) and ``hardware`` (a dict or a string) are optional.

``load_bench`` is the validating reader for a benchmark from outside (an uploaded file, a bundle's
bench.json): it checks the format marker, the model name and every number the report draws, and raises
``SinfError`` with a message naming the bad key. ``bench_info`` says which model, data set, backend and
precision a benchmark belongs to; ``report_title`` / ``export_name`` name the report after the
benchmark's own model.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from typing import Any, Mapping, Sequence

from .artifacts import report_file
from .errors import SinfError

MODES = ("base", "reference", "sinf", "exit", "cascade", "static", "select", "select+sinf", "select+exit",
         "select+cascade")
MODE_LABELS = {
    "base": "base model", "reference": "PyTorch float32 base (the reference of a runtime benchmark)", "sinf": "SINF (router + subgraphs)", "exit": "early exit", "cascade": "cascade (exit, route, fall back)",
    "static": "static pruning (same expected FLOPs)", "select": "network selection (cheaper networks first)",
    **{f"select+{m}": f"network selection, the last network as {m}" for m in ("sinf", "exit", "cascade")},
}
METRICS = ("top1", "latency_ms_bs1", "throughput_ips", "flops", "params")
COLUMNS = [
    ("mode", "mode"), ("top1", "top-1 (%)"), ("delta_top1", "vs base (points)"),
    ("latency_ms_bs1", "latency bs=1 (ms)"), ("latency_speedup", "bs=1 speed-up (x)"),
    ("throughput_ips", "throughput (img/s)"), ("throughput_ratio", "throughput vs base (x)"),
    ("flops", "FLOPs per image"), ("flops_ratio", "FLOPs vs base"), ("params", "parameters"),
]
# a runtime benchmark also shows every contender against the PyTorch float32 base it ran beside
REFERENCE_COLUMNS = [("throughput_vs_reference", "throughput vs PyTorch fp32 (x)"),
                     ("latency_vs_reference", "bs=1 vs PyTorch fp32 (x)")]


def table_columns(bench: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The table's (key, label) columns: ``COLUMNS``, and after the throughput ratio the ratios against the
    PyTorch float32 reference when the benchmark ran on another runtime or precision."""
    if not isinstance(bench.get("reference"), Mapping):
        return list(COLUMNS)
    at = [k for k, _ in COLUMNS].index("throughput_ratio") + 1
    return COLUMNS[:at] + REFERENCE_COLUMNS + COLUMNS[at:]


def bench_modes(bench: Mapping[str, Any]) -> dict[str, dict]:
    """{mode: metrics} for the modes present, in the canonical order (then any others)."""
    if not isinstance(bench, Mapping):
        raise SinfError("a benchmark must be a JSON object")
    src = bench.get("modes", bench)
    if not isinstance(src, Mapping):
        raise SinfError("the benchmark's 'modes' must be an object")
    found = {k: dict(v) for k, v in src.items()
             if isinstance(v, Mapping) and (k in MODES or sum(m in v for m in METRICS) >= 3)}
    if "base" not in found:
        raise SinfError("the benchmark has no 'base' mode with top1 / latency_ms_bs1 / throughput_ips / flops / params")
    order = [m for m in MODES if m in found] + sorted(m for m in found if m not in MODES)
    return {m: found[m] for m in order}


BENCH_FORMAT = "sinf-bench"  # the marker `sinf bench --json` writes (sinf_core.bench.BENCH_FORMAT)
RUNTIME_FORMAT = f"{BENCH_FORMAT}-runtime"  # `sinf bench --backend B --precision P` (sinf_core.runtime_bench)
# keys of a mode that, when present and not null, must be finite numbers (the table and the figures use them)
MODE_NUMBERS = METRICS + ("latency_speedup", "throughput_ratio", "flops_ratio", "top1_delta", "calib_top1",
                          "calib_flops")
POINT_NUMBERS = ("top1", "flops", "ips", "latency_ms_bs1", "throughput_ips")
TARGET_NUMBERS = ("budget_points", "throughput_ratio_needed", "top1_delta", "throughput_ratio")
REQUIRED = ("top1", "throughput_ips")  # every mode names them (null: the mode was not measured)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_numbers(obj: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    for k in keys:
        v = obj.get(k)
        if v is not None and not _is_number(v):
            raise SinfError(f"{where}: {k} is {v!r}, not a finite number")


def load_bench(obj: Any) -> dict:
    """Validate a benchmark (the parsed JSON of ``sinf bench --json`` or a bundle's bench.json) and
    return it as a dict. Raises ``SinfError`` naming the first problem: not a JSON object, a missing or
    wrong ``format`` marker, no model name, no ``base`` mode, a mode that is not an object or lacks
    ``top1`` / ``throughput_ips``, or a number that is not a finite number (a string, NaN, infinity).
    ``null`` is allowed for a mode that was not measured (e.g. no operating point within the budget),
    never for the base model's top-1 and throughput."""
    if not isinstance(obj, Mapping):
        raise SinfError(f"a benchmark must be a JSON object, not {_json_type(obj)}")
    marker = obj.get("format")
    if marker is None:
        raise SinfError(f"the benchmark has no 'format' marker (expected {BENCH_FORMAT!r}, as `sinf bench --json` writes)")
    if marker not in (BENCH_FORMAT, RUNTIME_FORMAT):
        raise SinfError(f"the benchmark's format is {marker!r}, expected {BENCH_FORMAT!r} or {RUNTIME_FORMAT!r}")
    version = obj.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise SinfError(f"the benchmark's version is {version!r}, not an integer")
    model = obj.get("model")
    if not isinstance(model, str) or not model.strip():
        raise SinfError(f"the benchmark does not name its model ('model' is {model!r}, expected a non-empty string)")
    src = obj.get("modes", obj)
    if not isinstance(src, Mapping):
        raise SinfError(f"the benchmark's 'modes' must be an object, not {_json_type(src)}")
    for name in MODES:
        if name in src and not isinstance(src[name], Mapping):
            raise SinfError(f"mode {name!r} must be an object, not {_json_type(src[name])}")
    for name, m in bench_modes(obj).items():
        for k in REQUIRED:
            if k not in m:
                raise SinfError(f"mode {name!r} has no {k!r}")
        _check_numbers(m, MODE_NUMBERS, f"mode {name!r}")
    base = src["base"]
    for k in REQUIRED:
        if base.get(k) is None:
            raise SinfError(f"the base mode's {k} is null; the report compares every mode with it")
    sweep = obj.get("sweep")
    if sweep is not None and not isinstance(sweep, Mapping):
        raise SinfError(f"the benchmark's 'sweep' must be an object, not {_json_type(sweep)}")
    for what, pts in (("operating point", bench_points(obj)), ("screened point", screened_points(obj))):
        for p in pts:
            _check_numbers(p, POINT_NUMBERS, f"{what} of mode {p.get('mode', '?')!r}")
    target = obj.get("target")
    if target is not None:
        if not isinstance(target, Mapping):
            raise SinfError(f"the benchmark's 'target' must be an object, not {_json_type(target)}")
        _check_numbers(target, TARGET_NUMBERS, "target")
    hw = obj.get("hardware")
    if hw is not None and not isinstance(hw, (Mapping, str)):
        raise SinfError(f"the benchmark's 'hardware' must be an object or a string, not {_json_type(hw)}")
    return dict(obj)


def _setting(bench: Mapping[str, Any], key: str) -> Any:
    """``key`` at the top level of the benchmark, else in its hardware, else in its options."""
    for where in (bench, bench.get("hardware"), bench.get("options")):
        if isinstance(where, Mapping) and where.get(key) is not None:
            return where[key]
    return None


def bench_info(bench: Mapping[str, Any]) -> dict[str, Any]:
    """Which model and set-up a benchmark belongs to: ``model``, ``dataset``, ``backend`` (the
    benchmark's own ``backend`` key when present, else "torch"), ``precision`` (its ``precision`` key,
    else "bf16" when it ran in bfloat16, else "float32"), ``device``, ``channels_last`` and ``fold_bn``
    (None when not recorded)."""
    precision = _setting(bench, "precision")
    if precision is None:
        precision = "bf16" if _setting(bench, "bf16") else "float32"
    return {
        "model": str(bench.get("model") or "unknown model"),
        "dataset": None if bench.get("dataset") is None else str(bench["dataset"]),
        "backend": str(_setting(bench, "backend") or "torch"),
        "precision": str(precision),
        "device": None if _setting(bench, "device") is None else str(_setting(bench, "device")),
        "channels_last": _setting(bench, "channels_last"),
        "fold_bn": _setting(bench, "fold_bn"),
    }


def info_text(bench: Mapping[str, Any]) -> str:
    """One line: model, data set, backend, precision, device and the layout / folding settings."""
    i = bench_info(bench)
    parts = [f"backend {i['backend']}", f"precision {i['precision']}"]
    if i["device"]:
        parts.append(f"device {i['device']}")
    if i["channels_last"] is not None:
        parts.append("channels_last" if i["channels_last"] else "contiguous (NCHW) tensors")
    if i["fold_bn"] is not None:
        parts.append("BatchNorm folded into the convolutions" if i["fold_bn"] else "BatchNorm not folded")
    data = f" on {i['dataset']}" if i["dataset"] else ""
    return f"Benchmark of {i['model']}{data}: " + ", ".join(parts)


def report_title(bench: Mapping[str, Any]) -> str:
    """The report's title, named after the benchmark's own model (and its runtime, when not PyTorch float32)."""
    i = bench_info(bench)
    runtime = "" if _is_torch_fp32(i) else f" on {i['backend']} {i['precision']}"
    return f"SINF speed-up report: {i['model']}{runtime}"


def _is_torch_fp32(info: Mapping[str, Any]) -> bool:
    return info["backend"] == "torch" and info["precision"] in ("float32", "fp32")


def model_warning(bench: Mapping[str, Any], selected: str | None) -> str | None:
    """A warning when the benchmark is of another model than ``selected`` (the app's model), else None."""
    from .models.specs import same_model

    model = bench_info(bench)["model"]
    if selected is None or model == selected or same_model(selected, str(model)):
        return None
    return (f"This benchmark is of {model}, not of the model selected ({selected}). "
            f"The report and its exports are titled with {model}.")


def export_name(bench: Mapping[str, Any], kind: str, ext: str) -> str:
    """A file name for an export, e.g. ``sinf_report_cifar100_resnet56.html`` (the model's ``artifacts.folder_name``)."""
    return "sinf_" + report_file(kind, bench_info(bench)["model"], ext)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0.0) else None


def bench_table(bench: Mapping[str, Any]) -> list[dict]:
    """One row per mode: the raw metrics plus ``delta_top1`` (points vs base), ``latency_speedup``
    (base latency / mode latency), ``throughput_ratio`` (mode / base; the benchmark's paired-run median
    when recorded) and ``flops_ratio`` (mode / base)."""
    modes = bench_modes(bench)
    base = {k: _num(modes["base"].get(k)) for k in METRICS}
    # against the PyTorch float32 base: a runtime benchmark's reference, or the base of a PyTorch float32 one
    ref = modes.get("reference") or (modes["base"] if _is_torch_fp32(bench_info(bench)) else None)
    ref_ips = None if ref is None else _num(ref.get("throughput_ips"))
    ref_ms = None if ref is None else _num(ref.get("latency_ms_bs1"))
    rows = []
    for name, m in modes.items():
        v = {k: _num(m.get(k)) for k in METRICS}
        paired_ref = _num(m.get("throughput_ratio_vs_reference")) or (
            _num(m.get("throughput_ratio")) if ref is modes["base"] else None)
        rows.append({
            "throughput_vs_reference": paired_ref or _ratio(v["throughput_ips"], ref_ips),
            "latency_vs_reference": _num(m.get("latency_speedup_vs_reference")) or _ratio(ref_ms, v["latency_ms_bs1"]),
            "mode": name, **v,
            "delta_top1": None if v["top1"] is None or base["top1"] is None else v["top1"] - base["top1"],
            # the benchmark's own ratios (medians of paired, interleaved runs) where it recorded them
            "latency_speedup": _num(m.get("latency_speedup")) or _ratio(base["latency_ms_bs1"], v["latency_ms_bs1"]),
            "throughput_ratio": _num(m.get("throughput_ratio")) or _ratio(v["throughput_ips"], base["throughput_ips"]),
            "flops_ratio": _ratio(v["flops"], base["flops"]),
        })
    return rows


def bench_points(bench: Mapping[str, Any]) -> list[dict]:
    """The operating points of the sweep (``sweep.pareto`` of ``sinf bench``: calibration top-1 and
    expected FLOPs per point), or a top-level ``pareto`` / ``points`` list, as dicts with ``mode``."""
    sweep = bench.get("sweep") if isinstance(bench.get("sweep"), Mapping) else {}
    raw = sweep.get("pareto", bench.get("pareto", bench.get("points")))
    return _flatten_points(raw)


def screened_points(bench: Mapping[str, Any]) -> list[dict]:
    """Candidates whose throughput was measured on calibration images (``sweep.screen``), with ``ips``."""
    sweep = bench.get("sweep") if isinstance(bench.get("sweep"), Mapping) else {}
    return _flatten_points(sweep.get("screen"))


def _flatten_points(raw: Any) -> list[dict]:
    out: list[dict] = []
    if isinstance(raw, Mapping):
        for mode, pts in raw.items():
            if isinstance(pts, Mapping):  # {"points": [...], ...}
                pts = pts.get("points", [])
            for p in pts or []:
                if isinstance(p, Mapping):
                    out.append({"mode": mode, **p})
    elif isinstance(raw, list):
        out = [dict(p) for p in raw if isinstance(p, Mapping)]
    return out


def chosen_points(bench: Mapping[str, Any], split: str = "report") -> dict[str, dict]:
    """Each mode's reported point. ``split='calib'``: at its calibration top-1 / expected FLOPs (the
    coordinates of the sweep; the base model at its calibration top-1), else the report-split metrics."""
    modes = bench_modes(bench)
    if split != "calib":
        return {m: dict(v) for m, v in modes.items()}
    sweep = bench.get("sweep") if isinstance(bench.get("sweep"), Mapping) else {}
    out = {}
    for m, v in modes.items():
        top1 = v.get("calib_top1", sweep.get("base_calib_top1") if m == "base" else None)
        flops = v.get("calib_flops", v.get("flops"))
        if top1 is not None and flops is not None:
            out[m] = {"top1": top1, "flops": flops}
    return out


def operating_points(bench: Mapping[str, Any]) -> list[dict]:
    """Per mode, the settings of its reported point (tap, r_M, r_L, gamma, tau), its calibration top-1
    and expected FLOPs, and the route / exit / fallback rates on the report split when recorded."""
    rows = []
    for m, v in bench_modes(bench).items():
        op = v.get("operating_point")
        if not isinstance(op, Mapping):
            if v.get("note"):
                rows.append({"mode": m, "note": v["note"]})
            continue
        row = {"mode": m, **{k: op.get(k) for k in ("tap", "r_M", "r_L", "gamma", "tau")},
               "calib_top1": v.get("calib_top1"), "calib_flops": v.get("calib_flops")}
        if isinstance(v.get("networks"), list):  # network selection: its chain, gates and shares
            row.update(networks=v["networks"], thresholds=op.get("thresholds"), answered=v.get("answered"))
        for k in ("exit_rate", "route_rate", "fallback_rate", "route_accuracy"):
            if v.get(k) is not None:
                row[k] = v[k]
        rows.append(row)
    return rows


def target_text(bench: Mapping[str, Any]) -> str | None:
    """One sentence on the target (best mode within the budget and at least the target throughput ratio)."""
    t = bench.get("target")
    if not isinstance(t, Mapping) or t.get("best_mode") is None:
        return None
    met = "met" if t.get("met") else "not met"
    delta, ratio = _num(t.get("top1_delta")), _num(t.get("throughput_ratio"))
    return (f"Target ({t.get('budget_points')} points top-1 budget, {t.get('throughput_ratio_needed')}x throughput): "
            f"{met}. Best mode {t['best_mode']}: {'n/a' if delta is None else f'{delta:+.2f}'} points, "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} base throughput.")


def subgraph_text(bench: Mapping[str, Any]) -> str | None:
    """One sentence on how the subgraphs were made: score, removed channels, BatchNorm statistics."""
    opts = bench.get("options")
    if not isinstance(opts, Mapping) or bench.get("format") == RUNTIME_FORMAT:
        return None  # a runtime benchmark runs the subgraphs of its bundle's PyTorch benchmark
    n = opts.get("bn_samples") or 0
    return (f"Subgraphs: filter score {bench.get('subgraph_score', opts.get('score'))}; removed channels "
            + ("replaced by their mean activation" if opts.get("fill") == "mean" else "set to zero")
            + (f"; BatchNorm statistics re-estimated on {n} fit images per cluster." if n
               else "; the base model's BatchNorm statistics."))


def hardware_text(bench: Mapping[str, Any]) -> str:
    hw = bench.get("hardware")
    if hw is None:
        return "hardware not recorded"
    if isinstance(hw, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in hw.items())
    return str(hw)


def fmt(key: str, v: Any) -> str:
    """Human formatting of one table cell."""
    if v is None:
        return "n/a"
    if key == "mode":
        return str(v)
    f = float(v)
    if key in ("top1",):
        return f"{f:.2f}"
    if key == "delta_top1":
        return f"{f:+.2f}"
    if key in ("latency_ms_bs1",):
        return f"{f:.2f}"
    if key in ("latency_speedup", "throughput_ratio", "throughput_vs_reference", "latency_vs_reference"):
        return f"{f:.2f}x"
    if key == "flops_ratio":
        return f"{100 * f:.1f} %"
    if key == "throughput_ips":
        return f"{f:,.0f}"
    if key in ("flops", "params"):
        for div, s in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
            if abs(f) >= div:
                return f"{f / div:.3g}{s}"
        return f"{f:.0f}"
    return f"{f:.4g}"


# decimals of each table column in the CSV / JSON exports: 2 for top-1 and points, 4 for ratios and
# milliseconds (as `sinf bench` records them), 1 for images per second, whole FLOPs and parameters
DECIMALS = {"top1": 2, "delta_top1": 2, "latency_ms_bs1": 4, "latency_speedup": 4, "throughput_ips": 1,
            "throughput_ratio": 4, "throughput_vs_reference": 4, "latency_vs_reference": 4, "flops": 0,
            "flops_ratio": 4, "params": 0}


def round_value(key: str, v: Any) -> Any:
    """``v`` rounded to the decimals of column ``key`` (no float noise such as -1.039999999999992; whole
    numbers as int; -0.0 as 0.0); None and text unchanged."""
    if key not in DECIMALS or v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    if not math.isfinite(v):
        return None
    d = DECIMALS[key]
    return int(round(v)) if d == 0 else round(float(v), d) + 0.0  # + 0.0 turns -0.0 into 0.0


def rounded_table(bench: Mapping[str, Any]) -> list[dict]:
    """``bench_table`` with every number rounded by ``round_value``."""
    return [{k: round_value(k, v) for k, v in r.items()} for r in bench_table(bench)]


def to_csv(bench: Mapping[str, Any]) -> str:
    """The table as CSV (numbers rounded by ``round_value``, one row per mode, header = column keys)."""
    buf = io.StringIO()
    cols = table_columns(bench)
    w = csv.DictWriter(buf, fieldnames=[k for k, _ in cols], lineterminator="\n")
    w.writeheader()
    for r in rounded_table(bench):
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k, _ in cols})
    return buf.getvalue()


def to_json(bench: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    """The benchmark (unchanged) plus the derived table (rounded), as indented JSON."""
    return json.dumps({"benchmark": bench, "table": rounded_table(bench), **(extra or {})}, indent=2, default=str)


def figures(bench: Mapping[str, Any]) -> list:
    """The report's Plotly figures: throughput and latency per mode; accuracy vs expected FLOPs (the
    calibration sweep with each mode's Pareto front and chosen point); accuracy vs measured latency at
    batch size 1 and vs measured throughput (report split, one point per contender)."""
    from . import plots

    modes = bench_modes(bench)
    report_pts = {m: v for m, v in modes.items() if v.get("top1") is not None}
    figs = [
        plots.mode_bars_figure(modes, "throughput_ips", "Throughput at a large batch (report split)", "images per second"),
        plots.mode_bars_figure(modes, "latency_ms_bs1", "Latency at batch size 1 (median)", "milliseconds per image"),
    ]
    pts = bench_points(bench)
    figs.append(plots.pareto_figure(
        pts, "flops", "expected MFLOPs per image (2 x MACs)",
        "Accuracy vs expected FLOPs" + (" (calibration sweep; stars: chosen points)" if pts else ""),
        x_scale=1e-6, chosen=chosen_points(bench, "calib") if pts else report_pts))
    figs.append(plots.pareto_figure([], "latency_ms_bs1", "measured latency at batch size 1 (ms per image)",
                                    "Accuracy vs measured latency (report split)", chosen=report_pts))
    screen = screened_points(bench)
    tp_chosen = {m: v for m, v in report_pts.items() if v.get("throughput_ips") is not None}
    figs.append(plots.pareto_figure(
        [{**p, "throughput_ips": p.get("ips")} for p in screen], "throughput_ips", "measured images per second",
        "Accuracy vs measured throughput" + (" (dots: candidates screened on calibration)" if screen else ""),
        chosen=tp_chosen, x_better="higher"))
    return figs


def to_html(bench: Mapping[str, Any], title: str | None = None, subtitle: str = "") -> str:
    """A standalone HTML page (plotly.js inlined, no network needed): which model and set-up, the table,
    the hardware, the figures. ``title`` defaults to ``report_title(bench)`` (the benchmark's model)."""
    title = report_title(bench) if title is None else title
    rows = bench_table(bench)
    cols = table_columns(bench)
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(k, r.get(k)))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    parts = []
    for i, fig in enumerate(figures(bench)):
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False,
                                 default_width="100%", default_height=f"{fig.layout.height or 450}px"))
    notes = bench.get("notes") or bench.get("note") or ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0; font-size: 0.92rem; }}
th, td {{ border: 1px solid #ddd; padding: 0.35rem 0.55rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f5f8; }}
.meta {{ color: #555; font-size: 0.9rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(subtitle)}</p>
<p class="meta">{html.escape(info_text(bench))}</p>
<p class="meta">Hardware: {html.escape(hardware_text(bench))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>{html.escape(target_text(bench) or "")}</p>
<p class="meta">FLOPs per image = 2 x multiply-accumulates. Speed-ups are ratios measured side by side in one run;
the router's and the exit head's cost are included. {html.escape(str(notes))}</p>
{''.join(parts)}
</body></html>
"""


def point_text(p: Mapping[str, Any]) -> str:
    if isinstance(p.get("thresholds"), list):  # network selection: the chain and each link's gate threshold
        nets = p.get("networks") or []
        s = " -> ".join(str(n) for n in nets) + (", " if nets else "")
        s += "gate thresholds " + ", ".join(f"{float(t):.2f}" for t in p["thresholds"])
        if isinstance(p.get("answered"), list):
            s += " (answered " + " / ".join(f"{100 * float(a):.1f} %" for a in p["answered"]) + ")"
        return s
    s = str(p.get("tap", ""))
    if p.get("r_M") is not None and p.get("r_L") is not None:
        s += f", r {float(p['r_M']):.2f}->{float(p['r_L']):.2f}"
    for k in ("gamma", "tau"):
        if p.get(k) is not None:
            s += f", {k} {float(p[k]):.2f}"
    return s


def to_markdown(bench: Mapping[str, Any], title: str | None = None, front_rows: int = 12) -> str:
    """The report as Markdown for docs/: the table (report split), the chosen operating points (picked on
    calibration), the target sentence, each mode's Pareto front (calibration) and the hardware. ``title``
    defaults to ``report_title(bench)``."""
    lines = [f"# {report_title(bench) if title is None else title}", ""]
    cols = table_columns(bench)
    head = [label for _, label in cols]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in bench_table(bench):
        lines.append("| " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |")
    lines.append("")
    for t in (target_text(bench), subgraph_text(bench)):
        if t:
            lines += [t, ""]
    ops = operating_points(bench)
    if ops:
        z = (bench.get("options") or {}).get("budget_z") or 0
        guard = f", its calibration top-1 less {z} standard errors of its difference from base" if z else ""
        lines += [f"Operating points, chosen on the calibration split (fastest measured point within the budget{guard}):", ""]
        for op in ops:
            if "note" in op:
                lines.append(f"- **{op['mode']}**: {op['note']}")
                continue
            rates = ", ".join(f"{k.replace('_', ' ')} {100 * float(op[k]):.1f} %" for k in ("exit_rate", "route_rate", "fallback_rate")
                              if op.get(k) is not None)
            cal = "" if op.get("calib_top1") is None else f"; calibration top-1 {float(op['calib_top1']):.2f} %"
            lines.append(f"- **{op['mode']}**: {point_text(op)}{cal}" + (f"; on the report split {rates}" if rates else ""))
        lines.append("")
    points = bench_points(bench)
    for mode in sorted({p["mode"] for p in points}, key=lambda m: MODES.index(m) if m in MODES else len(MODES)):
        front = sorted((p for p in points if p["mode"] == mode and p.get("flops") is not None), key=lambda p: p["flops"])
        if len(front) > front_rows:
            step = (len(front) - 1) / (front_rows - 1)
            front = [front[round(i * step)] for i in range(front_rows)]
        lines += [f"Pareto front of **{mode}** (calibration split; {len(front)} of its points shown):", "",
                  "| expected FLOPs | calibration top-1 (%) | point |", "|---|---|---|"]
        lines += [f"| {fmt('flops', p['flops'])} | {fmt('top1', p.get('top1'))} | {point_text(p)} |" for p in front]
        lines.append("")
    lines += [f"{info_text(bench)}.", "", f"Hardware: {hardware_text(bench)}", ""]
    return "\n".join(lines)


SINF_FAMILY = ("sinf", "exit", "cascade")  # SINF's own modes (routing, early exit, both)


def best_combination(benches: Mapping[str, Mapping[str, Any]], budget_points: float = 1.0) -> dict | None:
    """The headline over benchmarks of one model on several runtimes ({label: benchmark}; a PyTorch
    float32 benchmark, runtime benchmarks): the fastest mode on any of them against the PyTorch float32
    base, at no more than ``budget_points`` below that base's top-1, and on the same runtime what SINF's
    best mode within the same budget of that runtime's own base adds to it. None when no benchmark has a
    PyTorch float32 reference. Returns {"label", "mode", "vs_reference", "top1_vs_reference",
    "sinf_mode", "sinf_vs_base", "sinf_top1_vs_base"} (the SINF keys None when no SINF mode is within)."""
    best = None
    for label, bench in benches.items():
        rows = {r["mode"]: r for r in bench_table(bench)}
        ref = rows.get("reference") or (rows["base"] if _is_torch_fp32(bench_info(bench)) else None)
        if ref is None or ref.get("top1") is None:
            continue
        for name, r in rows.items():
            if name == "reference" or r.get("top1") is None or r.get("throughput_vs_reference") is None:
                continue
            if r["top1"] >= ref["top1"] - budget_points and (best is None or r["throughput_vs_reference"] > best["vs_reference"]):
                best = {"label": label, "mode": name, "vs_reference": r["throughput_vs_reference"],
                        "top1_vs_reference": r["top1"] - ref["top1"], "_rows": rows}
    if best is None:
        return None
    rows = best.pop("_rows")
    fam = [rows[m] for m in SINF_FAMILY if m in rows and rows[m].get("throughput_ratio") is not None
           and rows[m].get("delta_top1") is not None and rows[m]["delta_top1"] >= -budget_points]
    top = max(fam, key=lambda r: r["throughput_ratio"], default=None)
    best.update({"sinf_mode": None if top is None else top["mode"],
                 "sinf_vs_base": None if top is None else top["throughput_ratio"],
                 "sinf_top1_vs_base": None if top is None else top["delta_top1"]})
    return best
