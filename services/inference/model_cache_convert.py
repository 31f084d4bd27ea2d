"""Conversions between ModelCacheService's messages (and the model-load events) and the
model cache domain."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from easel.inference.v1 import generation_service_pb2 as events_pb
from easel.inference.v1 import model_cache_service_pb2 as pb
from easel.model_manager.v1 import model_pb2
from services.common.error_status import code_for
from services.common.model_taxonomy import BaseModelType, ModelType, SubModelType
from services.common.proto_enums import EnumMap
from services.inference.events import (
    EventContext,
    ModelLoad,
    ModelLoadCompleted,
    ModelLoadFailed,
    ModelLoadStarted,
)
from services.inference.model_cache import CacheEntry, CacheStats
from services.inference.model_loads import LoadedModel
from services.inference.torch_runtime import dtype_name

SUBMODEL = EnumMap(SubModelType, model_pb2.SubModelType)
BASE = EnumMap(BaseModelType, model_pb2.BaseModelType)
TYPE = EnumMap(ModelType, model_pb2.ModelType)

ModelLoadEvent = ModelLoadStarted | ModelLoadCompleted | ModelLoadFailed


def submodel_from_pb(number: int) -> SubModelType | None:
    """The requested part; UNSPECIFIED is None, an unknown number INVALID_ARGUMENT."""
    return None if number == 0 else SUBMODEL.required(number, "submodel_type")


def loaded_to_pb(loaded: LoadedModel) -> pb.LoadedModel:
    entry = loaded.entry
    return pb.LoadedModel(
        key=entry.record.key,
        submodel_type=SUBMODEL.to_pb(entry.submodel),
        base=BASE.to_pb(entry.record.base),
        type=TYPE.to_pb(entry.record.type),
        hash=entry.record.hash,
        path=str(entry.path),
        device=entry.device,
        precision=_precision(entry),
        size_bytes=entry.size_bytes,
        load_duration=_duration(loaded.duration_s),
        cache_hit=loaded.cache_hit,
    )


def cached_to_pb(entry: CacheEntry) -> pb.CachedModel:
    return pb.CachedModel(
        key=entry.record.key,
        submodel_type=SUBMODEL.to_pb(entry.submodel),
        size_bytes=entry.size_bytes,
        device=entry.device,
        precision=_precision(entry),
        locked=entry.locks > 0,
        last_used_time=timestamp(entry.last_used),
    )


def stats_to_pb(stats: CacheStats) -> pb.CacheStats:
    return pb.CacheStats(
        ram_used_bytes=stats.ram_used_bytes,
        ram_limit_bytes=stats.ram_limit_bytes,
        vram_used_bytes=stats.vram_used_bytes,
        vram_limit_bytes=stats.vram_limit_bytes,
        hits=stats.hits,
        misses=stats.misses,
        evictions=stats.evictions,
        loaded_model_count=stats.loaded_model_count,
        locked_model_count=stats.locked_model_count,
        execution_device=stats.execution_device,
    )


def model_load_event_to_pb(event: ModelLoadEvent, dropped: int = 0) -> events_pb.InferenceEvent:
    """A model-load event in the InferenceEvent envelope of WatchInferenceEvents."""
    message = event_envelope(event.context, event.time, dropped)
    if isinstance(event, ModelLoadStarted):
        message.model_load_started.CopyFrom(events_pb.ModelLoadStarted(**_load_fields(event.load)))
    elif isinstance(event, ModelLoadCompleted):
        message.model_load_completed.CopyFrom(
            events_pb.ModelLoadCompleted(
                **_load_fields(event.load),
                size_bytes=event.size_bytes,
                load_duration=_duration(event.duration_s),
                cache_hit=event.cache_hit,
            )
        )
    else:
        message.model_load_failed.CopyFrom(
            events_pb.ModelLoadFailed(
                model_key=event.model_key,
                submodel_type=SUBMODEL.to_pb(event.submodel),
                error_type=event.error.reason,
                error=event.error.message,
                error_code=code_for(event.error).value[0],
            )
        )
    return message


def event_envelope(context: EventContext, time: float, dropped: int) -> events_pb.InferenceEvent:
    """The InferenceEvent every event of WatchInferenceEvents travels in, payload unset."""
    return events_pb.InferenceEvent(
        time=timestamp(time),
        generation_id=context.generation_id,
        session_id=context.session_id,
        invocation_id=context.invocation_id,
        dropped_count=dropped,
    )


def _load_fields(load: ModelLoad) -> dict[str, object]:
    return {
        "model_key": load.model_key,
        "submodel_type": SUBMODEL.to_pb(load.submodel),
        "hash": load.hash,
        "path": load.path,
        "device": load.device,
        "precision": load.precision,
    }


def _precision(entry: CacheEntry) -> str:
    return dtype_name(entry.dtype) if entry.dtype is not None else ""


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp
