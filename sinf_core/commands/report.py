"""`sinf report MODEL`: a built bundle's benchmark as docs files (JSON + Markdown, optionally HTML)."""

from __future__ import annotations

from pathlib import Path

NAME = "report"
HELP = "write a bundle's speed-up report (bench.json of `sinf build`) to docs/: JSON, Markdown and optional HTML"


def add_arguments(p) -> None:
    p.add_argument("model", help="the bundle's model: a registered name or the spec given to `sinf build`")
    p.add_argument("--bundle", help="bundle folder (default: $SINF_CACHE_DIR/bundles/<model>)")
    p.add_argument("--out", default="docs", help="folder for bench_<model>.{json,md[,html]} (default docs)")
    p.add_argument("--html", action="store_true", help="also write a standalone HTML report (plotly inlined, ~4 MB)")


def run(args) -> int:
    from ..bundle import Bundle
    from ..errors import SinfError
    from ..io import atomic_write, write_json
    from ..artifacts import BENCH, report_file
    from ..pipeline import default_bundle_dir
    from ..report import to_html, to_markdown

    bundle = Bundle.open(args.bundle or default_bundle_dir(args.model), model=args.model)
    if not bundle.has("bench"):
        raise SinfError(f"bundle {bundle.root} has no benchmark yet; run `sinf build {args.model}` without --no-bench")
    bench = bundle.json(BENCH)
    out = Path(args.out)
    title = f"{args.model}: base vs SINF vs early exit vs cascade vs static pruning"
    md = to_markdown(bench, title)
    write_json(out / report_file("bench", args.model, "json"), bench)
    atomic_write(out / report_file("bench", args.model, "md"), lambda p: p.write_text(md))
    if args.html:
        page = to_html(bench, title)
        atomic_write(out / report_file("bench", args.model, "html"), lambda p: p.write_text(page))
    print(md)
    return 0
