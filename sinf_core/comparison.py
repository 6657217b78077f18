"""DCS versus the baseline filter scores (the paper's claim ii), from a bundle's oracle-routing grid.

Decisions (which DCS variant counts as "DCS") look at the calibration rows only; the table that is
reported comes from the report rows.
"""

from __future__ import annotations

from collections import defaultdict

from .errors import SinfError


def grid_table(grid: dict, tap: str, split: str) -> dict[str, dict[float, float]]:
    """{method: {r_L: mean per-cluster accuracy}} for one stem boundary and split."""
    table: dict[str, dict[float, float]] = defaultdict(dict)
    for row in grid["rows"]:
        if row.get("tap", grid.get("tap")) == tap and row["split"] == split:
            table[row["method"]][float(row["r_L"])] = row["mean_acc"]
    if not table:
        raise SinfError(f"the grid has no rows for tap {tap!r} and split {split!r}")
    return dict(table)


def _mean(per_r: dict[float, float]) -> float:
    return sum(per_r.values()) / len(per_r)


def choose_dcs_variant(calib: dict[str, dict[float, float]]) -> str | None:
    """The DCS variant (``dcs``, ``dcs_lda``, ...) with the best mean CALIBRATION accuracy over the r_L
    grid; ties go to the plain ``dcs``. None when the grid has no DCS rows."""
    variants = sorted((m for m in calib if m.startswith("dcs")), key=lambda m: (m != "dcs", m))
    return max(variants, key=lambda m: _mean(calib[m])) if variants else None


def compare_scores(grid: dict, tap: str) -> dict:
    """Per method and r_L: calibration and report accuracy; the best baseline per r_L (by report accuracy,
    shown for what it is); where DCS wins or loses; the rank of every method by mean report accuracy."""
    calib, report = grid_table(grid, tap, "calib"), grid_table(grid, tap, "report")
    methods = sorted(report)
    r_grid = sorted({r for per in report.values() for r in per})
    chosen = choose_dcs_variant(calib)
    rows = []
    for r in r_grid:
        baselines = {m: report[m][r] for m in methods if not m.startswith("dcs") and r in report[m]}
        best_m = max(baselines, key=baselines.get) if baselines else None
        dcs = report.get(chosen, {}).get(r) if chosen else None
        rows.append({
            "r_L": r,
            "report": {m: report[m].get(r) for m in methods},
            "calib": {m: calib.get(m, {}).get(r) for m in methods},
            "best_baseline": best_m,
            "best_baseline_acc": baselines.get(best_m) if best_m else None,
            "dcs_minus_best": None if dcs is None or best_m is None else round(dcs - baselines[best_m], 2),
        })
    mean_report = {m: sum(report[m].values()) / len(report[m]) for m in methods}
    return {
        "tap": tap,
        "fill": grid.get("fill", "zero"),
        "bn_samples": grid.get("bn_samples", 0),
        "dcs_variant": chosen,
        "dcs_variant_calib_means": {m: round(_mean(calib[m]), 2) for m in methods if m.startswith("dcs") and m in calib},
        "r_M": next((row["r_M"] for row in grid["rows"]), None),
        "methods": methods,
        "r_L": r_grid,
        "rows": rows,
        "ranking": sorted(methods, key=lambda m: -mean_report[m]),
        "mean_report": {m: round(v, 2) for m, v in mean_report.items()},
    }


def comparison_markdown(cmp: dict, title: str) -> str:
    methods = cmp["ranking"]
    lines = [f"# {title}", "",
             f"Oracle routing (each cluster's samples go to its own subgraph), restricted heads, stem boundary "
             f"after `{cmp['tap']}`, r_M = {cmp['r_M']}, same schedule and kept counts for every score, removed "
             + ("channels replaced by their mean activation on the cluster's fit images (mean replacement). "
                if cmp.get("fill") == "mean" else "channels set to zero. ")
             + (f"BatchNorm statistics of each subgraph re-estimated on {cmp['bn_samples']} fit images of its "
                "cluster (the shift its pruning causes, applied to the base statistics). " if cmp.get("bn_samples") else "")
             + "Mean per-cluster top-1 (%) on the **report** split; options were fixed on the calibration split.", ""]
    if cmp.get("dcs_variant"):
        lines += [f"DCS variant chosen on the calibration split: `{cmp['dcs_variant']}` (mean calibration accuracy "
                  + ", ".join(f"{m} {v:.2f}" for m, v in cmp["dcs_variant_calib_means"].items())
                  + "); the other variants are listed for reference, and the last column compares the chosen one "
                  "with the best baseline at each r_L (picked on the report split, which favours the baselines).", ""]
    lines += ["| r_L | " + " | ".join(methods) + " | best baseline | DCS - best |",
             "|---|" + "---|" * (len(methods) + 2)]
    for row in cmp["rows"]:
        cells = [f"{row['report'][m]:.2f}" if row["report"][m] is not None else "-" for m in methods]
        d = row["dcs_minus_best"]
        lines.append(f"| {row['r_L']:.1f} | " + " | ".join(cells) + f" | {row['best_baseline']} | "
                     + ("-" if d is None else f"{d:+.2f}") + " |")
    lines += ["", "Mean over the r_L grid: " + ", ".join(f"{m} {cmp['mean_report'][m]:.2f}" for m in methods), ""]
    return "\n".join(lines)


def comparison_figure(cmp: dict):
    """Plotly figure: report accuracy versus r_L, one line per score (DCS drawn thicker)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for m in cmp["ranking"]:
        ys = [row["report"][m] for row in cmp["rows"]]
        fig.add_trace(go.Scatter(
            x=[100 * r for r in cmp["r_L"]], y=ys, mode="lines+markers", name=m,
            line={"width": 4 if m.startswith("dcs") else 1.5},
            hovertemplate=f"{m}<br>r_L %{{x:.0f}} %<br>accuracy %{{y:.2f}} %<extra></extra>",
        ))
    fig.update_layout(title=f"Filter scores under oracle routing (stem after {cmp['tap']}, report split)",
                      xaxis_title="channels removed at the last layer, r_L (%)",
                      yaxis_title="mean per-cluster top-1 (%)", template="plotly_white", height=480)
    return fig
