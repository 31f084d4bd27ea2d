"""Conversions from the invocation registry's schemas and the default models to
InvocationService messages."""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2

from easel.invoker.v1 import invocation_service_pb2 as pb
from easel.model_manager.v1 import model_pb2
from services.common.model_taxonomy import ModelType
from services.common.proto_enums import EnumMap
from services.invoker.invocations.base import InputKind
from services.invoker.invocations.model_defaults import DefaultModel, DefaultSource
from services.invoker.invocations.schema import (
    NO_DEFAULT,
    Constraints,
    FieldSpec,
    InvocationSpec,
)

INPUT_KINDS = {
    None: pb.INPUT_KIND_UNSPECIFIED,
    InputKind.ANY: pb.INPUT_KIND_ANY,
    InputKind.CONNECTION: pb.INPUT_KIND_CONNECTION,
    InputKind.DIRECT: pb.INPUT_KIND_DIRECT,
}
MODEL_TYPE = EnumMap(ModelType, model_pb2.ModelType)
DEFAULT_SOURCE = EnumMap(DefaultSource, pb.DefaultModelSource)


def invocation_type_to_pb(spec: InvocationSpec) -> pb.InvocationType:
    return pb.InvocationType(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        category=spec.category,
        tags=spec.tags,
        version=spec.version,
        inputs=[field_to_pb(field) for field in spec.inputs],
        outputs=[field_to_pb(field) for field in spec.outputs],
        output_type=spec.output_type,
    )


def field_to_pb(field: FieldSpec) -> pb.FieldSchema:
    message = pb.FieldSchema(
        name=field.name,
        title=field.title,
        description=field.description,
        type=field.type,
        required=field.required,
        input_kind=INPUT_KINDS[field.input_kind],
    )
    if field.default is not NO_DEFAULT:
        message.default.CopyFrom(json_format.ParseDict(field.default, struct_pb2.Value()))
    if field.constraints is not None:
        message.constraints.CopyFrom(constraints_to_pb(field.constraints))
    return message


def constraints_to_pb(constraints: Constraints) -> pb.FieldConstraints:
    limits = {
        name: getattr(constraints, name)
        for name in (
            "minimum",
            "maximum",
            "exclusive_minimum",
            "exclusive_maximum",
            "multiple_of",
            "min_length",
            "max_length",
        )
        if getattr(constraints, name) is not None
    }
    return pb.FieldConstraints(choices=constraints.choices, **limits)


def default_model_to_pb(default: DefaultModel) -> pb.DefaultModel:
    message = pb.DefaultModel(
        model_type=MODEL_TYPE.to_pb(default.model_type),
        model_key=default.model_key,
        source=DEFAULT_SOURCE.to_pb(default.source),
    )
    if default.update_time is not None:
        message.update_time.FromDatetime(default.update_time)
    return message
