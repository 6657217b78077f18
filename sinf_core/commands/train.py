"""`sinf train MODEL`: train a registered model or a spec (torchvision:NAME, ...) on CIFAR-100 or an image folder (resumable)."""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime import add_runtime_options
from .common import MODEL_HELP, add_data_options, progress

NAME = "train"
HELP = "train a registered model or a spec such as torchvision:resnet18 (channels_last, bf16 where the hardware has it fast; SGD + cosine, resumable checkpoints)"


def add_arguments(p) -> None:
    p.add_argument("model", help=MODEL_HELP.replace("; its weights from --checkpoint", ""))
    add_data_options(p)
    p.add_argument("--out", help="run folder for checkpoints and the summary (default runs/<model>; a spec without ':')")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length before the cosine decay")
    p.add_argument("--init", help="start from these weights instead of a random init (a warm restart / fine-tuning): "
                   "a .safetensors or .pt state dict, or 'published' for the model's weights in assets/")
    p.add_argument("--checkpoint-every", type=int, default=100, help="optimizer steps between checkpoints")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 (default: bf16 autocast only where it is fast: AMX CPU or a bf16 GPU)")
    add_runtime_options(p, ("device",))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after-steps", type=int, help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def _load_init(model, name: str, source: str) -> dict:
    """Load the starting weights into ``model`` (strictly) and describe them for the summary / card.

    A resumed run overwrites them from its checkpoint, so loading them again on resume is harmless."""
    from ..io import sha256_file
    from ..models.registry import ASSETS_DIR, get_entry, load_state_dict_checked, model_card, read_checkpoint

    if source == "published":
        entry = get_entry(name)
        if not entry.weights.file:
            from ..errors import SinfError

            raise SinfError(f"--init published: {name} has no weights in assets/ to start from")
        path = ASSETS_DIR / entry.weights.file
    else:
        path = Path(source)
    if not path.is_file():
        from ..errors import SinfError

        raise SinfError(f"--init: no weights file at {path}")
    load_state_dict_checked(model, read_checkpoint(path), str(path))
    shown = f"published weights (assets/{path.name})" if source == "published" else str(path)
    info = {"source": shown, "sha256": sha256_file(path)}
    card = model_card(name) if source == "published" else None
    if card:  # the earlier stage's record travels with the new weights
        keep = ("recipe", "epochs", "wall_time_s", "test_top1", "sha256", "trained_on", "total_epochs",
                "total_wall_time_s", "init")  # "init": the stages before it, nested
        info["card"] = {k: card[k] for k in keep if k in card}
    return info


def run(args) -> int:
    from ..data import load_dataset, make_splits
    from ..device import pick_device
    from ..evaluate import collect_logits
    from ..experiment import check_model_fits_data, check_splits_agree, resolve_image_size
    from ..errors import SinfError
    from ..models import build_model, get_entry, model_for_classes
    from ..artifacts import RUN_SUMMARY, folder_name
    from ..train import TrainConfig, train

    entry = get_entry(args.model)
    device = pick_device(args.device)
    ds_name = args.dataset or entry.dataset
    if ds_name is None:
        raise SinfError(f"{args.model} is not tied to a data set: pass one (--dataset cifar100 or an image-folder path)")
    size = resolve_image_size(args.image_size, entry.image_size, ds_name)
    tr = load_dataset(ds_name, "train", args.data_dir, args.download, size)
    te = load_dataset(ds_name, "test", args.data_dir, args.download, size)
    splits = make_splits(tr.labels.numpy(), te.labels.numpy(), "heldout")
    fit, calib = tr.subset(splits.fit), tr.subset(splits.calib)
    check_splits_agree(tr, te)
    args.model = model_for_classes(args.model, tr.num_classes)  # a spec: built with one output per class
    model = build_model(args.model, tr.input_shape)
    check_model_fits_data(model, args.model, tr)
    init = _load_init(model, args.model, args.init) if args.init else None
    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                      warmup_epochs=args.warmup_epochs, init=init,
                      bf16=False if args.no_bf16 else None, channels_last=device.type == "cpu" or device.type == "cuda",
                      checkpoint_every=args.checkpoint_every, seed=args.seed)
    out = Path(args.out or Path("runs") / folder_name(args.model))

    def evaluate(m) -> dict:
        lg = collect_logits(m, calib, batch_size=500, device=device, bf16=cfg.bf16)
        return {"calib_top1": round(100.0 * float((lg.argmax(1) == calib.labels).float().mean()), 2)}

    bar = progress(None, f"train {args.model}", unit="step")

    def on_step(info: dict) -> None:
        bar.total = info["total"]
        bar.n = info["step"]
        bar.set_postfix(epoch=info["epoch"], loss=f"{info['loss']:.3f}", acc=f"{info['acc']:.1f}%", lr=f"{info['lr']:.4f}")

    summary = train(model, fit, cfg, out, device, evaluate, on_step, args.stop_after_steps)
    bar.close()
    if "stopped_at_step" not in summary:
        lg = collect_logits(model, te, batch_size=500, device=device)
        summary["test_top1"] = round(100.0 * float((lg.argmax(1) == te.labels).float().mean()), 2)
        from ..io import write_json

        write_json(out / RUN_SUMMARY, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0
