"""Whole operations composed from the building blocks, and the checks their requests get.

`text_to_image` is encode_prompt, create_noise, denoise_latents and decode_latents in a
row; `image_to_image` puts encode_image in front and runs only the strength's share of
the schedule. Nothing here is special to the whole operations, which is what makes a
node graph of the same blocks give the same pixels.

The checks run when a request arrives, before any model is loaded; each names the
request field at fault (e.g. `text_to_image.width`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from services.common.errors import InvalidArgumentError
from services.inference.generation.conditioning import TextEncoder, encode_prompt
from services.inference.generation.denoise import Sampling, StepHooks, denoise_latents
from services.inference.generation.images import MAX_SIDE
from services.inference.generation.noise import MAX_SEED, create_noise
from services.inference.generation.schedulers import scheduler_spec
from services.inference.generation.step_range import (
    StepRange,
    check_steps,
    denoising_range,
    strength_range,
)
from services.inference.generation.vae import decode_latents, encode_image, vae_scale_factor

SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class DiffusionModel:
    """The loaded parts of a main model that a generation uses."""

    unet: Any
    vae: Any
    text_encoders: Sequence[TextEncoder]
    scheduler_config: Mapping[str, Any]

    def native_size(self) -> tuple[int, int]:
        """(height, width) the UNet was trained at: 512x512 for SD-1.5, 1024 for SDXL."""
        side = self.unet.config.sample_size * vae_scale_factor(self.vae)
        return side, side


@dataclass(frozen=True)
class _ImageParams:
    """What TextToImage and ImageToImage share."""

    positive_prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    scheduler: str
    seed: int


@dataclass(frozen=True)
class TextToImageParams(_ImageParams):
    """A text-to-image request; width and height 0 mean the model's native size."""

    def check(self, field: str = "text_to_image") -> StepRange:
        """Raise for a bad field; the steps that will run."""
        check_size(self.width, self.height, field, allow_native=True)
        check_sampling(self.steps, self.cfg_scale, self.scheduler, field)
        check_seed(self.seed, f"{field}.seed")
        return StepRange(steps=self.steps, first=0, stop=self.steps)


@dataclass(frozen=True, kw_only=True)
class ImageToImageParams(_ImageParams):
    """An image-to-image request; width and height 0 mean the initial image's size."""

    init_image: Image.Image
    strength: float

    def check(self, field: str = "image_to_image") -> StepRange:
        """Raise for a bad field; the steps that will run (floor(steps x strength))."""
        check_size(self.width, self.height, field, allow_native=True)
        if (self.width, self.height) == (0, 0):
            width, height = self.init_image.size
            if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
                raise InvalidArgumentError(
                    f"the initial image is {width}x{height}; without width and height its "
                    f"sides must be multiples of {SIZE_MULTIPLE}",
                    field=f"{field}.init_image_png",
                )
        check_sampling(self.steps, self.cfg_scale, self.scheduler, field)
        check_seed(self.seed, f"{field}.seed")
        return strength_range(self.steps, self.strength, field=f"{field}.strength")

    def size(self) -> tuple[int, int]:
        """(height, width) of the output."""
        if (self.width, self.height) == (0, 0):
            return self.init_image.height, self.init_image.width
        return self.height, self.width


@dataclass(frozen=True)
class GeneratedImage:
    """An image result and the seed of its noise."""

    image: Image.Image
    seed: int


def check_size(width: int, height: int, field: str, *, allow_native: bool) -> None:
    """Sides are positive multiples of 8 up to 8192; with `allow_native`, both may be 0."""
    if allow_native and (width, height) == (0, 0):
        return
    for name, value in (("width", width), ("height", height)):
        if not 0 < value <= MAX_SIDE or value % SIZE_MULTIPLE:
            raise InvalidArgumentError(
                f"{name} must be a positive multiple of {SIZE_MULTIPLE} up to {MAX_SIDE}"
                + (" (or 0 together with the other side)" if allow_native else "")
                + f", got {value}",
                field=f"{field}.{name}",
            )


def check_sampling(steps: int, cfg_scale: float, scheduler: str, field: str) -> None:
    """Steps 1 to 1000 (and within the scheduler's own limit), guidance at least 1, a
    known scheduler."""
    spec = scheduler_spec(scheduler, f"{field}.scheduler")
    check_steps(steps, f"{field}.steps")
    if spec.max_steps is not None and steps > spec.max_steps:
        raise InvalidArgumentError(
            f"the {spec.name} scheduler runs at most {spec.max_steps} steps, got {steps}",
            field=f"{field}.steps",
        )
    if not (math.isfinite(cfg_scale) and cfg_scale >= 1):
        raise InvalidArgumentError(
            f"cfg_scale must be at least 1, got {cfg_scale}", field=f"{field}.cfg_scale"
        )


def check_seed(seed: int, field: str) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise InvalidArgumentError(f"seed must be in [0, 2^64), got {seed}", field=field)


def check_denoise_range(
    steps: int, start: float, end: float, *, has_latents: bool, field: str
) -> StepRange:
    """The steps a DenoiseLatents runs; a range not starting at 0 needs start latents."""
    step_range = denoising_range(
        steps,
        start,
        end,
        start_field=f"{field}.denoising_start",
        end_field=f"{field}.denoising_end",
    )
    if not has_latents and not step_range.starts_from_noise:
        raise InvalidArgumentError(
            "denoising_start must be 0 without latents to start from",
            field=f"{field}.denoising_start",
        )
    return step_range


def text_to_image(
    model: DiffusionModel, params: TextToImageParams, hooks: StepHooks | None = None
) -> GeneratedImage:
    """An image from a prompt, starting from the seed's noise."""
    step_range = params.check()
    size = (params.height, params.width) if params.width else model.native_size()
    return _generate(model, params, step_range, size, None, hooks)


def image_to_image(
    model: DiffusionModel, params: ImageToImageParams, hooks: StepHooks | None = None
) -> GeneratedImage:
    """An image from a prompt and an initial image noised to the strength's step."""
    step_range = params.check()
    height, width = params.size()
    init_image = params.init_image
    if init_image.size != (width, height):
        init_image = init_image.resize((width, height), Image.Resampling.LANCZOS)
    return _generate(model, params, step_range, (height, width), init_image, hooks)


def _generate(
    model: DiffusionModel,
    params: _ImageParams,
    step_range: StepRange,
    size: tuple[int, int],
    init_image: Image.Image | None,
    hooks: StepHooks | None,
) -> GeneratedImage:
    """The blocks in a row: prompts encoded, the initial image (if any) encoded, the seed's
    noise, the steps of `step_range` denoised, the latents decoded at `size` (height,
    width)."""
    height, width = size
    factor = vae_scale_factor(model.vae)
    sampling = Sampling(params.scheduler, params.cfg_scale)
    positive = encode_prompt(model.text_encoders, params.positive_prompt)
    negative = (
        encode_prompt(model.text_encoders, params.negative_prompt) if sampling.guided else None
    )
    init_latents = encode_image(model.vae, init_image) if init_image is not None else None
    noise = create_noise(params.seed, height // factor, width // factor)
    latents = denoise_latents(
        model.unet,
        model.scheduler_config,
        positive=positive,
        negative=negative,
        noise=noise,
        step_range=step_range,
        sampling=sampling,
        latents=init_latents,
        image_size=size,
        hooks=hooks,
    )
    return GeneratedImage(decode_latents(model.vae, latents), params.seed)
