"""The invoker's use of the model manager: which model an empty model input takes."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from easel.model_manager.v1 import model_pb2, model_record_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common.channels import open_channel
from services.common.error_status import from_rpc_error
from services.common.model_taxonomy import ModelType
from services.common.proto_enums import EnumMap
from services.common.settings import CommonSettings
from services.invoker.invocations.model_defaults import default_model_key

CALL_TIMEOUT_S = 10.0
PAGE_SIZE = 100

_TYPE = EnumMap(ModelType, model_pb2.ModelType)


class ModelRecordsClient:
    """Asks the model manager for installed models; build it inside the event loop.

    `configured` holds the default model key per type that the settings name; a type
    without one takes its only installed model.
    """

    def __init__(
        self, settings: CommonSettings, configured: Mapping[ModelType, str] | None = None
    ) -> None:
        self._channel = open_channel(settings.model_manager_address, settings)
        self._stub = model_record_service_pb2_grpc.ModelRecordServiceStub(self._channel)
        self._configured = dict(configured or {})

    async def close(self) -> None:
        await self._channel.close()

    async def keys_of_type(self, model_type: ModelType) -> list[str]:
        """The keys of every installed model of `model_type`."""
        keys: list[str] = []
        request = pb.ListModelsRequest(type=_TYPE.to_pb(model_type), page_size=PAGE_SIZE)
        while True:
            try:
                reply = await self._stub.ListModels(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from None
            keys += [model.key for model in reply.models]
            if not reply.next_page_token:
                return keys
            request.page_token = reply.next_page_token

    async def default_key(self, field: str, model_type: ModelType) -> str:
        """The model an empty input `field` of `model_type` takes (see `default_model_key`);
        the model manager is asked only when no default is configured."""
        installed = [] if model_type in self._configured else await self.keys_of_type(model_type)
        return default_model_key(field, model_type, self._configured, installed)
