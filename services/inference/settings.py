"""Settings of the inference process, beside the common ones."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from services.common.settings import DEFAULT_ROOT, CommonSettings


class DeviceChoice(StrEnum):
    """Where models run."""

    AUTO = "auto"  # CUDA when available, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


class PrecisionChoice(StrEnum):
    """The data type model weights are loaded as."""

    AUTO = "auto"  # float16 on CUDA, float32 on the CPU
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class InferenceSettings(CommonSettings):
    """What the inference process reads on top of the common settings."""

    device: DeviceChoice = DeviceChoice.AUTO
    """auto (CUDA when available, else CPU), cpu or cuda."""

    torch_threads: int | None = Field(default=None, ge=1)
    """Threads torch may use for CPU work; torch's own default (all cores) when unset.
    On small machines the other processes need some cores too: pin it there."""

    precision: PrecisionChoice = PrecisionChoice.AUTO
    """Data type of loaded weights: auto (fp16 on CUDA, fp32 on the CPU, where half
    precision is slow and poorly supported), fp32, fp16 or bf16."""

    model_cache_ram_bytes: int | None = Field(default=None, ge=0)
    """Most bytes of model weights the model cache holds; least recently used unlocked
    models are evicted beyond it. Unset: half of the machine's physical memory."""

    model_cache_vram_bytes: int | None = Field(default=None, ge=0)
    """Most bytes of weights of unlocked models kept resident on a CUDA device after use
    (locked models are always resident); least recently used ones move back to RAM beyond
    it. Unset: half of the device's memory (the rest is for activations). Ignored on CPU."""

    tensor_store_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    """Most bytes of intermediate tensors (latents, conditioning, noise) kept in memory;
    least recently used ones that no queued or running generation takes spill to
    `<root>/tensors/` beyond it and are read back on use. A single tensor larger than
    this is refused."""

    convert_cache_bytes: int = Field(default=10 * 1024**3, ge=0)
    """Size limit of models/.cache/convert, where single-file main checkpoints are
    converted once into diffusers folders (least recently used evicted beyond it; a model
    too big for it loads from its file each time)."""

    convert_cache_dir: Path | None = None
    """Folder of those conversions; relative to the root. Unset: `.cache/convert` in the
    model manager's models folder. Give each worker a folder of its own where the models
    folder is read-only to inference (a shared volume)."""

    generation_keep_count: int = Field(default=100, ge=0)
    """Most finished generations kept for GetGeneration, ListGenerations and
    WaitGeneration; beyond it the oldest are forgotten (their ids then give NOT_FOUND).
    A kept image result keeps its PNG bytes in memory, which this bounds. Tensors they
    produced stay in the tensor store."""

    generation_keep_s: float = Field(default=3600.0, ge=0)
    """Seconds a finished generation is kept after it ended, then forgotten."""

    @field_validator("convert_cache_dir")
    @classmethod
    def _under_root(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """Absolute from here on, so no later use depends on the working directory."""
        if path is None:
            return None
        root = info.data.get("root", DEFAULT_ROOT.expanduser())
        return (root / path.expanduser()).resolve()
