"""What a model file or folder is: its type, base, format and the settings it implies.

The probe reads only what identifies a model: the JSON configs of a diffusers folder, the
header of a safetensors file, the keys and shapes of a pickle (through the restricted,
torch-free unpickler of `pickle_scan`). It never loads a weight, so probing a 7 GB
checkpoint costs what probing a 1 MB one does, and the model manager stays torch-free.
The rules are those of `reference/model-facts.md`; overrides from the caller win over
every probed value, and let a model the rules do not recognise be registered anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.common.model_taxonomy import (
    BaseModelType,
    ModelFormat,
    ModelRepoVariant,
    ModelType,
    ModelVariantType,
    SchedulerPredictionType,
)
from services.model_manager.probe.pickle_scan import scan_pickle
from services.model_manager.probe.safetensors_header import (
    TensorInfo,
    corrupt,
    read_safetensors_header,
)

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})

Base = BaseModelType
# Text-conditioning width (last dim of a cross-attention to_k weight) -> base, per kind.
_MAIN_WIDTHS = {768: Base.SD_1, 1024: Base.SD_2, 2048: Base.SDXL, 1280: Base.SDXL_REFINER}
_ADAPTER_WIDTHS = {768: Base.SD_1, 1024: Base.SD_2, 2048: Base.SDXL}
_LORA_WIDTHS = {768: Base.SD_1, 1024: Base.SD_2, 2048: Base.SDXL, 1280: Base.SDXL}
_TOKEN_WIDTHS = {768: Base.SD_1, 1024: Base.SD_2}
_VARIANTS = {
    4: ModelVariantType.NORMAL,
    9: ModelVariantType.INPAINT,
    5: ModelVariantType.DEPTH,
}
# Tuples rather than sets: values read from JSON may be unhashable.
_MAIN_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionDepth2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "LatentConsistencyModelPipeline",
)
_PREDICTION_TYPES = tuple(member.value for member in SchedulerPredictionType)
_CLIP_VISION_CLASSES = ("CLIPVisionModelWithProjection", "CLIPVisionModel")
_MAIN_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.embedders.",
)
_SD_TO_K = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
_SDXL_TO_K = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
_LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_LORA_SUFFIXES = (
    "lora_up.weight",
    "lora_down.weight",
    "lora_A.weight",
    "lora_B.weight",
    "hada_w1_a",
    "lokr_w1",
)
# Suffixes of the LoRA factor whose second dim is the layer's input width.
_LORA_IN_FACTORS = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b")
_EMBEDDING_MAX_TENSORS = 8
_SDXL_VAE_SCALING = 0.13025
_SD_VAE_SCALING = 0.18215
# A reported "seen" names at most this many key prefixes or folder entries.
_SEEN_ITEMS = 8


@dataclass(frozen=True)
class ProbedModel:
    """A probed model with the caller's overrides applied: what it would be registered as.

    Attributes that do not apply to the model's type are None.
    """

    name: str
    description: str
    type: ModelType
    base: BaseModelType
    format: ModelFormat
    variant: ModelVariantType | None = None
    prediction_type: SchedulerPredictionType | None = None
    upcast_attention: bool | None = None
    repo_variant: ModelRepoVariant | None = None
    scale: int | None = None
    image_encoder_model_id: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The config dict (ModelConfig and settings field names, enums as their string
        forms), every override merged last, including keys the probe has no say in."""
        probed = {
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "base": self.base,
            "format": self.format,
            "variant": self.variant,
            "prediction_type": self.prediction_type,
            "upcast_attention": self.upcast_attention,
            "repo_variant": self.repo_variant,
            "scale": self.scale,
            "image_encoder_model_id": self.image_encoder_model_id,
        }
        config = {
            key: value.value if isinstance(value, StrEnum) else value
            for key, value in probed.items()
            if value is not None
        }
        return config | dict(self.overrides)


@dataclass(frozen=True)
class _Finding:
    """What the files say; `base` None with `seen` saying why it could not be decided."""

    type: ModelType
    format: ModelFormat
    base: BaseModelType | None
    seen: str = ""
    variant: ModelVariantType | None = None
    prediction_type: SchedulerPredictionType | None = None
    upcast_attention: bool | None = None
    repo_variant: ModelRepoVariant | None = None
    scale: int | None = None
    image_encoder_model_id: str | None = None


@dataclass(frozen=True)
class _Weights:
    """A weight file's tensors by (flattened) name, and the training step if it says."""

    kind: str
    tensors: dict[str, TensorInfo]
    global_step: int | None = None


