"""Noise schedulers by name, each built from the model's own scheduler configuration.

A model ships the scheduler it was trained with (beta schedule, prediction type, timestep
spacing); a name chooses the sampling algorithm on top of it. Each name sets every flag
that tells the algorithms apart (Karras sigmas, DPM-Solver variant, order), so a model
whose own scheduler has, say, Karras sigmas does not leak them into `euler`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgumentError

DEFAULT_SCHEDULER = "euler"

# Flags of the model's own scheduler that select an algorithm variant rather than describe
# the model; a name that does not set one gets the class default.
_VARIANT_FLAGS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "algorithm_type",
    "solver_order",
    "solver_type",
    "final_sigmas_type",
    "lower_order_final",
    "euler_at_final",
    "timestep_type",
    "skip_prk_steps",
)


@dataclass(frozen=True)
class SchedulerSpec:
    """One supported scheduler: its name, the diffusers class and the flags it sets."""

    name: str
    diffusers_class: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    """Most steps the algorithm can run (LCM samples from a 50-step grid)."""


_SPECS = (
    # Latents are not bounded like pixels: clipping the predicted sample (these classes'
    # default) would damage every Stable Diffusion image.
    SchedulerSpec(
        "ddim", "DDIMScheduler", "DDIM", {"clip_sample": False, "set_alpha_to_one": False}
    ),
    SchedulerSpec("ddpm", "DDPMScheduler", "DDPM (stochastic)", {"clip_sample": False}),
    SchedulerSpec("deis", "DEISMultistepScheduler", "DEIS multistep"),
    SchedulerSpec(
        "dpmpp_2m",
        "DPMSolverMultistepScheduler",
        "DPM-Solver++ 2M",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    SchedulerSpec(
        "dpmpp_2m_karras",
        "DPMSolverMultistepScheduler",
        "DPM-Solver++ 2M with Karras sigmas",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    SchedulerSpec(
        "dpmpp_2m_sde",
        "DPMSolverMultistepScheduler",
        "DPM-Solver++ 2M SDE (stochastic)",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    SchedulerSpec("euler", "EulerDiscreteScheduler", "Euler"),
    SchedulerSpec(
        "euler_karras",
        "EulerDiscreteScheduler",
        "Euler with Karras sigmas",
        {"use_karras_sigmas": True},
    ),
    SchedulerSpec("euler_a", "EulerAncestralDiscreteScheduler", "Euler ancestral (stochastic)"),
    SchedulerSpec("heun", "HeunDiscreteScheduler", "Heun (two UNet passes a step)"),
    SchedulerSpec(
        "heun_karras",
        "HeunDiscreteScheduler",
        "Heun with Karras sigmas (two UNet passes a step)",
        {"use_karras_sigmas": True},
    ),
    SchedulerSpec("k_lms", "LMSDiscreteScheduler", "Linear multistep (k-diffusion LMS)"),
    SchedulerSpec("lms", "LMSDiscreteScheduler", "Linear multistep, the same as k_lms"),
    SchedulerSpec(
        "lms_karras",
        "LMSDiscreteScheduler",
        "Linear multistep with Karras sigmas",
        {"use_karras_sigmas": True},
    ),
    SchedulerSpec(
        "lcm",
        "LCMScheduler",
        "Latent consistency (for LCM-distilled models and LoRAs; at most 50 steps)",
        max_steps=50,
    ),
    SchedulerSpec("pndm", "PNDMScheduler", "PNDM (PLMS)", {"skip_prk_steps": True}),
    SchedulerSpec("unipc", "UniPCMultistepScheduler", "UniPC multistep"),
    SchedulerSpec(
        "unipc_karras",
        "UniPCMultistepScheduler",
        "UniPC multistep with Karras sigmas",
        {"use_karras_sigmas": True},
    ),
)

SCHEDULERS: Mapping[str, SchedulerSpec] = {spec.name: spec for spec in _SPECS}


def scheduler_spec(name: str, field_name: str = "scheduler") -> SchedulerSpec:
    """The spec of `name`; an unknown name is INVALID_ARGUMENT naming `field_name`."""
    spec = SCHEDULERS.get(name)
    if spec is None:
        raise InvalidArgumentError(
            f"unknown scheduler {name!r}; ListSchedulers names the supported ones",
            field=field_name,
            reason="UNKNOWN_SCHEDULER",
            metadata={"scheduler": name},
        )
    return spec


def make_scheduler(name: str, model_config: Mapping[str, Any]) -> Any:
    """A fresh scheduler `name` configured from a model's scheduler config.

    Fresh each time: schedulers keep per-run state (step index, multistep history), so
    two generations never share one.
    """
    import diffusers

    spec = scheduler_spec(name)
    scheduler_class = getattr(diffusers, spec.diffusers_class)
    accepted = inspect.signature(scheduler_class.__init__).parameters
    config = {
        key: value
        for key, value in model_config.items()
        if key in accepted and key not in _VARIANT_FLAGS
    }
    config.update((key, value) for key, value in spec.options.items() if key in accepted)
    return scheduler_class(**config)
