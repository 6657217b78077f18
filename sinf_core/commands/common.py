"""Options shared by subcommands, and a progress bar that knows when it is not on a terminal."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm.auto import tqdm


def add_data_options(p: argparse.ArgumentParser) -> None:
    from ..data.core import DEFAULT_IMAGE_SIZE

    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: $SINF_DATA_DIR or ~/.cache/sinf/data)")
    p.add_argument("--download", action="store_true", help="download the data set if it is missing")
    p.add_argument("--dataset", help="registered data set name or an image-folder path (default: the model's)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="load an image folder's images at N x N pixels (default: the size of the bundle the command "
                        f"reads, else the model's registered size, else {DEFAULT_IMAGE_SIZE}); CIFAR-100 keeps its own "
                        "32x32 and refuses another")


MODEL_HELP = ("registered model name (see `sinf models`), or torchvision:NAME, timm:NAME or package.module:callable "
              "(built with one output per class of the data set; its weights from --checkpoint)")


def add_model_options(p: argparse.ArgumentParser, runtime: tuple[str, ...] = ("device",),
                      runtime_help: dict[str, str] | None = None) -> None:
    """The model, its checkpoint, its data, and the flags of the ``runtime`` fields it runs with
    (``runtime.add_runtime_options``; ``runtime_help`` words a flag for this command)."""
    from ..runtime import add_runtime_options

    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--checkpoint", help="weights file (.safetensors or .pt state dict) instead of the registered ones")
    add_runtime_options(p, ("device",) + tuple(n for n in runtime if n != "device"), runtime_help)
    add_data_options(p)


def open_from_args(args: argparse.Namespace, bundle=None):
    """The experiment of the command's model options, running on the Runtime of its flags (created
    here, once); an image folder at ``bundle``'s image size unless
    ``--image-size`` says otherwise. ``args.model`` becomes the experiment's canonical
    name (a spec gets its class count: ``torchvision:resnet18@10``), so whatever the command records
    (outputs, cache keys, subgraph specs) names the model as the experiment does. With the ``bundle`` the
    command reads, its images are loaded at the bundle's size unless ``--image-size`` says otherwise,
    and a bundle built at another size is refused."""
    from ..data import DATASETS
    from ..experiment import open_experiment
    from ..models import get_entry
    from ..runtime import runtime_from_args

    size = args.image_size
    if size is None and bundle is not None and (args.dataset or get_entry(args.model).dataset) not in DATASETS:
        size = bundle.input_shape[-1]  # an image folder at the bundle's size (a registered data set has its own)
    exp = open_experiment(args.model, args.dataset, args.data_dir, args.download, args.checkpoint,
                          runtime_from_args(args), image_size=size)
    args.model = exp.model_name
    if bundle is not None:
        bundle.check_input_shape(exp.input_shape)
    return exp


def progress(total: int | None, desc: str, unit: str = "img", quiet: bool = False) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True, leave=False)


class StageProgress:
    """The ``on_progress(stage, done, total)`` and ``log(line)`` callbacks of a long multi-stage run
    (``build_bundle``, ``run_benchmark``): one bar per stage (a new stage closes the bars before it), and
    log lines printed as they come; both silent when ``quiet``. ``close()`` when the run is over."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            self.close()
            bar = self.bars[stage] = progress(total, stage, unit="it", quiet=self.quiet)
        bar.total = total
        bar.n = done
        bar.refresh()

    def log(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def emit(obj: dict, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=None if as_json else 2) if as_json else text)
