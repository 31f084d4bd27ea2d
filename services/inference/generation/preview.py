"""Fast previews: latents mapped to RGB by a linear approximation, with no VAE decode.

Each latent channel contributes a fixed amount to each colour; the factors were fitted by
least squares between latents and their decoded images (one set for the SD-1/SD-2 latent
space, one for SDXL's). The preview is 1/8 of the output size, one pixel per latent.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SD_BIAS = (0.0, 0.0, 0.0)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def latents_to_preview(latents: torch.Tensor, *, sdxl: bool) -> Image.Image:
    """An RGB image, one pixel per latent, of the first latents in a [N, 4, h, w] batch."""
    factors, bias = (_SDXL_FACTORS, _SDXL_BIAS) if sdxl else (_SD_FACTORS, _SD_BIAS)
    sample = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", sample, torch.tensor(factors)) + torch.tensor(bias)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
