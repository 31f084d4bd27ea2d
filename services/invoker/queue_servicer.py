"""QueueService over gRPC: a thin mapping onto the invocation queue."""

from __future__ import annotations

from grpc import aio

from easel.invoker.v1 import queue_service_pb2 as pb
from easel.invoker.v1 import queue_service_pb2_grpc
from services.common.errors import InvalidArgumentError
from services.invoker import queue_convert as convert
from services.invoker import session_convert
from services.invoker.queue.items import QueueItemStatus
from services.invoker.sessions.manager import SessionManager


class QueueServicer(queue_service_pb2_grpc.QueueServiceServicer):
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._queue = sessions.queue

    async def ListQueueItems(
        self, request: pb.ListQueueItemsRequest, context: aio.ServicerContext
    ) -> pb.ListQueueItemsResponse:
        items, next_token = await self._queue.list_items(
            statuses=_statuses(request.statuses),
            session_id=request.session_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListQueueItemsResponse(
            queue_items=[convert.queue_item_to_pb(item) for item in items],
            next_page_token=next_token,
        )

    async def GetQueueItem(
        self, request: pb.GetQueueItemRequest, context: aio.ServicerContext
    ) -> pb.GetQueueItemResponse:
        item = await self._queue.get(request.id)
        return pb.GetQueueItemResponse(queue_item=convert.queue_item_to_pb(item))

    async def CancelQueueItem(
        self, request: pb.CancelQueueItemRequest, context: aio.ServicerContext
    ) -> pb.CancelQueueItemResponse:
        item = await self._queue.cancel(request.id)
        return pb.CancelQueueItemResponse(queue_item=convert.queue_item_to_pb(item))

    async def ClearQueue(
        self, request: pb.ClearQueueRequest, context: aio.ServicerContext
    ) -> pb.ClearQueueResponse:
        return pb.ClearQueueResponse(cancelled_count=len(await self._queue.clear()))

    async def GetQueueStatus(
        self, request: pb.GetQueueStatusRequest, context: aio.ServicerContext
    ) -> pb.GetQueueStatusResponse:
        status = await self._queue.status()
        return pb.GetQueueStatusResponse(status=convert.queue_status_to_pb(status))

    async def PauseQueue(
        self, request: pb.PauseQueueRequest, context: aio.ServicerContext
    ) -> pb.PauseQueueResponse:
        return pb.PauseQueueResponse(status=convert.queue_status_to_pb(await self._queue.pause()))

    async def ResumeQueue(
        self, request: pb.ResumeQueueRequest, context: aio.ServicerContext
    ) -> pb.ResumeQueueResponse:
        status = await self._queue.resume()
        return pb.ResumeQueueResponse(status=convert.queue_status_to_pb(status))

    async def EnqueueBatch(
        self, request: pb.EnqueueBatchRequest, context: aio.ServicerContext
    ) -> pb.EnqueueBatchResponse:
        mode = convert.BATCH_MODES.get(request.mode)
        if mode is None:
            raise InvalidArgumentError("mode must be ZIP or PRODUCT", field="mode")
        items = await self._sessions.enqueue_batch(
            [session_convert.node_spec_from_pb(node) for node in request.graph.nodes],
            [session_convert.edge_from_pb(edge) for edge in request.graph.edges],
            [convert.batch_field_from_pb(field) for field in request.fields],
            mode,
            request.all,
            request.priority,
        )
        return pb.EnqueueBatchResponse(queue_items=[convert.queue_item_to_pb(i) for i in items])


def _statuses(values: list[int]) -> list[QueueItemStatus]:
    statuses = []
    for index, value in enumerate(values):
        status = convert.STATUSES_FROM_PB.get(value)
        if status is None:
            raise InvalidArgumentError(
                "a status filter must name a status", field=f"statuses[{index}]"
            )
        statuses.append(status)
    return statuses
