"""Thumbnails: small PNGs for galleries, made once when an image is stored."""

from __future__ import annotations

from PIL import Image

from services.invoker.images.png_metadata import encode_png

THUMBNAIL_SIDE = 256
"""Longest side of a thumbnail in pixels; smaller images keep their size."""

_RESAMPLED_MODES = ("RGB", "RGBA", "L", "LA")


def make_thumbnail(image: Image.Image) -> bytes:
    """PNG bytes of `image` scaled so that its longer side is at most THUMBNAIL_SIDE,
    aspect ratio kept (palette and high-bit-depth images are converted so they scale
    smoothly)."""
    small = image.copy() if image.mode in _RESAMPLED_MODES else image.convert("RGBA")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return encode_png(small)
