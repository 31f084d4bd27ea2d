"""Conversions between the model record API's protobuf messages and the record domain.

A domain config is flat (the config-dict form of `model.proto`); a `ModelConfig` message
nests its type's settings in the `settings` oneof. A typed config is turned into the dict a
caller could have sent instead, so both request forms go through one validation; the
violations are then renamed into the message's own paths (`model.main.variant`). Enum
values cross by name: proto `BASE_MODEL_TYPE_SD_1` is `BaseModelType.SD_1` (string form
"sd-1"), and UNSPECIFIED is None.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from easel.model_manager.v1 import model_pb2
from easel.model_manager.v1 import model_record_service_pb2 as pb
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
from services.common.proto_enums import EnumMap
from services.model_manager.records.configs import (
    CONFIG_FIELDS,
    INVALID_MODEL_CONFIG,
    KEY_PATTERN,
    AnyModelConfig,
    invalid_config,
    parse_config,
)
from services.model_manager.records.metadata import ModelMetadata
from services.model_manager.records.record_store import ModelQuery, ModelRecordStore, StoreBackend

BASE = EnumMap(BaseModelType, model_pb2.BaseModelType)
TYPE = EnumMap(ModelType, model_pb2.ModelType)
FORMAT = EnumMap(ModelFormat, model_pb2.ModelFormat)
ENUMS = {
    enum.proto.DESCRIPTOR.full_name: enum
    for enum in (
        BASE,
        TYPE,
        FORMAT,
        EnumMap(ModelVariantType, model_pb2.ModelVariantType),
        EnumMap(SchedulerPredictionType, model_pb2.SchedulerPredictionType),
        EnumMap(ModelRepoVariant, model_pb2.ModelRepoVariant),
        EnumMap(HashAlgorithm, model_pb2.HashAlgorithm),
        EnumMap(SourceType, model_pb2.SourceType),
    )
}

_CONFIG = model_pb2.ModelConfig.DESCRIPTOR
SETTINGS_CASE = {model_type: model_type.name.lower() for model_type in ModelType}
"""The `settings` oneof case of each type: `ModelType.TEXTUAL_INVERSION` is `textual_inversion`."""
TOP_FIELDS = {field.name: field for field in _CONFIG.fields if field.containing_oneof is None}
SETTINGS_FIELDS = {
    case: {field.name: field for field in _CONFIG.fields_by_name[case].message_type.fields}
    for case in SETTINGS_CASE.values()
}
OUTPUT_ONLY = frozenset({"hash_algorithm", "create_time", "update_time"})
ENUM_BY_KEY = {
    field.name: ENUMS[field.enum_type.full_name]
    for field in [*TOP_FIELDS.values(), *(f for s in SETTINGS_FIELDS.values() for f in s.values())]
    if field.enum_type is not None
}
REPLACED_IN_FULL = CONFIG_FIELDS - {"key"} - OUTPUT_ONLY
BACKENDS = {
    StoreBackend.SQLITE: pb.STORE_BACKEND_SQLITE,
    StoreBackend.YAML: pb.STORE_BACKEND_YAML,
    StoreBackend.POSTGRESQL: pb.STORE_BACKEND_POSTGRESQL,
}


def config_to_pb(config: AnyModelConfig) -> model_pb2.ModelConfig:
    message = model_pb2.ModelConfig()
    settings = getattr(message, SETTINGS_CASE[config.type])
    settings.SetInParent()
    _fill(message, TOP_FIELDS, config)
    _fill(settings, SETTINGS_FIELDS[SETTINGS_CASE[config.type]], config)
    message.hash_algorithm = ENUM_BY_KEY["hash_algorithm"].to_pb(config.hash_algorithm)
    message.create_time.FromDatetime(config.create_time)
    message.update_time.FromDatetime(config.update_time)
    return message


def new_config(request: pb.CreateModelRequest) -> AnyModelConfig:
    """The validated config of a CreateModel request, with the request's key if it has one."""
    which = _config_case(request)
    if which == "model":
        data = _typed_dict(request.model)
        violations = _settings_mismatch(request.model)
    else:
        data = {k: v for k, v in dict_changes(request.config_dict).items() if v is not None}
        violations = []
    if request.key:
        if not re.match(KEY_PATTERN, request.key):
            violations.append(FieldViolation("key", "must be 1-64 characters of [A-Za-z0-9_-]"))
        elif data.get("key", request.key) != request.key:
            violations.append(
                FieldViolation(f"{which}.key", "must be empty or equal to the request's key")
            )
        data["key"] = request.key
    if violations:
        raise invalid_config(violations, key=request.key)
    with in_request_terms(request):
        return parse_config(data, field=which)


