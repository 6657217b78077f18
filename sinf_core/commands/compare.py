"""`sinf compare MODEL`: DCS versus the baseline scores from a built bundle -> JSON, Markdown, HTML plot."""

from __future__ import annotations

import json
from pathlib import Path

NAME = "compare"
HELP = "compare DCS with the baseline filter scores (oracle routing) from a bundle; writes docs files"


def add_arguments(p) -> None:
    p.add_argument("model", help="the bundle's model: a registered name or the spec given to `sinf build`")
    p.add_argument("--bundle", help="bundle folder (default: $SINF_CACHE_DIR/bundles/<model>)")
    p.add_argument("--tap", help="stem boundary of the grid rows to compare (default: the deepest-pruning one)")
    p.add_argument("--out", default="docs", help="folder for scores_<model>.{json,md,html}")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..bundle import Bundle
    from ..comparison import compare_scores, comparison_figure, comparison_markdown
    from ..io import atomic_write, write_json
    from ..artifacts import GRID, report_file
    from ..pipeline import default_bundle_dir

    bundle = Bundle.open(args.bundle or default_bundle_dir(args.model), model=args.model)
    grid = bundle.json(GRID)
    taps = grid.get("taps") or [grid["tap"]]
    results = {t: compare_scores(grid, t) for t in ([args.tap] if args.tap else taps)}
    out = Path(args.out)
    write_json(out / report_file("scores", args.model, "json"), {"model": args.model, "comparisons": results})
    md = "\n".join(comparison_markdown(c, f"{args.model}: DCS vs baselines, stem after {t}") for t, c in results.items())
    atomic_write(out / report_file("scores", args.model, "md"), lambda p: p.write_text(md))
    html = "".join(comparison_figure(c).to_html(full_html=False, include_plotlyjs="cdn") for c in results.values())
    atomic_write(out / report_file("scores", args.model, "html"), lambda p: p.write_text(f"<html><body>{html}</body></html>"))
    print(json.dumps(results) if args.json else md)
    return 0
