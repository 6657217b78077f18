"""`sinf publish RUN_DIR MODEL`: a finished training run's weights into ``assets/`` with a JSON card.

The weights are copied as they are (float32 safetensors), or stored in float16 with ``--dtype float16``
(half the file); either way `sinf eval MODEL` reproduces the recorded top-1 exactly, since it is measured
on the stored file; the card records the architecture, the recipe, epochs, wall time, the test top-1
re-measured from the copied file, and its sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime import add_runtime_options
from .common import add_data_options, emit, progress

NAME = "publish"
HELP = "copy a finished `sinf train` run's weights into assets/ with a model card (registry models with a weights file)"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="the --out folder of a finished `sinf train` run (holds summary.json)")
    p.add_argument("model", help="registered model whose weights file (Weights.file, in assets/) the weights become")
    p.add_argument("--assets-dir", help="target folder (default: the project's assets/)")
    add_runtime_options(p, ("batch_size",))
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="how the weights are stored (float16: half the file, loaded as float32)")
    add_data_options(p)
    p.add_argument("--json", action="store_true", help="print the card as JSON")


def run(args) -> int:
    from ..evaluate import accuracy_report, collect_logits
    from ..experiment import open_experiment
    from ..models.registry import ASSETS_DIR, publish_weights
    from ..runtime import Runtime

    run_dir = Path(args.run_dir)
    assets = Path(args.assets_dir) if args.assets_dir else ASSETS_DIR

    def measure(weights: Path) -> dict:
        exp = open_experiment(args.model, args.dataset, args.data_dir, args.download, str(weights),
                              Runtime.create("cpu", batch_size=args.batch_size),
                              image_size=args.image_size)
        bar = progress(len(exp.test), f"eval {args.model}", quiet=args.json)
        logits = collect_logits(exp.model, exp.test, None, exp.runtime, on_batch=bar.update)
        bar.close()
        return accuracy_report(logits.argmax(1).numpy(), exp.test.labels.numpy(), exp.test.hierarchy)

    card = publish_weights(run_dir, args.model, assets, measure, args.dtype)
    emit(card, args.json, json.dumps(card, indent=2))
    return 0
