"""Shared fixtures: tiny synthetic data and models (no ../shared needed), and the real-data switch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sinf_core.data import Hierarchy, ImageDataset
from sinf_core.models.resnet_cifar import BasicBlock, Bottleneck, CifarResNet
from sinf_core.models.vgg_cifar import CifarVGG

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def real_data_dir() -> Path | None:
    for cand in (os.environ.get("SINF_DATA_DIR"), SHARED / "data"):
        if cand and (Path(cand) / "cifar-100-python" / "meta").is_file():
            return Path(cand)
    return None


def real_weights_dir() -> Path | None:
    for cand in (os.environ.get("SINF_WEIGHTS_DIR"), SHARED / "weights"):
        if cand and (Path(cand) / "cifar100_resnet56-f2eff4c8.pt").is_file():
            return Path(cand)
    return None


def pytest_collection_modifyitems(config, items):
    if real_data_dir() and real_weights_dir():
        return
    skip = pytest.mark.skip(reason="needs ../shared (CIFAR-100 + weights); set SINF_DATA_DIR and SINF_WEIGHTS_DIR")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_env(tmp_path_factory):
    """Environment for real-data tests: shared data/weights, and a private torch hub cache."""
    data, weights = real_data_dir(), real_weights_dir()
    home = tmp_path_factory.mktemp("torchhome")
    old = {k: os.environ.get(k) for k in ("SINF_DATA_DIR", "SINF_WEIGHTS_DIR", "TORCH_HOME")}
    os.environ.update(SINF_DATA_DIR=str(data), SINF_WEIGHTS_DIR=str(weights), TORCH_HOME=str(home))
    yield {"data": data, "weights": weights, "torch_home": home}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``sinf ARGV`` in-process: (exit code, stdout, stderr); argparse's SystemExit becomes the code."""
    import contextlib
    import io

    from sinf_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def write_colour_folder(root: Path, clusters: dict[str, list[str]], n: tuple[int, int] = (16, 10), size: int = 32,
                        spread: float = 60.0, step: float = 30.0) -> Path:
    """An image-folder data set at ``root``: ``{train,test}/<class>/*.png`` (``n`` images per class in each
    split, ``size`` x ``size`` noise around a per-class grey level ``step * i``) plus ``hierarchy.json``."""
    import json

    from PIL import Image

    g = torch.Generator().manual_seed(0)
    classes = [c for cs in clusters.values() for c in cs]
    for split, count in zip(("train", "test"), n):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for j in range(count):
                px = (torch.rand(size, size, 3, generator=g) * spread + step * i).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(root / split / c / f"{j}.png")
    (root / "hierarchy.json").write_text(json.dumps({"clusters": clusters}))
    return root


def make_tiny_dataset(n_per_class: int = 20, seed: int = 0, size: int = 32) -> ImageDataset:
    """6 classes in 3 clusters of 2; each class has its own colour/stripe pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    classes = [f"c{i}" for i in range(6)]
    hier = Hierarchy(tuple(classes), ("k0", "k1", "k2"), (0, 0, 1, 1, 2, 2))
    imgs, labels = [], []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for c in range(6):
        base = torch.zeros(3, size, size)
        base[c % 3] += 120.0
        base += 60.0 * ((xx + c * yy) % (c + 2) == 0).float()
        for _ in range(n_per_class):
            img = base + 40.0 * torch.rand(3, size, size, generator=g)
            imgs.append(img.clamp(0, 255).to(torch.uint8))
            labels.append(c)
    return ImageDataset("tiny", torch.stack(imgs), torch.as_tensor(labels), hier, (0.3, 0.3, 0.3), (0.25, 0.25, 0.25))


def _randomise_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def make_tiny_resnet(seed: int = 0, num_classes: int = 6) -> CifarResNet:
    torch.manual_seed(seed)
    return _randomise_bn(CifarResNet(BasicBlock, [2, 2, 2], [4, 8, 8], num_classes), seed)


def make_tiny_bottleneck(seed: int = 0, num_classes: int = 6) -> CifarResNet:
    torch.manual_seed(seed)
    return _randomise_bn(CifarResNet(Bottleneck, [1, 2], [4, 8], num_classes), seed)


def make_tiny_vgg(seed: int = 0, num_classes: int = 6) -> CifarVGG:
    torch.manual_seed(seed)
    cfg = [4, "M", 8, 8, "M", 8, "M", 8, "M", 8, "M"]
    return _randomise_bn(CifarVGG(cfg, num_classes, width=1.0), seed)


@pytest.fixture(scope="module")
def one_thread_per_module():
    """torch on one intra-op thread for a whole test module: tiny models gain nothing from threads, and on
    a busy machine OpenMP spinning makes them up to 20x slower. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread_per_module")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    return make_tiny_dataset()


@pytest.fixture(params=["resnet", "bottleneck", "vgg"])
def tiny_model(request):
    return {"resnet": make_tiny_resnet, "bottleneck": make_tiny_bottleneck, "vgg": make_tiny_vgg}[request.param]()
