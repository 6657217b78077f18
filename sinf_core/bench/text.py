"""The benchmark's result as fixed-width text."""

from __future__ import annotations

from .options import CONTENDERS, MODES, SELECT, SELECT_COMBOS
from .sweep import _point_label


def format_table(result: dict) -> str:
    """The bench table as fixed-width text (also used in docs)."""
    lines = [f"{result['model']} on {result['dataset']} (report split, {result['splits']['report']} images); "
             f"{result['hardware']['cpu']}, {result['hardware']['threads']} threads, torch {result['hardware']['torch']}, "
             f"bf16 {result['hardware']['bf16']}",
             f"{'':<14} {'top1 %':>7} {'d top1':>7} {'MFLOPs':>8} {'x FLOPs':>8} {'params':>9} {'bs1 ms':>8} "
             f"{'x bs1':>6} {'img/s':>8} {'x img/s':>8} {'route%':>7} {'exit%':>6} {'fallb%':>7}"]
    for name in CONTENDERS + tuple(k for k in (SELECT,) + SELECT_COMBOS if k in result):
        r = result[name]
        if r.get("throughput_ips") is None:
            lines.append(f"{name:<14} {'(no point within the budget)':>40}")
            continue

        def pct(v):
            return "" if v is None else f"{100 * v:.1f}"

        lines.append(f"{name:<14} {r['top1']:7.2f} {r['top1_delta']:+7.2f} {r['flops'] / 1e6:8.1f} {r['flops_ratio']:8.3f} "
                     f"{r['params']:9d} {r['latency_ms_bs1']:8.2f} {r['latency_speedup']:6.2f} {r['throughput_ips']:8.1f} "
                     f"{r['throughput_ratio']:8.3f} {pct(r.get('route_rate')):>7} {pct(r.get('exit_rate')):>6} "
                     f"{pct(r.get('fallback_rate')):>7}")
    for m in MODES:
        op = result[m].get("operating_point")
        if op:
            lines.append(f"  {m}: {_point_label(op)}; route accuracy "
                         f"{result[m].get('route_accuracy')}; calibration top-1 {op['top1']:.2f} %")
    for name in (SELECT,) + SELECT_COMBOS:
        sel = result.get(name) or {}
        if sel.get("networks"):
            op = sel["operating_point"]
            lines.append(f"  {name}: {' -> '.join(sel['networks'])}, thresholds {op['thresholds']}, answered "
                         f"{', '.join(f'{100 * a:.1f} %' for a in sel['answered'])}; calibration top-1 {op['top1']:.2f} %")
    st = result["static"]
    if st.get("score"):
        lines.append(f"  static: score {st['score']} from {st['tap']}, r = {st['r']:.3f}, matched to "
                     f"{st['matched_mode']} ({st['target_flops'] / 1e6:.1f} MFLOPs)")
    t = result["target"]
    if t.get("best_mode"):
        lines.append(f"  best mode: {t['best_mode']} at {t['top1_delta']:+.2f} points, {t['throughput_ratio']:.3f}x "
                     f"base throughput; target (>= -{t['budget_points']} points, >= {t['throughput_ratio_needed']}x): "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
