"""Decoding one user image of any mode or size into the model's input, with clear errors."""

from __future__ import annotations

import io
import re

import numpy as np
import torch

from ..errors import SinfError

# The one upload / image-folder pixel limit (a guard against decompression bombs). Pillow refuses images
# past its own, higher limit before SINF sees their size; both cases give ``too_large_message``, which
# states this limit and no other.
MAX_PIXELS = 80_000_000


def too_large_message(pixels: int, width: int | None = None, height: int | None = None) -> str:
    """The one way SINF says an image has too many pixels (with its size when known)."""
    size = f" ({width}x{height})" if width is not None and height is not None else ""
    return f"image is {pixels / 1e6:.1f} MP{size}: too large (the limit is {MAX_PIXELS / 1e6:g} MP)"


def load_image_rgb(data: bytes, size: int) -> torch.Tensor:
    """Decode PNG/JPEG/GIF/... bytes to uint8 [3, size, size] RGB.

    Grayscale, palette and RGBA images are converted to RGB (alpha composited on white); animated
    images use their first frame; the image is resized (bilinear, antialiased) to size x size.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise SinfError("the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise SinfError(too_large_message(w * h, w, h))
            if w < 1 or h < 1:
                raise SinfError("image has no pixels")
            im.seek(0)
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            im = im.convert("RGB")
            im.load()
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            arr = np.asarray(im, dtype=np.uint8)
    except SinfError:
        raise
    except Image.DecompressionBombError as exc:  # past Pillow's own limit: it says how many pixels
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else 2 * int(Image.MAX_IMAGE_PIXELS or MAX_PIXELS)
        raise SinfError(too_large_message(pixels)) from exc
    except UnidentifiedImageError as exc:
        raise SinfError("not an image this app can read (PNG, JPEG, GIF, BMP, WebP)") from exc
    except (OSError, ValueError) as exc:
        raise SinfError(f"the image could not be decoded (truncated or corrupt): {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
