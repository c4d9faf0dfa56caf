"""Decode one image file into a fixed-size uint8 RGB tensor, whatever its mode or size.

Every model in supersub consumes ``(3, size, size)`` uint8 tensors, so all the messy cases (palette,
alpha, 16-bit grayscale, 32-bit float, CMYK, odd sizes, broken files) are settled here, once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import SupersubError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Integer modes whose values span 0..65535 rather than 0..255; converting them with PIL clips at 255.
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def is_image_file(path: Path) -> bool:
    """True if ``path`` has an image extension (case-insensitive); decides by name only, never reads the file."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale to 8 bits (65535 -> 255, 257 -> 1) with rounding instead of clipping."""
    wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8)).convert("RGB")


def _float_to_rgb(im: Image.Image) -> Image.Image:
    """32-bit float: data within 0..1 (the usual float convention) is scaled to 0..255, anything else is
    clipped to 0..255. PIL's own conversion truncates, which turns a 0..1 image completely black."""
    values = np.nan_to_num(np.asarray(im, dtype=np.float64))
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)


def _alpha_to_rgb(im: Image.Image) -> Image.Image:
    """Composite onto black, so transparent regions are a constant instead of whatever RGB hides under them."""
    rgba = im.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an image of any PIL mode to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(im)
    if im.mode == "F":
        return _float_to_rgb(im)
    if _has_alpha(im):
        return _alpha_to_rgb(im)
    return im.convert("RGB")


def _failure_reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def load_image(path: Path, size: int) -> torch.Tensor:
    """Read ``path`` as a uint8 ``(3, size, size)`` tensor: RGB, resized (bilinear, antialiased, no crop).

    Truncated files are errors: ``.load()`` forces the full decode while PIL's LOAD_TRUNCATED_IMAGES
    stays False, so a half-downloaded JPEG never trains as a grey smear.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im).resize((size, size), Image.Resampling.BILINEAR)
    # PIL's format plugins raise many exception types on malformed files; all mean "unreadable".
    except Exception as e:  # noqa: BLE001
        raise SupersubError(f"{path}: cannot read image ({_failure_reason(e)})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
