"""Upscaling with a super-resolution model (the ESRGAN family).

The upscaler is whatever the loader made of the model: a spandrel model descriptor or a
plain `torch.nn.Module`; both take an image tensor [1, 3, h, w] in [0, 1] and return one
`factor` times larger. The native factor is read from the output, so no architecture
needs describing here; another requested factor resizes that output with Lanczos.

Neither the model's own output nor the result may have a side over `MAX_SIDE`, the limit of
every image the service takes: an x4 model on an 8192-pixel image would otherwise allocate
gigabytes before anything could refuse it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from services.common.errors import InvalidArgumentError
from services.inference.generation.images import MAX_SIDE, image_to_tensor, tensor_to_image

MAX_SCALE = 8.0


def check_scale(scale: float | None, field: str) -> None:
    if scale is not None and not (math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise InvalidArgumentError(
            f"scale must be greater than 0 and at most {MAX_SCALE:g}, got {scale}", field=field
        )


def check_output_size(size: tuple[int, int], factor: float, field: str) -> None:
    """INVALID_ARGUMENT (OUTPUT_TOO_LARGE, naming `field`) when `size` times `factor` has a
    side over MAX_SIDE."""
    width, height = (max(1, round(side * factor)) for side in size)
    if max(width, height) > MAX_SIDE:
        raise InvalidArgumentError(
            f"upscaling {size[0]}x{size[1]} by {factor:g} gives {width}x{height}; "
            f"sides may be at most {MAX_SIDE}",
            field=field,
            reason="OUTPUT_TOO_LARGE",
        )


def _placement(upscaler: Any) -> tuple[torch.device, torch.dtype]:
    device, dtype = getattr(upscaler, "device", None), getattr(upscaler, "dtype", None)
    if isinstance(device, torch.device) and isinstance(dtype, torch.dtype):
        return device, dtype
    parameter = next(iter(upscaler.parameters()))
    return parameter.device, parameter.dtype


@torch.inference_mode()
def upscale(
    upscaler: Callable[[torch.Tensor], torch.Tensor], image: Image.Image, scale: float | None
) -> Image.Image:
    """`image` enlarged by the upscaler, then resized to `scale` times its size if given.
    A model that states its factor (an integer `scale` attribute) is checked against
    MAX_SIDE before it runs."""
    native = getattr(upscaler, "scale", None)
    if isinstance(native, int):
        check_output_size(image.size, native, "image_png")
    device, dtype = _placement(upscaler)
    output = upscaler(image_to_tensor(image).to(device, dtype))
    result = tensor_to_image(output.float())
    if scale is None:
        return result
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if result.size == size:
        return result
    return result.resize(size, Image.Resampling.LANCZOS)
