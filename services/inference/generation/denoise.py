"""The denoising loop: a UNet and a scheduler walk latents down a range of the schedule.

It does what a diffusers Stable Diffusion pipeline does between encoding the prompt and
decoding the latents (same scheduler calls, same classifier-free guidance, the same CPU
generator for stochastic schedulers), so a whole generation here gives the pixels that
pipeline gives. On top of that it runs only part of a schedule (`step_range`), reports
each finished step, and stops before the next UNet pass once asked to cancel.

A step is one scheduler step; second-order schedulers (heun) take two UNet passes per
step, and PNDM one extra pass at the start. Steps are counted as diffusers' own progress
bar counts them, so `total_steps` is exactly the number of progress reports.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from services.common.errors import InvalidArgumentError, OperationCancelledError
from services.inference.events import NO_CONTEXT, EventContext
from services.inference.generation.conditioning import Conditioning
from services.inference.generation.noise import Noise
from services.inference.generation.preview import latents_to_preview
from services.inference.generation.schedulers import make_scheduler
from services.inference.generation.step_range import StepRange

# SDXL refiner micro-conditioning: the aesthetic scores diffusers uses by default.
_AESTHETIC_SCORE, _NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


@dataclass(frozen=True)
class Progress:
    """A finished denoising step: `step` of `total_steps`, and a preview when asked."""

    step: int
    total_steps: int
    preview: Image.Image | None = None


@dataclass(frozen=True)
class StepHooks:
    """What the caller hears and says while a denoise runs, and whom the work is for
    (`context`: model loads and stored tensors of the work carry it; the loop ignores it)."""

    on_progress: Callable[[Progress], None] | None = None
    want_preview: bool = False
    should_cancel: Callable[[], bool] | None = None
    context: EventContext = NO_CONTEXT


class DenoiseCancelled(OperationCancelledError):
    """The caller asked to stop; `steps_done` steps had finished."""

    def __init__(self, steps_done: int) -> None:
        super().__init__(f"cancelled after {steps_done} denoising steps")
        self.steps_done = steps_done


@dataclass(frozen=True)
class Sampling:
    """How to walk the schedule: the scheduler by name and the guidance scale."""

    scheduler: str
    cfg_scale: float

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs only above 1 (at 1 it would change nothing)."""
        return self.cfg_scale > 1


def is_sdxl(unet: Any) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def check_conditioning(unet: Any, conditioning: Conditioning, field: str) -> None:
    """Conditioning from a model of another base is INVALID_ARGUMENT naming `field`."""
    width = unet.config.cross_attention_dim
    if conditioning.embeds.shape[-1] != width or (is_sdxl(unet) and conditioning.pooled is None):
        raise InvalidArgumentError(
            f"conditioning of width {conditioning.embeds.shape[-1]} does not fit this model "
            f"(width {width}); encode the prompt with the same model",
            field=field,
            reason="CONDITIONING_MISMATCH",
        )


def _time_ids(unet: Any, pooled_width: int, size: tuple[int, int], positive: bool) -> list[float]:
    """SDXL's size and crop micro-conditioning (6 ids; the refiner's 5 end in a score)."""
    height, width = size
    ids_width = unet.config.projection_class_embeddings_input_dim - pooled_width
    if ids_width // unet.config.addition_time_embed_dim == 5:
        score = _AESTHETIC_SCORE if positive else _NEGATIVE_AESTHETIC_SCORE
        return [height, width, 0, 0, score]
    return [height, width, 0, 0, height, width]


def _unet_inputs(
    unet: Any,
    positive: Conditioning,
    negative: Conditioning | None,
    image_size: tuple[int, int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The cross-attention context, and SDXL's added conditioning, batched [neg, pos]."""
    both = [positive] if negative is None else [negative, positive]
    device = unet.device
    context = torch.cat([c.embeds.to(device, dtype) for c in both])
    if not is_sdxl(unet):
        return context, None
    pooled = torch.cat([c.pooled.to(device, dtype) for c in both if c.pooled is not None])
    width = pooled.shape[-1]
    ids = [_time_ids(unet, width, image_size, c is positive) for c in both]
    time_ids = torch.tensor(ids, dtype=dtype, device=device)
    return context, {"text_embeds": pooled, "time_ids": time_ids}


def _denoised(output: Any, fallback: torch.Tensor) -> torch.Tensor:
    """The scheduler's estimate of the clean latents, for previews."""
    for name in ("pred_original_sample", "denoised"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return fallback


@torch.inference_mode()
def denoise_latents(
    unet: Any,
    scheduler_config: Mapping[str, Any],
    *,
    positive: Conditioning,
    negative: Conditioning | None,
    noise: Noise,
    step_range: StepRange,
    sampling: Sampling,
    latents: torch.Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    hooks: StepHooks | None = None,
) -> torch.Tensor:
    """Latents denoised over `step_range`, on the UNet's device.

    Without `latents` the walk starts from the noise alone (the range must then start at
    0); with them, they are first noised to the range's first step, as image-to-image
    does. `negative` is needed only when `sampling.guided`. `image_size` (height, width
    in pixels) feeds SDXL's micro-conditioning; it defaults to 8 pixels per latent.
    """
    hooks = hooks or StepHooks()
    check_conditioning(unet, positive, "positive_conditioning")
    if sampling.guided:
        if negative is None:
            raise ValueError("guidance needs the negative conditioning")
        check_conditioning(unet, negative, "negative_conditioning")
    device, dtype = unet.device, unet.dtype
    scheduler = make_scheduler(sampling.scheduler, scheduler_config)
    scheduler.set_timesteps(step_range.steps, device=device)
    order = scheduler.order
    timesteps = scheduler.timesteps
    begin = step_range.first * order
    end = len(timesteps) if step_range.stop == step_range.steps else step_range.stop * order
    timesteps = timesteps[begin:end]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)

    start = noise.latents.to(device, dtype)
    if latents is None:
        if not step_range.starts_from_noise:
            raise ValueError("a range that does not start at 0 needs latents to start from")
        sample = start * scheduler.init_noise_sigma
    else:
        sample = scheduler.add_noise(latents.to(device, dtype), start, timesteps[:1])

    size = image_size or (sample.shape[-2] * 8, sample.shape[-1] * 8)
    context, added = _unet_inputs(
        unet, positive, negative if sampling.guided else None, size, dtype
    )
    step_kwargs: dict[str, Any] = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = noise.step_generator()

    total = step_range.count
    warmup = len(timesteps) - total * order
    done = 0
    for index, timestep in enumerate(timesteps):
        if hooks.should_cancel is not None and hooks.should_cancel():
            raise DenoiseCancelled(done)
        model_input = torch.cat([sample] * 2) if sampling.guided else sample
        model_input = scheduler.scale_model_input(model_input, timestep)
        prediction = unet(
            model_input,
            timestep,
            encoder_hidden_states=context,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        if sampling.guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + sampling.cfg_scale * (conditional - unconditional)
        output = scheduler.step(prediction, timestep, sample, **step_kwargs)
        sample = output.prev_sample
        if index == len(timesteps) - 1 or (index + 1 > warmup and (index + 1) % order == 0):
            done += 1
            if hooks.on_progress is not None:
                preview = None
                if hooks.want_preview:
                    preview = latents_to_preview(_denoised(output, sample), sdxl=is_sdxl(unet))
                hooks.on_progress(Progress(done, total, preview))
    return sample
