"""Between pixels and latents with a VAE.

EncodeImage (and image-to-image's own encode) takes the mean of the latent distribution,
not a sample: the same image always gives the same latents without a seed, and the
encoders' variance is so small that a sample would differ from the mean by less than the
8-bit rounding of the decoded image.

Half precision overflows in some VAEs (SDXL's original one most of all). A result that is
not finite is computed again in float32; the VAE is cast back afterwards, which restores
its half-precision weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from services.inference.generation.images import image_to_tensor, tensor_to_image


def vae_scale_factor(vae: Any) -> int:
    """How many pixels one latent spans along each side (8 for every SD-family VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@contextmanager
def _float32(vae: Any) -> Iterator[None]:
    original = vae.dtype
    vae.to(torch.float32)
    try:
        yield
    finally:
        vae.to(original)


def _finite_or_float32(vae: Any, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    result = run()
    if vae.dtype == torch.float32 or bool(torch.isfinite(result).all()):
        return result
    with _float32(vae):
        return run()


@torch.inference_mode()
def decode_latents(vae: Any, latents: torch.Tensor) -> Image.Image:
    """The image the first latents of a batch decode to."""
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def run() -> torch.Tensor:
        sample = latents.to(vae.device, vae.dtype) / scaling + shift
        return vae.decode(sample, return_dict=False)[0]

    decoded = _finite_or_float32(vae, run)
    return tensor_to_image(decoded / 2 + 0.5)


@torch.inference_mode()
def encode_image(vae: Any, image: Image.Image) -> torch.Tensor:
    """Latents [1, 4, height/f, width/f] of an RGB image: the distribution's mean, scaled
    into the UNet's latent space."""
    pixels = image_to_tensor(image) * 2 - 1
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def run() -> torch.Tensor:
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return (posterior.mode() - shift) * scaling

    return _finite_or_float32(vae, run)