class _Unrecognised(Exception):
    """The files match no known kind; `seen` says briefly what they are."""

    def __init__(self, seen: str) -> None:
        super().__init__(seen)
        self.seen = seen


# Overridable attributes and the type each override value must have.
_OVERRIDE_TYPES: dict[str, type] = {
    "name": str,
    "description": str,
    "type": ModelType,
    "base": BaseModelType,
    "format": ModelFormat,
    "variant": ModelVariantType,
    "prediction_type": SchedulerPredictionType,
    "upcast_attention": bool,
    "repo_variant": ModelRepoVariant,
    "scale": int,
    "image_encoder_model_id": str,
}
# Overridable attributes that a `_Finding` leaves to `probe_model`.
_NAMING = ("name", "description")


def probe_model(path: Path, overrides: Mapping[str, Any] | None = None) -> ProbedModel:
    """Probe the model file or folder at `path`; `overrides` (a config dict) win.

    Raises FAILED_PRECONDITION (MODEL_FILES_MISSING) when nothing is at `path`, and
    INVALID_ARGUMENT with reason UNKNOWN_MODEL, UNKNOWN_BASE_MODEL, MODEL_FILE_CORRUPT,
    UNSAFE_PICKLE or INVALID_MODEL_CONFIG (an override of the wrong kind).
    """
    overrides = dict(overrides or {})
    if not path.exists():
        raise FailedPreconditionError(
            f"no model at {path}", reason="MODEL_FILES_MISSING", metadata={"path": str(path)}
        )
    coerced = {
        key: _coerce_override(key, value)
        for key, value in overrides.items()
        if key in _OVERRIDE_TYPES
    }
    try:
        finding = _probe_folder(path) if path.is_dir() else _probe_file(path)
    except _Unrecognised as unrecognised:
        if "type" not in coerced or "base" not in coerced:
            raise InvalidArgumentError(
                f"{path} is not a model Easel recognises ({unrecognised.seen}); give "
                '"type" and "base" to register it anyway',
                reason="UNKNOWN_MODEL",
                metadata={"path": str(path), "seen": unrecognised.seen},
            ) from None
        finding = _Finding(
            type=coerced["type"],
            format=_layout_format(coerced["type"], path.is_dir()),
            base=coerced["base"],
        )
    values = {key: getattr(finding, key) for key in _OVERRIDE_TYPES if key not in _NAMING}
    values["name"] = path.name if path.is_dir() else path.stem
    values |= coerced
    if values["base"] is None:
        raise InvalidArgumentError(
            f"the base of the {finding.type} model at {path} cannot be decided "
            f'({finding.seen}); give "base"',
            reason="UNKNOWN_BASE_MODEL",
            metadata={"path": str(path), "seen": finding.seen},
        )
    values.setdefault("description", f"{values['base']} {values['type']} model {values['name']}")
    return ProbedModel(**values, overrides=overrides)


def _coerce_override(key: str, value: Any) -> Any:
    kind = _OVERRIDE_TYPES[key]
    if issubclass(kind, StrEnum):
        if isinstance(value, str) and value in {member.value for member in kind}:
            return kind(value)
    elif kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # protobuf Struct numbers arrive as floats
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    allowed = ", ".join(kind) if issubclass(kind, StrEnum) else f"a {kind.__name__}"
    raise InvalidArgumentError(
        f"config.{key} must be {allowed}, got {value!r}",
        field=f"config.{key}",
        reason="INVALID_MODEL_CONFIG",
    )


def _layout_format(model_type: ModelType, is_folder: bool) -> ModelFormat:
    """The format an unrecognised model gets from its layout when the caller names its type."""
    if is_folder:
        return {
            ModelType.IP_ADAPTER: ModelFormat.INVOKEAI,
            ModelType.TEXTUAL_INVERSION: ModelFormat.EMBEDDING_FOLDER,
        }.get(model_type, ModelFormat.DIFFUSERS)
    return {
        ModelType.LORA: ModelFormat.LYCORIS,
        ModelType.TEXTUAL_INVERSION: ModelFormat.EMBEDDING_FILE,
    }.get(model_type, ModelFormat.CHECKPOINT)


# --- single files ---------------------------------------------------------------------


