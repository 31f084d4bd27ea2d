"""Seeded noise, made on the CPU in float32 so that a seed means the same noise everywhere.

One CPU generator per seed drives a whole generation, as a diffusers pipeline given a
CPU generator does: it draws the initial noise first, then the stochastic schedulers
(euler_a, ddpm, lcm, dpmpp_2m_sde) draw their per-step noise from where it stopped. The
seed travels with the noise tensor, so a DenoiseLatents that takes the noise by name
re-creates exactly that generator and gets the same per-step noise as TextToImage.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

LATENT_CHANNELS = 4
MAX_SEED = 2**64 - 1


def random_seed() -> int:
    """A seed for a request that gave none: uniform in [0, 2^32)."""
    return secrets.randbelow(2**32)


@dataclass(frozen=True)
class Noise:
    """Initial noise and the seed it was drawn from."""

    latents: torch.Tensor
    seed: int

    def step_generator(self) -> torch.Generator:
        """The seed's CPU generator, advanced past the draw of this noise."""
        generator = torch.Generator("cpu").manual_seed(self.seed)
        torch.randn(self.latents.shape, generator=generator, dtype=torch.float32)
        return generator


def create_noise(seed: int, latent_height: int, latent_width: int) -> Noise:
    """Gaussian noise of shape [1, 4, latent_height, latent_width], float32, on the CPU."""
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, LATENT_CHANNELS, latent_height, latent_width)
    return Noise(torch.randn(shape, generator=generator, dtype=torch.float32), seed)