def update_changes(request: pb.UpdateModelRequest) -> tuple[dict[str, Any], str]:
    """The sparse changes an UpdateModel request asks for, and the request field they are in.

    None values reset a field to its default: a typed config without a mask sets every
    field it leaves at the proto default back to the domain default (full replacement).
    """
    which = _config_case(request)
    mask = list(request.update_mask.paths)
    if which == "config_dict":
        if mask:
            raise invalid_config(
                [FieldViolation("update_mask", "only allowed with model, not with config_dict")],
                key=request.key,
            )
        return dict_changes(request.config_dict), which
    model = request.model
    violations = _settings_mismatch(model)
    if model.key and model.key != request.key:
        violations.append(FieldViolation("model.key", "a record's key cannot change"))
    if mask:
        changes, mask_violations = _masked_changes(model, mask)
        violations += mask_violations
    else:
        typed = _typed_dict(model)
        typed.pop("key", None)
        changes = {**dict.fromkeys(REPLACED_IN_FULL), **typed}
    if violations:
        raise invalid_config(violations, key=request.key)
    return changes, which


@contextmanager
def in_request_terms(request: pb.CreateModelRequest | pb.UpdateModelRequest) -> Iterator[None]:
    """Rename the config violations raised inside to the paths of the request's typed config:
    `model.variant` of a main model is `model.main.variant`."""
    try:
        yield
    except InvalidArgumentError as error:
        if error.reason != INVALID_MODEL_CONFIG or request.WhichOneof("config") != "model":
            raise
        model = request.model
        case = model.WhichOneof("settings") or SETTINGS_CASE.get(TYPE.from_pb(model.type))
        violations = [
            FieldViolation(_message_path(violation.field, case), violation.description)
            for violation in error.violations
        ]
        raise invalid_config(violations, key=error.metadata.get("key")) from None


def model_query(request: pb.ListModelsRequest) -> ModelQuery:
    return ModelQuery(
        name=request.name or None,
        base=BASE.from_pb(request.base),
        type=TYPE.from_pb(request.type),
        format=FORMAT.from_pb(request.format),
        path=request.path or None,
        tags=tuple(sorted(set(request.tags))),
        hash=request.hash or None,
        source=request.source or None,
    )


def query_fingerprint(query: ModelQuery) -> list[Any]:
    """What a page token is bound to: every filter (the page size may change between pages)."""
    return list(dataclasses.astuple(query))


def find_arguments(request: pb.FindModelRequest) -> tuple[str, BaseModelType, ModelType]:
    base, model_type = BASE.from_pb(request.base), TYPE.from_pb(request.type)
    violations = []
    if not request.name:
        violations.append(FieldViolation("name", "required"))
    if not isinstance(base, BaseModelType):
        violations.append(FieldViolation("base", "required: a base other than UNSPECIFIED"))
    if not isinstance(model_type, ModelType):
        violations.append(FieldViolation("type", "required: a type other than UNSPECIFIED"))
    if violations:
        raise InvalidArgumentError(
            "FindModel needs a name, a base and a type", violations=violations
        )
    return request.name, base, model_type


def required_key(key: str) -> str:
    if not key:
        raise InvalidArgumentError("key is required", field="key")
    return key


def store_info(
    store: ModelRecordStore, model_count: int, models_dir: str
) -> pb.GetStoreInfoResponse:
    return pb.GetStoreInfoResponse(
        backend=BACKENDS[store.backend],
        schema_version=store.schema_version,
        location=str(store.location),
        model_count=model_count,
        models_dir=models_dir,
    )