def _probe_file(path: Path) -> _Finding:
    if not path.is_file():
        raise _Unrecognised("not a regular file")
    weights = _read_weights(path)
    keys = weights.tensors.keys()
    if any(key.startswith(_LORA_PREFIXES) or key.endswith(_LORA_SUFFIXES) for key in keys):
        return _Finding(ModelType.LORA, ModelFormat.LYCORIS, *_lora_base(weights))
    if any(key.startswith(_MAIN_PREFIXES) for key in keys):
        return _main_checkpoint(weights)
    if any(key.startswith(("control_model.", "controlnet_")) for key in keys):
        return _Finding(
            ModelType.CONTROLNET, ModelFormat.CHECKPOINT, *_cross_attention_base(weights)
        )
    if any(key.startswith(("encoder.conv_in", "decoder.conv_in")) for key in keys):
        return _Finding(ModelType.VAE, ModelFormat.CHECKPOINT, _vae_base(None, path.stem))
    if (scale := _esrgan_scale(weights.tensors)) is not None:
        return _Finding(ModelType.UPSCALER, ModelFormat.CHECKPOINT, Base.ANY, scale=scale)
    if path.stem == "learned_embeds" or _is_embedding(weights.tensors):
        return _embedding(weights, ModelFormat.EMBEDDING_FILE)
    raise _Unrecognised(_describe(weights))


def _read_weights(path: Path) -> _Weights:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _Weights("safetensors", read_safetensors_header(path).tensors)
    if suffix in PICKLE_SUFFIXES:
        content = scan_pickle(path)
        step = content.get("global_step") if isinstance(content, dict) else None
        if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
            content = content["state_dict"]  # a training checkpoint's model weights
        try:
            tensors = _flatten(content)
        except RecursionError:  # a pickle can nest (or cycle) deeper than any archive does
            raise corrupt(path, "nested too deeply for a tensor archive") from None
        return _Weights("pickle", tensors, step if isinstance(step, int) else None)
    size = path.stat().st_size
    raise _Unrecognised(f"a {suffix or 'suffixless'} file of {size} bytes, not a weight file")


def _flatten(content: object, prefix: str = "") -> dict[str, TensorInfo]:
    """Tensors of nested dicts under dotted names (`{"a": {"b": t}}` -> `a.b`)."""
    if isinstance(content, TensorInfo):
        return {prefix: content}
    if not isinstance(content, dict):
        return {}
    tensors: dict[str, TensorInfo] = {}
    for key, value in content.items():
        tensors |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return tensors


def _main_checkpoint(weights: _Weights) -> _Finding:
    base, seen = _main_checkpoint_base(weights.tensors)
    variant = _variant(
        _dim(weights.tensors, "model.diffusion_model.input_blocks.0.0.weight", 1) or 4
    )
    prediction = SchedulerPredictionType.EPSILON
    if base is Base.SD_2 and variant is ModelVariantType.NORMAL:
        # sd-2 768 models predict v, 512 base models epsilon; only the training step tells
        # them apart, and without it v (the 768 models are the common ones) is assumed.
        prediction = {220000: SchedulerPredictionType.EPSILON}.get(
            weights.global_step, SchedulerPredictionType.V_PREDICTION
        )
    return _Finding(
        ModelType.MAIN,
        ModelFormat.CHECKPOINT,
        base,
        seen=seen,
        variant=variant,
        prediction_type=prediction,
        upcast_attention=prediction is SchedulerPredictionType.V_PREDICTION,
    )


def _main_checkpoint_base(tensors: dict[str, TensorInfo]) -> tuple[BaseModelType | None, str]:
    """sd-1 and sd-2 have cross-attention at input block 2; sdxl has none there (its first
    level has no attention), so its width is read at block 4."""
    if (width := _dim(tensors, _SD_TO_K, -1)) is not None:
        base = {768: Base.SD_1, 1024: Base.SD_2}.get(width)
    elif (width := _dim(tensors, _SDXL_TO_K, -1)) is not None:
        base = {2048: Base.SDXL, 1280: Base.SDXL_REFINER}.get(width)
    else:
        return None, "no UNet cross-attention"
    return base, f"UNet cross-attention width {width}"


def _variant(in_channels: object) -> ModelVariantType:
    if not isinstance(in_channels, int) or in_channels not in _VARIANTS:
        raise _Unrecognised(f"a main model whose UNet takes {in_channels} input channels")
    return _VARIANTS[in_channels]


def _cross_attention_base(weights: _Weights) -> tuple[BaseModelType | None, str]:
    to_k = sorted(key for key in weights.tensors if key.endswith("attn2.to_k.weight"))
    if not to_k:
        return None, "no cross-attention layer"
    width = _dim(weights.tensors, to_k[0], -1)
    return _ADAPTER_WIDTHS.get(width or 0), f"cross-attention width {width}"


def _lora_base(weights: _Weights) -> tuple[BaseModelType | None, str]:
    """From the input width of a UNet cross-attention to_k layer (the text conditioning)."""
    tensors = weights.tensors
    for key in sorted(tensors):
        if re.search(r"attn2[._](processor\.)?to_k", key) and key.endswith(_LORA_IN_FACTORS):
            width = _dim(tensors, key, 1)
        elif re.search(r"attn2[._]to_k\.lokr_w1(_b)?$", key):
            layer = key.rsplit(".", 1)[0]
            w1 = _dim(tensors, key, 1)
            w2 = _dim(tensors, f"{layer}.lokr_w2", 1) or _dim(tensors, f"{layer}.lokr_w2_b", 1)
            width = w1 * w2 if w1 and w2 else None
        else:
            continue
        return _LORA_WIDTHS.get(width or 0), f"LoRA on cross-attention width {width}"
    if any(key.startswith(("lora_te1_", "lora_te2_")) for key in tensors):
        return Base.SDXL, "LoRA on two text encoders"  # only sdxl has two
    return None, "LoRA without a cross-attention to_k layer"


def _is_embedding(tensors: dict[str, TensorInfo]) -> bool:
    keys = tensors.keys()
    if "emb_params" in keys or {"clip_l", "clip_g"} <= keys:
        return True
    if any(key.startswith("string_to_param.") for key in keys):
        return True
    return 0 < len(tensors) <= _EMBEDDING_MAX_TENSORS and all(
        len(info.shape) in (1, 2) and info.shape[-1] in _TOKEN_WIDTHS for info in tensors.values()
    )


def _embedding(weights: _Weights, model_format: ModelFormat) -> _Finding:
    tensors = weights.tensors
    if {"clip_l", "clip_g"} <= tensors.keys():
        return _Finding(ModelType.TEXTUAL_INVERSION, model_format, Base.SDXL)
    width = _dim(tensors, _embedding_key(tensors), -1)
    return _Finding(
        ModelType.TEXTUAL_INVERSION,
        model_format,
        _TOKEN_WIDTHS.get(width or 0),
        seen=f"token width {width}",
    )


def _embedding_key(tensors: dict[str, TensorInfo]) -> str | None:
    """The tensor holding the token vectors: A1111's `emb_params` / `string_to_param.*`,
    else the first (a diffusers `learned_embeds` has one per token)."""
    if "emb_params" in tensors:
        return "emb_params"
    params = sorted(key for key in tensors if key.startswith("string_to_param."))
    return (params or sorted(tensors) or [None])[0]


def _vae_base(scaling_factor: float | None, name: str) -> BaseModelType:
    """sdxl and sd-1 VAEs differ in their latent scaling only; without it the name decides."""
    if scaling_factor == _SDXL_VAE_SCALING:
        return Base.SDXL
    if scaling_factor == _SD_VAE_SCALING:
        return Base.SD_1
    return Base.SDXL if "xl" in name.lower() else Base.SD_1


def _esrgan_scale(tensors: dict[str, TensorInfo]) -> int | None:
    """Each upsampling conv doubles the size; a pixel-unshuffled input (3 channels per
    sub-pixel, as in the x2 RealESRGAN models) divides it back."""
    if "conv_first.weight" in tensors and any(key.startswith("body.") for key in tensors):
        upsamplers = sum(1 for key in tensors if re.fullmatch(r"conv_up\d+\.weight", key))
        unshuffle = {12: 2, 48: 4}.get(_dim(tensors, "conv_first.weight", 1) or 3, 1)
        return 2**upsamplers // unshuffle
    if "model.0.weight" in tensors and any(
        re.match(r"model\.1\.sub\.\d+\.RDB", k) for k in tensors
    ):
        # model.0 first conv, model.1 the trunk, then one conv per upsampling, HR conv, last conv.
        convs = [k for k in tensors if re.fullmatch(r"model\.([2-9]|\d\d+)\.weight", k)]
        return 2 ** max(len(convs) - 2, 0)
    return None


def _describe(weights: _Weights) -> str:
    prefixes = list(dict.fromkeys(key.split(".")[0] + "." for key in sorted(weights.tensors)))
    shown = ", ".join(prefixes[:_SEEN_ITEMS]) + (", ..." if len(prefixes) > _SEEN_ITEMS else "")
    return f"{weights.kind}, {len(weights.tensors)} tensors, key prefixes: {shown or 'none'}"


# --- folders --------------------------------------------------------------------------


