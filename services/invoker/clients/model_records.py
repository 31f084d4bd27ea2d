"""The invoker's use of the model manager: which model an empty model input takes, and
the records a prompt's embedding triggers name."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from easel.model_manager.v1 import model_pb2, model_record_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common.channels import open_channel
from services.common.error_status import from_rpc_error
from services.common.model_taxonomy import BaseModelType, ModelType
from services.common.proto_enums import EnumMap
from services.common.settings import CommonSettings
from services.invoker.invocations.model_defaults import DefaultModels, default_model_key

CALL_TIMEOUT_S = 10.0
PAGE_SIZE = 100

_TYPE = EnumMap(ModelType, model_pb2.ModelType)
_BASE = EnumMap(BaseModelType, model_pb2.BaseModelType)


@dataclass(frozen=True)
class ModelSummary:
    """What the invoker needs of a model record."""

    key: str
    name: str
    base: BaseModelType
    type: ModelType


class ModelRecordsClient:
    """Asks the model manager for installed models; build it inside the event loop.

    `defaults` holds the default model per type (set ones and the setting's); a type
    without one takes its only installed model.
    """

    def __init__(self, settings: CommonSettings, defaults: DefaultModels | None = None) -> None:
        self._channel = open_channel(settings.model_manager_address, settings)
        self._stub = model_record_service_pb2_grpc.ModelRecordServiceStub(self._channel)
        self._defaults = defaults

    async def close(self) -> None:
        await self._channel.close()

    async def keys_of_type(self, model_type: ModelType) -> list[str]:
        """The keys of every installed model of `model_type`."""
        return [model.key for model in await self._list(type=_TYPE.to_pb(model_type))]

    async def named(self, name: str, model_type: ModelType) -> list[ModelSummary]:
        """Every installed model of `model_type` named exactly `name` (case included)."""
        return await self._list(name=name, type=_TYPE.to_pb(model_type))

    async def get(self, key: str) -> ModelSummary:
        """The record `key`; NotFoundError when there is none."""
        request = pb.GetModelRequest(key=key)
        try:
            reply = await self._stub.GetModel(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return _summary(reply.model)

    async def default_key(self, field: str, model_type: ModelType) -> str:
        """The model an empty input `field` of `model_type` takes (see `default_model_key`);
        the model manager is asked only when the type has no default."""
        chosen = {} if self._defaults is None else self._defaults.keys()
        installed = [] if model_type in chosen else await self.keys_of_type(model_type)
        return default_model_key(field, model_type, chosen, installed)

    async def _list(self, **filters: object) -> list[ModelSummary]:
        """Every record matching `filters` (ListModelsRequest fields), all pages."""
        found: list[ModelSummary] = []
        request = pb.ListModelsRequest(page_size=PAGE_SIZE, **filters)
        while True:
            try:
                reply = await self._stub.ListModels(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from None
            found += [_summary(model) for model in reply.models]
            if not reply.next_page_token:
                return found
            request.page_token = reply.next_page_token


def _summary(model: model_pb2.ModelConfig) -> ModelSummary:
    return ModelSummary(model.key, model.name, _BASE.from_pb(model.base), _TYPE.from_pb(model.type))
