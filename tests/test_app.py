"""SINF Studio under Streamlit's AppTest: every page renders without an exception, shows its key widgets,
and moving a slider / submitting a form changes the numbers shown.

The fast tests run on a tiny synthetic set-up (no ../shared): a 6-class image folder (3 clusters of 2), a
tiny CIFAR ResNet trained on it for a few seconds and registered under ``tiny_resnet_app``, and a bundle
holding a router and exit heads fitted on it. The realdata test opens the default ResNet-56 / CIFAR-100.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_tiny_dataset, make_tiny_resnet

TINY = "tiny_resnet_app"
APP = str(REPO / "app" / "streamlit_app.py")
PAGES = REPO / "app" / "pages"


# ------------------------------------------------------------------------------------ the tiny set-up
def write_image_folder(root: Path) -> Path:
    """root/{train,test}/c0..c5/*.png plus hierarchy.json (clusters k0, k1, k2 of two classes each)."""
    from PIL import Image

    for split, n, seed in (("train", 40, 0), ("test", 20, 1)):
        ds = make_tiny_dataset(n_per_class=n, seed=seed)
        for i, (img, y) in enumerate(zip(ds.images, ds.labels.tolist())):
            d = root / split / f"c{y}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
    (root / "hierarchy.json").write_text(json.dumps({"clusters": {"k0": ["c0", "c1"], "k1": ["c2", "c3"],
                                                                  "k2": ["c4", "c5"]}}))
    return root


def tiny_build_settings():
    from sinf_core.pipeline import BuildSettings

    return BuildSettings(
        methods=("dcs", "l1", "random"), r_M=0.05, r_L_grid=(0.3, 0.6), q=25.0, k=3,
        route_target=0.5, taps=("layer1.1", "layer2.0", "layer2.1"),
        router={"epochs": 5, "batch_size": 54, "bf16": False, "channels_last": False, "lr": 2e-2},
        stats_feature_sample=120, batch_size=64,
    )


def register_tiny_model(data_dir: str | Path) -> None:
    """Register ``tiny_resnet_app`` (the conftest tiny ResNet, 6 classes) with its image-folder data."""
    from sinf_core.models.registry import MODELS, ModelEntry

    MODELS[TINY] = ModelEntry(TINY, lambda: make_tiny_resnet(), dataset=str(data_dir), protocol="heldout",
                              description="tiny CIFAR ResNet for the app tests")


def build_tiny_env(root: Path) -> dict[str, str]:
    """Data, trained weights and a bundle (router + exit heads) under ``root``; returns the app's env."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads; spare a shared machine
    try:
        return _build_tiny_env(root)
    finally:
        torch.set_num_threads(threads)


def _build_tiny_env(root: Path) -> dict[str, str]:
    from safetensors.torch import save_file

    from sinf_core.experiment import open_experiment
    from sinf_core.pipeline import BuildSettings, build_bundle
    from sinf_core.train import TrainConfig, train

    data_dir = write_image_folder(root / "tinydata")
    register_tiny_model(data_dir)
    exp = open_experiment(TINY, device="cpu", checkpoint=_untrained(root))
    model = exp.model.train()
    cfg = TrainConfig(model=TINY, epochs=5, batch_size=36, lr=0.1, bf16=False, channels_last=False,
                      label_smoothing=0.0, warmup_epochs=0.5, checkpoint_every=10_000)
    train(model, exp.fit_data(), cfg, root / "train")
    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(weights))
    exp = open_experiment(TINY, device="cpu", checkpoint=weights)
    build_bundle(exp, root / "bundle", tiny_build_settings())
    return {"SINF_APP_MODEL": TINY, "SINF_APP_CHECKPOINT": str(weights), "SINF_APP_BUNDLE": str(root / "bundle"),
            "SINF_CACHE_DIR": str(root / "cache"), "SINF_TINY_DATA": str(data_dir)}


def _untrained(root: Path) -> Path:
    from safetensors.torch import save_file

    p = root / "init.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_resnet().state_dict().items()}, str(p))
    return p


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    env = build_tiny_env(root)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def open_page(page: str, timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if page != "home":
        at.switch_page(str(PAGES / f"{page}.py"))
        at.run()
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
