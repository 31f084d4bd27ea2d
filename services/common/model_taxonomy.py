"""The vocabulary that classifies a model, as string enums.

Values are the string forms of the enums in `easel/model_manager/v1/model.proto`: what
config dicts, YAML stores and folder names under `models_dir` use.
"""

from __future__ import annotations

from enum import StrEnum


class BaseModelType(StrEnum):
    """The model family a model works with."""

    ANY = "any"
    SD_1 = "sd-1"
    SD_2 = "sd-2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"


class ModelType(StrEnum):
    """What a model does, which decides how it is used and loaded."""

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
    """How a model's weights are laid out on disk."""

    DIFFUSERS = "diffusers"
    CHECKPOINT = "checkpoint"
    LYCORIS = "lycoris"
    EMBEDDING_FILE = "embedding_file"
    EMBEDDING_FOLDER = "embedding_folder"
    INVOKEAI = "invokeai"


class ModelVariantType(StrEnum):
    """The UNet's input layout of a main model."""

    NORMAL = "normal"
    INPAINT = "inpaint"
    DEPTH = "depth"


class SchedulerPredictionType(StrEnum):
    """What the model's UNet predicts."""

    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"


class ModelRepoVariant(StrEnum):
    """Which files of a HuggingFace repository make up the model."""

    DEFAULT = "default"
    FP16 = "fp16"
    FP32 = "fp32"
    ONNX = "onnx"
    OPENVINO = "openvino"
    FLAX = "flax"


class SubModelType(StrEnum):
    """A part of a main model, loaded on its own."""

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


class HashAlgorithm(StrEnum):
    """How a model's content hash was computed."""

    BLAKE3 = "blake3"
    SHA256 = "sha256"


class SourceType(StrEnum):
    """Where a model was installed from."""

    PATH = "path"
    URL = "url"
    HF_REPO_ID = "hf_repo_id"
