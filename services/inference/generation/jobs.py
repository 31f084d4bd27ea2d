"""Generations as the queue keeps them, and the events they publish.

A generation is one operation run as a job: QUEUED -> RUNNING -> COMPLETED, ERROR or
CANCELLED (QUEUED may go straight to CANCELLED). Its events travel on the process's
event bus (`services.inference.events`) beside the model-load events, with the same
routing context.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from PIL import Image

from services.common.errors import EaselError
from services.inference.events import Event, EventContext


class GenerationStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {GenerationStatus.COMPLETED, GenerationStatus.ERROR, GenerationStatus.CANCELLED}
)


class OperationKind(StrEnum):
    TEXT_TO_IMAGE = "text_to_image"
    IMAGE_TO_IMAGE = "image_to_image"
    UPSCALE = "upscale"
    ENCODE_PROMPT = "encode_prompt"
    CREATE_NOISE = "create_noise"
    DENOISE_LATENTS = "denoise_latents"
    DECODE_LATENTS = "decode_latents"
    ENCODE_IMAGE = "encode_image"


@dataclass(frozen=True)
class Generation:
    """A generation's state at one moment. `result` is what the work returned (an image
    result or the TensorInfo of a stored tensor); `error` the domain error of a failure."""

    id: str
    operation_kind: OperationKind
    status: GenerationStatus
    context: EventContext
    create_time: float
    total_steps: int
    step: int = 0
    start_time: float | None = None
    end_time: float | None = None
    result: Any = None
    error: EaselError | None = None


@dataclass(frozen=True)
class GenerationQueued(Event):
    operation_kind: OperationKind


@dataclass(frozen=True)
class GenerationStarted(Event):
    operation_kind: OperationKind
    total_steps: int


@dataclass(frozen=True)
class GenerationProgress(Event):
    step: int
    total_steps: int
    preview: Image.Image | None = None


@dataclass(frozen=True)
class GenerationCompleted(Event):
    result: Any


@dataclass(frozen=True)
class GenerationFailed(Event):
    error: EaselError


@dataclass(frozen=True)
class GenerationCancelled(Event):
    step: int
