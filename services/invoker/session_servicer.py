"""SessionService over gRPC: a thin mapping onto the session manager."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from easel.invoker.v1 import session_service_pb2 as pb
from easel.invoker.v1 import session_service_pb2_grpc
from services.common.paging import paginate
from services.invoker import session_convert as convert
from services.invoker.queue_convert import queue_item_to_pb
from services.invoker.sessions.manager import SessionManager


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        nodes = [convert.node_spec_from_pb(node) for node in request.graph.nodes]
        edges = [convert.edge_from_pb(edge) for edge in request.graph.edges]
        session = self._sessions.build(nodes, edges)
        response = pb.CreateSessionResponse()
        convert.session_to_pb(session, response.session)
        self._sessions.keep(session)  # only once the reply is made: a failure keeps nothing
        await self._sessions.saved()  # written, so every invoker of a shared database has it
        return response

    async def GetSession(
        self, request: pb.GetSessionRequest, context: aio.ServicerContext
    ) -> pb.GetSessionResponse:
        session = self._sessions.get(request.session_id)
        response = pb.GetSessionResponse()
        convert.session_to_pb(session, response.session)
        return response

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        statuses = convert.statuses_from_pb(request.statuses)
        sessions, next_token = paginate(
            self._sessions.list(statuses),
            request.page_size,
            request.page_token,
            {"statuses": sorted(statuses)},
        )
        response = pb.ListSessionsResponse(next_page_token=next_token)
        for session in sessions:
            convert.session_to_pb(session, response.sessions.add())
        return response

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: aio.ServicerContext
    ) -> pb.DeleteSessionResponse:
        self._sessions.delete(request.session_id)
        return pb.DeleteSessionResponse()

    async def AddNode(
        self, request: pb.AddNodeRequest, context: aio.ServicerContext
    ) -> pb.AddNodeResponse:
        node, edges, status = self._sessions.add_node(
            request.session_id,
            convert.node_spec_from_pb(request.node),
            [convert.edge_from_pb(link) for link in request.links],
        )
        return pb.AddNodeResponse(
            node=convert.node_to_pb(node),
            edges=[convert.edge_to_pb(edge) for edge in edges],
            status=convert.STATUS.to_pb(status),
        )

    async def AddEdge(
        self, request: pb.AddEdgeRequest, context: aio.ServicerContext
    ) -> pb.AddEdgeResponse:
        edge = self._sessions.add_edge(request.session_id, convert.edge_from_pb(request.edge))
        return pb.AddEdgeResponse(edge=convert.edge_to_pb(edge))

    async def InvokeSession(
        self, request: pb.InvokeSessionRequest, context: aio.ServicerContext
    ) -> pb.InvokeSessionResponse:
        item = await self._sessions.invoke(request.session_id, request.all, request.priority)
        return pb.InvokeSessionResponse(queue_item=queue_item_to_pb(item))

    async def CancelSession(
        self, request: pb.CancelSessionRequest, context: aio.ServicerContext
    ) -> pb.CancelSessionResponse:
        item = await self._sessions.cancel(request.session_id)
        return pb.CancelSessionResponse(queue_item=queue_item_to_pb(item))

    async def WaitSession(
        self, request: pb.WaitSessionRequest, context: aio.ServicerContext
    ) -> pb.WaitSessionResponse:
        session = await self._sessions.wait(request.session_id)
        response = pb.WaitSessionResponse()
        convert.session_to_pb(session, response.session)
        return response

    async def WatchSessionEvents(
        self, request: pb.WatchSessionEventsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchSessionEventsResponse]:
        watch = self._sessions.watch(request.session_ids, request.include_previews)
        async for delivery in watch:
            event = convert.event_to_pb(
                delivery.event, delivery.dropped_before, request.include_previews
            )
            yield pb.WatchSessionEventsResponse(event=event)
