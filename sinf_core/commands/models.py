"""`sinf models`: the model registry, with each model's data set, size, published top-1 and weights, and
the model specs accepted besides (``torchvision:NAME``, ``timm:NAME``, ``package.module:callable``)."""

from __future__ import annotations

from .common import emit

NAME = "models"
HELP = ("list the registered models: data set, parameters, published top-1 and whether their weights are here "
        "(torchvision:NAME, timm:NAME and module:callable are accepted too)")

_WEIGHTS = {
    "assets": "in assets/",
    "cached": "in torch.hub's cache",
    "local": "in $SINF_WEIGHTS_DIR",
    "download": "downloaded on first use",
    "missing": "MISSING from assets/",
    "none": "none: train it (`sinf train`)",
}


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from ..models.registry import describe_models

    rows = describe_models()
    emit({"models": rows}, args.json, "" if args.json else _text(rows))
    return 0


def _text(rows: list[dict]) -> str:
    lines = [f"  {'model':<24} {'data set':<9} {'params':>7} {'top-1':>6}  weights"]
    for r in rows:
        params = f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] is not None else "-"
        top1 = (f"{r['published_top1']:.2f}" if r["published_top1"] is not None
                else f"{r['card_top1']:.2f}*" if r.get("card_top1") is not None else "-")
        lines.append(f"  {r['name']:<24} {r['dataset']:<9} {params:>7} {top1:>6}  {_WEIGHTS.get(r['weights'], r['weights'])}")
    lines.append("  top-1: published accuracy on the test split (%; * = measured, from the model card in assets/); "
                 "weights: where `sinf eval MODEL` gets them")
    lines.append("  Besides these names, every command takes torchvision:NAME, timm:NAME or package.module:callable "
                 "(e.g. `sinf eval torchvision:resnet18 --dataset DIR --checkpoint FILE`): built with one output per "
                 "class of the data set (recorded as NAME@N), weights from --checkpoint")
    return "\n".join(lines)
