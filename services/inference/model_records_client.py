"""Inference's use of the model manager: a model's record by key, as a `ModelRecord`.

The only inference module that sees the model manager's wire types. Relative record paths
resolve against the model manager's own `models_dir` (asked once, with GetStoreInfo), so
the two processes need not share a setting. An unknown key stays NOT_FOUND (with the model
manager's reason and metadata); a model manager that cannot be reached, or does not answer
in time, is UNAVAILABLE with reason MODEL_MANAGER_UNAVAILABLE.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from easel.model_manager.v1 import model_pb2, model_record_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common import errors
from services.common.channels import open_channel
from services.common.error_status import from_rpc_error
from services.common.model_taxonomy import (
    BaseModelType,
    ModelFormat,
    ModelRepoVariant,
    ModelType,
    ModelVariantType,
    SchedulerPredictionType,
)
from services.common.proto_enums import EnumMap
from services.common.settings import CommonSettings
from services.inference.model_records import ModelRecord

CALL_TIMEOUT_S = 10.0
UNAVAILABLE_REASON = "MODEL_MANAGER_UNAVAILABLE"

_BASE = EnumMap(BaseModelType, model_pb2.BaseModelType)
_TYPE = EnumMap(ModelType, model_pb2.ModelType)
_FORMAT = EnumMap(ModelFormat, model_pb2.ModelFormat)
_REPO_VARIANT = EnumMap(ModelRepoVariant, model_pb2.ModelRepoVariant)
_VARIANT = EnumMap(ModelVariantType, model_pb2.ModelVariantType)
_PREDICTION = EnumMap(SchedulerPredictionType, model_pb2.SchedulerPredictionType)
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ModelRecordsClient:
    """Looks model records up in the model manager; build it inside the event loop."""

    def __init__(self, settings: CommonSettings) -> None:
        self._channel = open_channel(settings.model_manager_address, settings)
        self._stub = model_record_service_pb2_grpc.ModelRecordServiceStub(self._channel)
        self._models_dir: Path | None = None

    async def close(self) -> None:
        await self._channel.close()

    async def get(self, key: str) -> ModelRecord:
        """The record of `key`; NotFoundError when the model manager knows no such key."""
        models_dir = await self.models_dir()
        reply = await self._call(self._stub.GetModel, pb.GetModelRequest(key=key))
        return record_from_pb(reply.model, models_dir)

    async def models_dir(self) -> Path:
        """The model manager's models directory, against which record paths resolve."""
        if self._models_dir is None:
            reply = await self._call(self._stub.GetStoreInfo, pb.GetStoreInfoRequest())
            self._models_dir = Path(reply.models_dir)
        return self._models_dir

    async def _call(self, method, request):
        try:
            return await method(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNREACHABLE:
                raise errors.UnavailableError(
                    f"the model manager cannot be reached: {error.details()}",
                    reason=UNAVAILABLE_REASON,
                ) from None
            raise from_rpc_error(error) from None


def record_from_pb(config: model_pb2.ModelConfig, models_dir: Path) -> ModelRecord:
    """The domain record of a `ModelConfig`, its path made absolute against `models_dir`."""
    main = config.main if config.WhichOneof("settings") == "main" else None
    upscaler = config.upscaler if config.WhichOneof("settings") == "upscaler" else None
    return ModelRecord(
        key=config.key,
        name=config.name,
        base=_BASE.from_pb(config.base),
        type=_TYPE.from_pb(config.type),
        format=_FORMAT.from_pb(config.format),
        path=models_dir / config.path,
        hash=config.hash,
        repo_variant=_REPO_VARIANT.from_pb(config.repo_variant),
        variant=_VARIANT.from_pb(main.variant) if main else None,
        prediction_type=_PREDICTION.from_pb(main.prediction_type) if main else None,
        upcast_attention=main.upcast_attention if main else False,
        config_path=main.config_path if main else "",
        upscale_factor=upscaler.scale if upscaler else 0,
    )
