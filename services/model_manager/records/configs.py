"""The configuration record of a model: a pydantic class per (type, format) pair.

Every record shares the fields of `ModelConfigBase` (the reference's ModelConfigBase, plus
timestamps); each class adds the settings its type has (`model.proto`'s `settings`
messages, flattened) and fixes `type` and `format` to literals. `AnyModelConfig` is the
union of them all, discriminated by the pair, so a plain dict validates into the one class
it describes, and a pair no class covers (a LoRA in checkpoint format) is an error naming
the formats the type does come in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from services.common.errors import FieldViolation, InvalidArgumentError
from services.common.model_taxonomy import (
    BaseModelType,
    HashAlgorithm,
    ModelFormat,
    ModelRepoVariant,
    ModelType,
    ModelVariantType,
    SchedulerPredictionType,
    SourceType,
)

KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Caller-chosen keys; generated ones are 32 lowercase hex characters (a UUID4's hex)."""

HASH_PATTERN = re.compile(r"^(?:blake3|sha256):[0-9a-f]{64}$")
"""Both algorithms digest to 256 bits: 64 lowercase hex characters after the prefix."""

INVALID_MODEL_CONFIG = "INVALID_MODEL_CONFIG"


def new_key() -> str:
    return uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


class ModelConfigBase(BaseModel):
    """Fields every model record has, whatever its type and format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(default_factory=new_key, pattern=KEY_PATTERN)
    name: str = Field(min_length=1)
    description: str = ""
    base: BaseModelType
    path: str = Field(min_length=1)
    """Absolute, or relative to `models_dir`; unique among records."""
    hash: str = ""
    """Content hash as `<algorithm>:<hex digest>`; empty when not computed."""
    source: str = ""
    source_type: SourceType | None = None
    source_api_response: str = ""
    """The remote API's JSON description of the model at install time."""
    tags: list[str] = Field(default_factory=list)
    create_time: AwareDatetime = Field(default_factory=now)
    update_time: AwareDatetime = Field(default_factory=now)

    @property
    def hash_algorithm(self) -> HashAlgorithm | None:
        """Derived from `hash`'s prefix, so the two can never disagree."""
        return HashAlgorithm(self.hash.partition(":")[0]) if self.hash else None

    @field_validator("hash")
    @classmethod
    def _hash_form(cls, value: str) -> str:
        if value and not HASH_PATTERN.match(value):
            raise ValueError('must be "blake3:<64 hex digits>" or "sha256:<64 hex digits>"')
        return value

    @field_validator("source_api_response")
    @classmethod
    def _json_document(cls, value: str) -> str:
        if value:
            try:
                json.loads(value)
            except ValueError as exc:
                raise ValueError(f"must be a JSON document: {exc}") from None
        return value

    @field_validator("tags")
    @classmethod
    def _distinct_tags(cls, tags: list[str]) -> list[str]:
        """Tags are a set; duplicates are dropped, the first spelling's order kept."""
        if any(not tag for tag in tags):
            raise ValueError("tags must not be empty strings")
        return list(dict.fromkeys(tags))


class DiffusersConfigBase(ModelConfigBase):
    """A diffusers folder, which holds one variant of its weight files."""

    format: Literal[ModelFormat.DIFFUSERS] = ModelFormat.DIFFUSERS
    repo_variant: ModelRepoVariant = ModelRepoVariant.DEFAULT


class CheckpointConfigBase(ModelConfigBase):
    """A single weight file."""

    format: Literal[ModelFormat.CHECKPOINT] = ModelFormat.CHECKPOINT


class MainSettings(BaseModel):
    """What a main model adds: how to run its UNet and what it draws by default."""

    variant: ModelVariantType | None = None
    prediction_type: SchedulerPredictionType | None = None
    upcast_attention: bool = False
    vae_path: str = ""
    """A VAE to use instead of the model's own: absolute, or relative to `models_dir`."""
    default_width: int = Field(default=0, ge=0)
    """Pixels; 0 means the base's default."""
    default_height: int = Field(default=0, ge=0)


class CheckpointLoadSettings(BaseModel):
    """The original Stable Diffusion YAML a checkpoint is loaded with."""

    config_path: str = ""
    """Absolute, or relative to the root; empty means the one shipped for the base."""


class MainDiffusersConfig(MainSettings, DiffusersConfigBase):
    type: Literal[ModelType.MAIN] = ModelType.MAIN


class MainCheckpointConfig(CheckpointLoadSettings, MainSettings, CheckpointConfigBase):
    type: Literal[ModelType.MAIN] = ModelType.MAIN


class VaeDiffusersConfig(DiffusersConfigBase):
    type: Literal[ModelType.VAE] = ModelType.VAE


class VaeCheckpointConfig(CheckpointConfigBase):
    type: Literal[ModelType.VAE] = ModelType.VAE


class LoraLycorisConfig(ModelConfigBase):
    type: Literal[ModelType.LORA] = ModelType.LORA
    format: Literal[ModelFormat.LYCORIS] = ModelFormat.LYCORIS


class LoraDiffusersConfig(DiffusersConfigBase):
    type: Literal[ModelType.LORA] = ModelType.LORA


class TextualInversionFileConfig(ModelConfigBase):
    type: Literal[ModelType.TEXTUAL_INVERSION] = ModelType.TEXTUAL_INVERSION
    format: Literal[ModelFormat.EMBEDDING_FILE] = ModelFormat.EMBEDDING_FILE


class TextualInversionFolderConfig(ModelConfigBase):
    type: Literal[ModelType.TEXTUAL_INVERSION] = ModelType.TEXTUAL_INVERSION
    format: Literal[ModelFormat.EMBEDDING_FOLDER] = ModelFormat.EMBEDDING_FOLDER


class ControlNetDiffusersConfig(DiffusersConfigBase):
    type: Literal[ModelType.CONTROLNET] = ModelType.CONTROLNET


class ControlNetCheckpointConfig(CheckpointLoadSettings, CheckpointConfigBase):
    type: Literal[ModelType.CONTROLNET] = ModelType.CONTROLNET


class IpAdapterInvokeAIConfig(ModelConfigBase):
    type: Literal[ModelType.IP_ADAPTER] = ModelType.IP_ADAPTER
    format: Literal[ModelFormat.INVOKEAI] = ModelFormat.INVOKEAI
    image_encoder_model_id: str = ""
    """HuggingFace repo id of the CLIP Vision encoder: the `source` of its record."""


class ClipVisionDiffusersConfig(DiffusersConfigBase):
    type: Literal[ModelType.CLIP_VISION] = ModelType.CLIP_VISION


class T2iAdapterDiffusersConfig(DiffusersConfigBase):
    type: Literal[ModelType.T2I_ADAPTER] = ModelType.T2I_ADAPTER


class UpscalerCheckpointConfig(CheckpointConfigBase):
    type: Literal[ModelType.UPSCALER] = ModelType.UPSCALER
    scale: int = Field(default=0, ge=0)
    """Output side / input side; 0 when not known."""


CONFIG_CLASSES: tuple[type[ModelConfigBase], ...] = (
    MainDiffusersConfig,
    MainCheckpointConfig,
    VaeDiffusersConfig,
    VaeCheckpointConfig,
    LoraLycorisConfig,
    LoraDiffusersConfig,
    TextualInversionFileConfig,
    TextualInversionFolderConfig,
    ControlNetDiffusersConfig,
    ControlNetCheckpointConfig,
    IpAdapterInvokeAIConfig,
    ClipVisionDiffusersConfig,
    T2iAdapterDiffusersConfig,
    UpscalerCheckpointConfig,
)

CONFIG_FIELDS = frozenset(name for cls in CONFIG_CLASSES for name in cls.model_fields)
"""Every key a config dict may have, whatever its type."""

FORMATS_BY_TYPE: dict[ModelType, list[ModelFormat]] = {
    type_: [
        cls.model_fields["format"].default
        for cls in CONFIG_CLASSES
        if cls.model_fields["type"].default is type_
    ]
    for type_ in ModelType
}


def _kind(value: Any) -> str | None:
    """The union tag of a dict or config: "<type>/<format>"."""
    if isinstance(value, Mapping):
        type_, format_ = value.get("type"), value.get("format")
    else:
        type_, format_ = getattr(value, "type", None), getattr(value, "format", None)
    if type_ is None or format_ is None:
        return None
    return f"{type_}/{format_}"


AnyModelConfig = Annotated[
    Annotated[MainDiffusersConfig, Tag("main/diffusers")]
    | Annotated[MainCheckpointConfig, Tag("main/checkpoint")]
    | Annotated[VaeDiffusersConfig, Tag("vae/diffusers")]
    | Annotated[VaeCheckpointConfig, Tag("vae/checkpoint")]
    | Annotated[LoraLycorisConfig, Tag("lora/lycoris")]
    | Annotated[LoraDiffusersConfig, Tag("lora/diffusers")]
    | Annotated[TextualInversionFileConfig, Tag("embedding/embedding_file")]
    | Annotated[TextualInversionFolderConfig, Tag("embedding/embedding_folder")]
    | Annotated[ControlNetDiffusersConfig, Tag("controlnet/diffusers")]
    | Annotated[ControlNetCheckpointConfig, Tag("controlnet/checkpoint")]
    | Annotated[IpAdapterInvokeAIConfig, Tag("ip_adapter/invokeai")]
    | Annotated[ClipVisionDiffusersConfig, Tag("clip_vision/diffusers")]
    | Annotated[T2iAdapterDiffusersConfig, Tag("t2i_adapter/diffusers")]
    | Annotated[UpscalerCheckpointConfig, Tag("upscaler/checkpoint")],
    Discriminator(_kind),
]

_ANY_CONFIG: TypeAdapter[AnyModelConfig] = TypeAdapter(AnyModelConfig)


def parse_config(data: Mapping[str, Any], *, field: str = "config") -> AnyModelConfig:
    """The config a dict describes, or INVALID_MODEL_CONFIG with one violation per problem.

    `field` is what the caller calls `data` (e.g. "config_dict"): violations name
    `<field>.<key>`, so a remote caller sees its own request's terms.
    """
    violations = _kind_violations(data, field)
    if not violations:
        try:
            return _ANY_CONFIG.validate_python(dict(data))
        except ValidationError as exc:
            violations = [_violation(error, field, data) for error in exc.errors()]
    raise invalid_config(violations, key=data.get("key"))


def config_from_json(text: str | bytes) -> AnyModelConfig:
    """A config a store wrote (trusted to be valid: skips the friendly error reporting)."""
    return _ANY_CONFIG.validate_json(text)


def apply_changes(
    config: AnyModelConfig, changes: Mapping[str, Any], *, field: str = "changes"
) -> AnyModelConfig:
    """`config` with the keys of `changes` set (None: back to the default), revalidated.

    The merge starts from the non-default fields only, so a change of `type` drops the old
    type's settings when they were left at their defaults. `key` and `create_time` never
    change; `update_time` becomes now.
    """
    violations = [
        FieldViolation(f"{field}.{name}", "not a field of any model config")
        for name in changes
        if name not in CONFIG_FIELDS
    ]
    if changes.get("key", config.key) != config.key:
        violations.append(FieldViolation(f"{field}.key", "a record's key cannot change"))
    merged = {
        "type": config.type,
        "format": config.format,
        **config.model_dump(exclude_defaults=True),
    }
    for name, value in changes.items():
        if name not in CONFIG_FIELDS or name == "key":
            continue
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    try:
        updated = parse_config(merged, field=field)
    except InvalidArgumentError as error:
        violations += error.violations
    if violations:
        raise invalid_config(violations, key=config.key)
    return updated.model_copy(update={"create_time": config.create_time, "update_time": now()})


def invalid_config(violations: list[FieldViolation], *, key: object) -> InvalidArgumentError:
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return InvalidArgumentError(
        f"invalid model config: {summary}",
        violations=violations,
        reason=INVALID_MODEL_CONFIG,
        metadata={"key": key} if isinstance(key, str) and key else None,
    )


def _kind_violations(data: Mapping[str, Any], field: str) -> list[FieldViolation]:
    """Problems with `type` and `format`, which pick the class that validates the rest."""
    types = ", ".join(FORMATS_BY_TYPE)
    try:
        type_ = ModelType(str(data["type"]))
    except (KeyError, ValueError):
        return [FieldViolation(f"{field}.type", f"required, one of: {types}")]
    formats = FORMATS_BY_TYPE[type_]
    if str(data.get("format")) not in formats:
        allowed = ", ".join(formats)
        return [FieldViolation(f"{field}.format", f"a {type_} model's format is one of: {allowed}")]
    return []


def _violation(error: Any, field: str, data: Mapping[str, Any]) -> FieldViolation:
    location = ".".join(str(part) for part in error["loc"][1:])  # [0] is the union tag
    description = error["msg"]
    if error["type"] == "value_error":
        description = str(error["ctx"]["error"])
    elif error["type"] == "extra_forbidden":
        description = f"not a field of {data['type']} models in {data['format']} format"
    return FieldViolation(f"{field}.{location}" if location else field, description)
