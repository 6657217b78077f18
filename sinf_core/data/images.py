"""Decoding one user image of any mode or size into the model's input, with clear errors."""

from __future__ import annotations

import io

import numpy as np
import torch

from ..errors import SinfError

MAX_PIXELS = 80_000_000  # refuse decompression bombs beyond ~80 MP


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
                raise SinfError(f"image is {w}x{h}: too large (at most {MAX_PIXELS // 1_000_000} megapixels)")
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
    except UnidentifiedImageError as exc:
        raise SinfError("not an image this app can read (PNG, JPEG, GIF, BMP, WebP)") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SinfError(f"the image could not be decoded (truncated or corrupt): {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
