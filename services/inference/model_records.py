"""What inference knows of a model: its record in the model manager, as plain data.

The enums repeat the model vocabulary of `easel/model_manager/v1/model.proto` (string
forms included): no service imports another's code, and the wire types stay inside
`model_records_client`. Member names match the proto's value names, so `EnumMap` pairs
them without a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class BaseModelType(StrEnum):
    ANY = "any"
    SD_1 = "sd-1"
    SD_2 = "sd-2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"


class ModelType(StrEnum):
    MAIN = "main"
    VAE = "vae"
    LORA = "lora"
    TEXTUAL_INVERSION = "embedding"
    CONTROLNET = "controlnet"
    IP_ADAPTER = "ip_adapter"
    CLIP_VISION = "clip_vision"
    T2I_ADAPTER = "t2i_adapter"
    UPSCALER = "upscaler"


class ModelFormat(StrEnum):
    DIFFUSERS = "diffusers"
    CHECKPOINT = "checkpoint"
    LYCORIS = "lycoris"
    EMBEDDING_FILE = "embedding_file"
    EMBEDDING_FOLDER = "embedding_folder"
    INVOKEAI = "invokeai"


class ModelVariantType(StrEnum):
    NORMAL = "normal"
    INPAINT = "inpaint"
    DEPTH = "depth"


class SchedulerPredictionType(StrEnum):
    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"


class ModelRepoVariant(StrEnum):
    DEFAULT = "default"
    FP16 = "fp16"
    FP32 = "fp32"
    ONNX = "onnx"
    OPENVINO = "openvino"
    FLAX = "flax"


class SubModelType(StrEnum):
    """A part of a main model; each part is its own model cache entry."""

    UNET = "unet"
    TEXT_ENCODER = "text_encoder"
    TEXT_ENCODER_2 = "text_encoder_2"
    TOKENIZER = "tokenizer"
    TOKENIZER_2 = "tokenizer_2"
    VAE = "vae"
    VAE_DECODER = "vae_decoder"
    VAE_ENCODER = "vae_encoder"
    SCHEDULER = "scheduler"
    SAFETY_CHECKER = "safety_checker"


@dataclass(frozen=True)
class ModelRecord:
    """One model's record, with its path made absolute.

    `path` is resolved against the model manager's `models_dir`; `config_path` (a main
    checkpoint's own configuration, absolute or relative to the root) is kept as recorded.
    Fields that only apply to one model type keep their neutral value for the others.
    """

    key: str
    name: str
    base: BaseModelType
    type: ModelType
    format: ModelFormat
    path: Path
    hash: str = ""
    repo_variant: ModelRepoVariant | None = None
    variant: ModelVariantType | None = None
    prediction_type: SchedulerPredictionType | None = None
    upcast_attention: bool = False
    config_path: str = ""
    upscale_factor: int = 0
