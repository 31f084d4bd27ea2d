"""What a client asks a generation to do, as plain data.

One class per operation, with the fields of its request; a field left at its neutral
value (0, None, "") takes the documented default when the generation is prepared. Each
class knows its operation kind, whose value is the request field it arrives in
(`text_to_image`, ...) and prefixes the field names in errors (`text_to_image.width`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from services.inference.generation.jobs import OperationKind

DEFAULT_STEPS = 30
DEFAULT_CFG_SCALE = 7.5
DEFAULT_STRENGTH = 0.75
DEFAULT_LORA_WEIGHT = 1.0
MAX_LORA_WEIGHT = 10.0


@dataclass(frozen=True)
class LoraRef:
    """A LoRA by model key, with its weight (None: full strength)."""

    model_key: str
    weight: float | None = None


@dataclass(frozen=True)
class _Request:
    kind: ClassVar[OperationKind]

    @property
    def field(self) -> str:
        """The request field the operation arrives in: its kind's value."""
        return self.kind.value


@dataclass(frozen=True)
class _ImageRequest(_Request):
    """The fields TextToImage and ImageToImage share."""

    model_key: str
    positive_prompt: str = ""
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 0
    cfg_scale: float | None = None
    scheduler: str = ""
    seed: int | None = None
    vae_key: str = ""
    loras: tuple[LoraRef, ...] = ()
    embedding_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextToImageRequest(_ImageRequest):
    kind: ClassVar = OperationKind.TEXT_TO_IMAGE


@dataclass(frozen=True, kw_only=True)
class ImageToImageRequest(_ImageRequest):
    kind: ClassVar = OperationKind.IMAGE_TO_IMAGE

    init_image_png: bytes
    strength: float | None = None


@dataclass(frozen=True)
class UpscaleRequest(_Request):
    kind: ClassVar = OperationKind.UPSCALE

    upscaler_model_key: str
    image_png: bytes
    scale: float | None = None


@dataclass(frozen=True)
class EncodePromptRequest(_Request):
    kind: ClassVar = OperationKind.ENCODE_PROMPT

    model_key: str
    prompt: str = ""
    loras: tuple[LoraRef, ...] = ()
    embedding_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreateNoiseRequest(_Request):
    kind: ClassVar = OperationKind.CREATE_NOISE

    width: int
    height: int
    seed: int | None = None


@dataclass(frozen=True)
class DenoiseLatentsRequest(_Request):
    kind: ClassVar = OperationKind.DENOISE_LATENTS

    model_key: str
    positive_conditioning: str
    negative_conditioning: str
    noise: str
    latents: str = ""
    steps: int = 0
    cfg_scale: float | None = None
    scheduler: str = ""
    denoising_start: float = 0.0
    denoising_end: float | None = None
    loras: tuple[LoraRef, ...] = ()


@dataclass(frozen=True)
class DecodeLatentsRequest(_Request):
    kind: ClassVar = OperationKind.DECODE_LATENTS

    latents: str
    model_key: str


@dataclass(frozen=True)
class EncodeImageRequest(_Request):
    kind: ClassVar = OperationKind.ENCODE_IMAGE

    image_png: bytes
    model_key: str


GenerationRequest = (
    TextToImageRequest
    | ImageToImageRequest
    | UpscaleRequest
    | EncodePromptRequest
    | CreateNoiseRequest
    | DenoiseLatentsRequest
    | DecodeLatentsRequest
    | EncodeImageRequest
)


@dataclass(frozen=True)
class GenerationOptions:
    """What every request carries beside its operation: routing ids and previews."""

    session_id: str = ""
    invocation_id: str = ""
    preview: bool = False
