"""GenerationService over gRPC: each RPC is one call into the generations domain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc import aio

from easel.inference.v1 import generation_service_pb2 as pb
from easel.inference.v1 import generation_service_pb2_grpc
from services.common import paging
from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.inference import generation_convert as convert
from services.inference.generation.schedulers import SCHEDULERS
from services.inference.generations import Generations
from services.inference.pending import Pending


class GenerationServicer(generation_service_pb2_grpc.GenerationServiceServicer):
    def __init__(self, generations: Pending[Generations]) -> None:
        self._generations = generations

    async def CreateGeneration(
        self, request: pb.CreateGenerationRequest, context: aio.ServicerContext
    ) -> pb.CreateGenerationResponse:
        operation = convert.generation_request(request)
        options = convert.generation_options(request)
        generation = await self._generations.get().create(operation, options)
        return pb.CreateGenerationResponse(generation=convert.generation_to_pb(generation))

    async def GetGeneration(
        self, request: pb.GetGenerationRequest, context: aio.ServicerContext
    ) -> pb.GetGenerationResponse:
        full = convert.full_view(request.view, default_full=True)
        generation = self._generations.get().get(request.id)
        return pb.GetGenerationResponse(generation=convert.generation_to_pb(generation, full))

    async def ListGenerations(
        self, request: pb.ListGenerationsRequest, context: aio.ServicerContext
    ) -> pb.ListGenerationsResponse:
        full = convert.full_view(request.view, default_full=False)
        statuses = convert.statuses(list(request.statuses))
        fingerprint = [request.session_id, sorted(status.value for status in statuses)]
        generations = self._generations.get().list(request.session_id, statuses)
        page, next_token = paging.paginate(
            generations, request.page_size, request.page_token, fingerprint
        )
        return pb.ListGenerationsResponse(
            generations=[convert.generation_to_pb(generation, full) for generation in page],
            next_page_token=next_token,
        )

    async def CancelGeneration(
        self, request: pb.CancelGenerationRequest, context: aio.ServicerContext
    ) -> pb.CancelGenerationResponse:
        generation = self._generations.get().cancel(request.id)
        return pb.CancelGenerationResponse(generation=convert.generation_to_pb(generation))

    async def WaitGeneration(
        self, request: pb.WaitGenerationRequest, context: aio.ServicerContext
    ) -> pb.WaitGenerationResponse:
        full = convert.full_view(request.view, default_full=True)
        generation = await self._generations.get().wait(request.id)
        return pb.WaitGenerationResponse(generation=convert.generation_to_pb(generation, full))

    async def WatchInferenceEvents(
        self, request: pb.WatchInferenceEventsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchInferenceEventsResponse]:
        watch = self._generations.get().watch(convert.watch_filter(request))
        async for delivery in watch:
            event = convert.event_to_pb(delivery.event, delivery.dropped_before)
            yield pb.WatchInferenceEventsResponse(event=event)

    async def RunGeneration(
        self, request_iterator: AsyncIterator[pb.RunGenerationRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.RunGenerationResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("generation"):
            raise InvalidArgumentError(
                "the first message must be the generation", field="generation"
            )
        operation = convert.generation_request(first.generation)
        options = convert.generation_options(first.generation)
        generations = self._generations.get()
        listening: asyncio.Task[None] | None = None
        try:
            # Closed at once when the call ends, so a client that leaves cancels the work.
            async with contextlib.aclosing(generations.run(operation, options)) as deliveries:
                async for delivery in deliveries:
                    if listening is None:  # the first delivery, its snapshot, names it
                        generation_id = delivery.event.context.generation_id
                        listening = asyncio.create_task(
                            _cancel_on_request(request_iterator, generations, generation_id)
                        )
                    event = convert.event_to_pb(delivery.event, delivery.dropped_before)
                    yield pb.RunGenerationResponse(event=event)
        finally:
            if listening is not None:
                listening.cancel()

    async def ListSchedulers(
        self, request: pb.ListSchedulersRequest, context: aio.ServicerContext
    ) -> pb.ListSchedulersResponse:
        specs = sorted(SCHEDULERS.values(), key=lambda spec: spec.name)
        page, next_token = paging.paginate(specs, request.page_size, request.page_token, [])
        return pb.ListSchedulersResponse(
            schedulers=[convert.scheduler_to_pb(spec) for spec in page],
            next_page_token=next_token,
        )


async def _cancel_on_request(
    requests: AsyncIterator[pb.RunGenerationRequest], generations: Generations, generation_id: str
) -> None:
    """Cancels the generation of a RunGeneration call when the client asks."""
    async for message in requests:
        if message.HasField("cancel"):
            with contextlib.suppress(FailedPreconditionError):  # it has ended already
                generations.cancel(generation_id)
