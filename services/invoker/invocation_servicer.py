"""InvocationService over gRPC: reads of the registry built at start-up."""

from __future__ import annotations

from grpc import aio

from easel.invoker.v1 import invocation_service_pb2 as pb
from easel.invoker.v1 import invocation_service_pb2_grpc
from services.common.paging import paginate
from services.invoker import invocation_convert as convert
from services.invoker.invocations.registry import InvocationRegistry


class InvocationServicer(invocation_service_pb2_grpc.InvocationServiceServicer):
    def __init__(self, registry: InvocationRegistry) -> None:
        self._registry = registry

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
