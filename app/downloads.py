"""Downloads on first use (CIFAR-100, a model's release weights), each with a visible progress bar."""

from __future__ import annotations

import streamlit as st
import torch

from sinf_core.errors import SinfError

from .progress import wait_with_bar

CIFAR100_BYTES = 169_001_437  # size of the official archive, for the download bar


def ensure_cifar100(data_dir: str | None) -> None:
    """Download CIFAR-100 with a visible progress bar when it is not on disk yet."""
    from sinf_core.data.cifar import download_cifar100, find_cifar100_folder
    from sinf_core.data.registry import resolve_data_dir

    root = resolve_data_dir(data_dir)
    if find_cifar100_folder(root) is not None:
        return
    archive = root / "cifar-100-python.tar.gz"
    with st.status("Downloading CIFAR-100 (about 170 MB, once) ...", expanded=True) as status:
        try:
            wait_with_bar(lambda: download_cifar100(root),
                          lambda: archive.stat().st_size if archive.exists() else 0, CIFAR100_BYTES,
                          "CIFAR-100 archive")
        except SinfError:
            raise
        except Exception as exc:
            status.update(label="CIFAR-100 download failed", state="error")
            raise SinfError(
                f"CIFAR-100 is not in {root} and could not be downloaded ({exc.__class__.__name__}: {exc}). "
                "Offline, set SINF_DATA_DIR to a folder holding cifar-100-python/."
            ) from exc
        status.update(label="CIFAR-100 ready", state="complete", expanded=False)


def ensure_weights(model: str) -> None:
    """Download the model's release weights with a visible progress bar when torch.hub does not have them."""
    from sinf_core.models.registry import get_entry, hub_checkpoint_dir, seed_hub_cache

    url = get_entry(model).weights.url  # a spec (torchvision:NAME, ...) has none: its weights are a --checkpoint
    if not url:
        return
    seed_hub_cache()
    dest = hub_checkpoint_dir()
    fname = url.rsplit("/", 1)[1]
    if (dest / fname).is_file():
        return

    def partial_size() -> int:
        parts = list(dest.glob(f"{fname}.*.partial")) if dest.is_dir() else []
        return max((p.stat().st_size for p in parts), default=0)

    def fetch() -> None:
        dest.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest / fname), progress=False)

    with st.status(f"Downloading the weights of {model} (once) ...", expanded=True) as status:
        try:
            wait_with_bar(fetch, partial_size, 4_000_000 if "resnet" in model else 80_000_000, fname)
        except Exception as exc:
            status.update(label="weights download failed", state="error")
            raise SinfError(
                f"cannot download {fname} ({exc.__class__.__name__}: {exc}). Offline, set SINF_WEIGHTS_DIR to a "
                f"folder holding it or place it in {dest}."
            ) from exc
        status.update(label="weights ready", state="complete", expanded=False)