def _fill(message: Message, fields: dict[str, FieldDescriptor], config: AnyModelConfig) -> None:
    """Copy the config's values of `fields` into `message`; output-only ones are set apart."""
    for name, field in fields.items():
        value = getattr(config, name, None)
        if name in OUTPUT_ONLY or value is None:
            continue
        if field.enum_type is not None:
            setattr(message, name, ENUMS[field.enum_type.full_name].to_pb(value))
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)


def _typed_dict(model: model_pb2.ModelConfig) -> dict[str, Any]:
    """The config dict of a typed config: the fields it sets, output-only ones left out."""
    data = {}
    for field, value in model.ListFields():
        if field.containing_oneof is not None:
            data.update((f.name, _value(f, v)) for f, v in value.ListFields())
        elif field.name not in OUTPUT_ONLY:
            data[field.name] = _value(field, value)
    return data


def dict_changes(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A config dict as the domain reads it: enum names as string forms, output-only keys
    ignored (as for a typed config)."""
    data = json_format.MessageToDict(struct)
    return {
        name: ENUM_BY_KEY[name].string_form(value) if name in ENUM_BY_KEY else value
        for name, value in data.items()
        if name not in OUTPUT_ONLY
    }


def _masked_changes(
    model: model_pb2.ModelConfig, mask: list[str]
) -> tuple[dict[str, Any], list[FieldViolation]]:
    """The values of `model` at the mask's paths; a path at its proto default resets the
    field. `key` was checked apart, output-only paths are ignored."""
    changes: dict[str, Any] = {}
    violations = []
    for path in mask:
        case, _, name = path.partition(".")
        if path == "key" or path in OUTPUT_ONLY:
            continue
        if case in SETTINGS_FIELDS and (not name or name in SETTINGS_FIELDS[case]):
            settings = getattr(model, case)
            for field in [SETTINGS_FIELDS[case][name]] if name else SETTINGS_FIELDS[case].values():
                changes[field.name] = _masked_value(field, getattr(settings, field.name))
        elif path in TOP_FIELDS:
            changes[path] = _masked_value(TOP_FIELDS[path], getattr(model, path))
        else:
            violations.append(FieldViolation("update_mask", f"unknown ModelConfig path {path!r}"))
    return changes, violations


def _masked_value(field: FieldDescriptor, value: Any) -> Any:
    return _value(field, value) if value else None


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.enum_type is not None:
        return ENUMS[field.enum_type.full_name].from_pb(value)
    if field.is_repeated:
        return list(value)
    return value


def _settings_mismatch(model: model_pb2.ModelConfig) -> list[FieldViolation]:
    case = model.WhichOneof("settings")
    model_type = TYPE.from_pb(model.type)
    if case is None or not isinstance(model_type, ModelType) or SETTINGS_CASE[model_type] == case:
        return []
    expected = SETTINGS_CASE[model_type]
    return [FieldViolation(f"model.{case}", f"a {model_type} model's settings go in {expected}")]


def _message_path(path: str, case: str | None) -> str:
    """`model.<settings field>...` as `model.<case>.<settings field>...`: the message's own
    case when it has the field, else the only case that does."""
    rest = path.removeprefix("model.")
    cases = [name for name, fields in SETTINGS_FIELDS.items() if rest.split(".")[0] in fields]
    if case in cases:
        return f"model.{case}.{rest}"
    if len(cases) == 1:
        return f"model.{cases[0]}.{rest}"
    return path


def _config_case(request: pb.CreateModelRequest | pb.UpdateModelRequest) -> str:
    which = request.WhichOneof("config")
    if which is None:
        raise invalid_config(
            [FieldViolation("config", "required: a typed model or a config_dict")], key=request.key
        )
    return which


def metadata_to_pb(metadata: ModelMetadata) -> model_pb2.ModelMetadata:
    message = model_pb2.ModelMetadata(
        name=metadata.name,
        author=metadata.author,
        tags=metadata.tags,
        repo_id=metadata.repo_id,
        files=metadata.files,
    )
    if metadata.last_modified is not None:
        message.last_modified.FromDatetime(metadata.last_modified)
    message.tag_dict.update(metadata.tag_dict)
    return message
