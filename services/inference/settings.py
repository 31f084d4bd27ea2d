"""Settings of the inference process, beside the common ones."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from services.common.settings import CommonSettings


class DeviceChoice(StrEnum):
    """Where models run."""

    AUTO = "auto"  # CUDA when available, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


class InferenceSettings(CommonSettings):
    """What the inference process reads on top of the common settings."""

    device: DeviceChoice = DeviceChoice.AUTO
    """auto (CUDA when available, else CPU), cpu or cuda."""

    torch_threads: int | None = Field(default=None, ge=1)
    """Threads torch may use for CPU work; torch's own default (all cores) when unset.
    On small machines the other processes need some cores too: pin it there."""
