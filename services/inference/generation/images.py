"""Images at the edge of the denoising work: PNG bytes in and out, and the conversions
between PIL images and the tensors the VAE and upscalers take."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidArgumentError

MAX_SIDE = 8192
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Images are transient here (a client or the invoker keeps them), so encoding speed
# matters more than size: level 1 is several times faster than the default 6 and
# costs little size on photographic content.
PNG_COMPRESS_LEVEL = 1


def decode_png(data: bytes, field: str) -> Image.Image:
    """The RGB image in PNG `data`; anything else, or a side over 8192 pixels, is
    INVALID_ARGUMENT naming `field`. An alpha channel is dropped."""
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidArgumentError("not a PNG image", field=field, reason="INVALID_IMAGE")
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        if max(image.size) > MAX_SIDE:
            raise InvalidArgumentError(
                f"image is {image.width}x{image.height}; sides may be at most {MAX_SIDE}",
                field=field,
                reason="INVALID_IMAGE",
            )
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidArgumentError(
            f"not a readable PNG image: {error}", field=field, reason="INVALID_IMAGE"
        ) from error
    return image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """[1, 3, height, width] float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """The first image of a [N, 3, height, width] tensor with values in [0, 1], rounded to
    8 bits the way diffusers' image processor does."""
    array = tensor[0].detach().clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))
