"""Conversions between TensorStoreService's messages and the tensor store domain."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from easel.inference.v1 import tensor_store_service_pb2 as pb
from services.common.proto_enums import EnumMap
from services.inference.tensors.store import TensorInfo, TensorKind

KIND = EnumMap(TensorKind, pb.TensorKind)


def kind_filter(number: int) -> TensorKind | None:
    """The kind a ListTensors asks for; UNSPECIFIED is every kind, an unknown number
    INVALID_ARGUMENT."""
    return None if number == 0 else KIND.required(number, "kind")


def tensor_info_to_pb(info: TensorInfo) -> pb.TensorInfo:
    create_time = Timestamp()
    create_time.FromDatetime(info.create_time)
    return pb.TensorInfo(
        name=info.name,
        kind=KIND.to_pb(info.kind),
        shape=list(info.shape),
        dtype=info.dtype,
        size_bytes=info.size_bytes,
        create_time=create_time,
        generation_id=info.generation_id,
        session_id=info.session_id,
    )
