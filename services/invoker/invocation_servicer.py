"""InvocationService over gRPC: reads of the registry built at start-up, and the default
models per type."""

from __future__ import annotations

from grpc import aio

from easel.invoker.v1 import invocation_service_pb2 as pb
from easel.invoker.v1 import invocation_service_pb2_grpc
from services.common.errors import InvalidArgumentError
from services.common.paging import paginate
from services.invoker import invocation_convert as convert
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.invocations.model_defaults import DefaultModels
from services.invoker.invocations.registry import InvocationRegistry


class InvocationServicer(invocation_service_pb2_grpc.InvocationServiceServicer):
    def __init__(
        self, registry: InvocationRegistry, defaults: DefaultModels, models: ModelRecordsClient
    ) -> None:
        self._registry = registry
        self._defaults = defaults
        self._models = models

    async def ListInvocationTypes(
        self, request: pb.ListInvocationTypesRequest, context: aio.ServicerContext
    ) -> pb.ListInvocationTypesResponse:
        specs, next_token = paginate(
            self._registry.specs(request.category),
            request.page_size,
            request.page_token,
            {"category": request.category},
        )
        return pb.ListInvocationTypesResponse(
            invocation_types=[convert.invocation_type_to_pb(spec) for spec in specs],
            next_page_token=next_token,
        )

    async def GetInvocationType(
        self, request: pb.GetInvocationTypeRequest, context: aio.ServicerContext
    ) -> pb.GetInvocationTypeResponse:
        spec = self._registry.get(request.name).spec
        return pb.GetInvocationTypeResponse(invocation_type=convert.invocation_type_to_pb(spec))

    async def SetDefaultModel(
        self, request: pb.SetDefaultModelRequest, context: aio.ServicerContext
    ) -> pb.SetDefaultModelResponse:
        model_type = convert.MODEL_TYPE.required(request.model_type, "model_type")
        if not request.model_key:
            raise InvalidArgumentError("model_key must not be empty", field="model_key")
        model = await self._models.get(request.model_key)
        default = await self._defaults.set(model_type, request.model_key, model.type)
        return pb.SetDefaultModelResponse(default_model=convert.default_model_to_pb(default))

    async def DeleteDefaultModel(
        self, request: pb.DeleteDefaultModelRequest, context: aio.ServicerContext
    ) -> pb.DeleteDefaultModelResponse:
        model_type = convert.MODEL_TYPE.required(request.model_type, "model_type")
        default = await self._defaults.delete(model_type)
        if default is None:
            return pb.DeleteDefaultModelResponse()
        return pb.DeleteDefaultModelResponse(default_model=convert.default_model_to_pb(default))

    async def ListDefaultModels(
        self, request: pb.ListDefaultModelsRequest, context: aio.ServicerContext
    ) -> pb.ListDefaultModelsResponse:
        defaults = [convert.default_model_to_pb(default) for default in self._defaults.list()]
        return pb.ListDefaultModelsResponse(default_models=defaults)
