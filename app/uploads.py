"""An uploaded image decoded into the model's input, with notes on what was changed."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch


@dataclass
class Upload:
    """A decoded upload: ``image`` uint8 [3, S, S] for the model, ``original`` (w, h, mode, frames)."""

    image: torch.Tensor
    width: int
    height: int
    mode: str
    frames: int
    notes: list[str] = field(default_factory=list)


def decode_upload(data: bytes, size: int) -> Upload:
    """Any upload -> the model's input; ``SinfError`` with a clear message for what cannot be used."""
    from PIL import Image

    from sinf_core.data.images import load_image_rgb

    img = load_image_rgb(data, size)  # raises SinfError for non-images, truncated files, giant images
    with Image.open(io.BytesIO(data)) as im:
        w, h, mode = im.size[0], im.size[1], im.mode
        frames = int(getattr(im, "n_frames", 1) or 1)
    notes = []
    if frames > 1:
        notes.append(f"animated image with {frames} frames: the first frame is used")
    if mode not in ("RGB",):
        notes.append(f"colour mode {mode} converted to RGB" + (" (transparency composited on white)"
                                                              if "A" in mode or mode == "P" else ""))
    if w < 8 or h < 8:
        notes.append(f"only {w}x{h} pixels: upscaled to {size}x{size}, so the prediction means little")
    elif (w, h) != (size, size):
        notes.append(f"resized from {w}x{h} to {size}x{size} (the model's input)")
    return Upload(img, w, h, mode, frames, notes)