def _probe_folder(path: Path) -> _Finding:
    if (path / "model_index.json").is_file():
        return _main_diffusers(path)
    ip_adapter = _first_file(path, "ip_adapter", (".safetensors", ".bin"))
    if ip_adapter and (path / "image_encoder.txt").is_file():
        return _ip_adapter(path, ip_adapter)
    if weights_file := _first_file(path, "pytorch_lora_weights", (".safetensors", ".bin")):
        base, seen = _lora_base(_read_weights(weights_file))
        return _diffusers(path, ModelType.LORA, base, seen=seen)
    if weights_file := _first_file(path, "learned_embeds", (".safetensors", ".bin", ".pt")):
        return _embedding(_read_weights(weights_file), ModelFormat.EMBEDDING_FOLDER)
    if (path / "config.json").is_file():
        return _diffusers_component(path, _read_json(path / "config.json"))
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in path.iterdir())
    shown = ", ".join(entries[:_SEEN_ITEMS]) + (", ..." if len(entries) > _SEEN_ITEMS else "")
    raise _Unrecognised(f"a folder holding: {shown or 'nothing'}")


def _main_diffusers(path: Path) -> _Finding:
    pipeline = _read_json(path / "model_index.json").get("_class_name")
    if pipeline not in _MAIN_PIPELINES:
        raise _Unrecognised(f"a diffusers pipeline of class {pipeline}")
    unet = _read_json(path / "unet" / "config.json")
    width = unet.get("cross_attention_dim")
    scheduler_config = path / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_config) if scheduler_config.is_file() else {}
    prediction = scheduler.get("prediction_type", SchedulerPredictionType.EPSILON)
    if prediction not in _PREDICTION_TYPES:
        raise _Unrecognised(f"a scheduler predicting {prediction!r}")
    return _diffusers(
        path,
        ModelType.MAIN,
        _MAIN_WIDTHS.get(width) if isinstance(width, int) else None,
        seen=f"UNet cross_attention_dim {width}",
        variant=_variant(unet.get("in_channels", 4)),
        prediction_type=SchedulerPredictionType(prediction),
        upcast_attention=bool(unet.get("upcast_attention", False)),
    )


def _diffusers_component(path: Path, config: dict[str, Any]) -> _Finding:
    cls = config.get("_class_name")
    if cls in ("AutoencoderKL", "AutoencoderTiny"):
        return _diffusers(path, ModelType.VAE, _vae_base(config.get("scaling_factor"), path.name))
    if cls == "ControlNetModel":
        width = config.get("cross_attention_dim")
        base = _ADAPTER_WIDTHS.get(width) if isinstance(width, int) else None
        return _diffusers(path, ModelType.CONTROLNET, base, seen=f"cross_attention_dim {width}")
    if cls == "T2IAdapter":
        xl = config.get("adapter_type") == "full_adapter_xl"
        return _diffusers(path, ModelType.T2I_ADAPTER, Base.SDXL if xl else Base.SD_1)
    architectures = config.get("architectures")
    if isinstance(architectures, list) and any(a in _CLIP_VISION_CLASSES for a in architectures):
        return _diffusers(path, ModelType.CLIP_VISION, Base.ANY)
    raise _Unrecognised(f"a folder whose config.json describes {cls or architectures or '?'}")


def _ip_adapter(path: Path, weights_file: Path) -> _Finding:
    weights = _read_weights(weights_file)
    width = _dim(weights.tensors, "ip_adapter.1.to_k_ip.weight", -1)
    return _Finding(
        ModelType.IP_ADAPTER,
        ModelFormat.INVOKEAI,
        _ADAPTER_WIDTHS.get(width or 0),
        seen=f"image prompt width {width}",
        image_encoder_model_id=(path / "image_encoder.txt").read_text(errors="replace").strip(),
    )


def _diffusers(
    path: Path, model_type: ModelType, base: BaseModelType | None, **kw: Any
) -> _Finding:
    """A diffusers folder: FP16 when its weight files are all `*.fp16.*`, else DEFAULT."""
    weights = [p.name for p in path.rglob("*") if p.suffix in (".safetensors", ".bin")]
    fp16 = bool(weights) and all(".fp16." in name for name in weights)
    repo_variant = ModelRepoVariant.FP16 if fp16 else ModelRepoVariant.DEFAULT
    return _Finding(model_type, ModelFormat.DIFFUSERS, base, repo_variant=repo_variant, **kw)


def _dim(tensors: dict[str, TensorInfo], key: str | None, index: int) -> int | None:
    """One dimension of a tensor's shape; None when the tensor or the dimension is absent."""
    shape = tensors[key].shape if key in tensors else ()
    return shape[index] if -len(shape) <= index < len(shape) else None


def _first_file(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    return next(
        (folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()), None
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FailedPreconditionError(
            f"{path} is missing", reason="MODEL_FILES_MISSING", metadata={"path": str(path)}
        )
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(path, "not valid JSON") from exc
    if not isinstance(config, dict):
        raise corrupt(path, "not a JSON object")
    return config
