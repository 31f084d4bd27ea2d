"""Conversions between sessions and SessionService messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import session_service_pb2 as pb
from services.common.error_status import code_for
from services.common.proto_enums import EnumMap
from services.invoker.clients.inference import ModelLoad
from services.invoker.execution import events as execution_events
from services.invoker.execution.state import NodeFailure
from services.invoker.graphs.graph import Edge, FieldRef, GraphNode, NodeSpec
from services.invoker.queue_convert import RUN_MODE, timestamp
from services.invoker.sessions.events import (
    InvocationProgress,
    ModelLoadEvent,
    RemoteEvent,
    SessionQueued,
    SessionSnapshot,
    SessionStarted,
    Stamped,
)
from services.invoker.sessions.manager import SETTLED, Session, SessionStatus, SessionView

STATUS = EnumMap(SessionStatus, graph_pb2.SessionStatus)
UNKNOWN = 2
"""google.rpc.Code.UNKNOWN: a node's own exception that is no domain error."""


def statuses_from_pb(values: Sequence[int]) -> list[SessionStatus]:
    """A `statuses` filter; UNSPECIFIED (or an unknown number) is INVALID_ARGUMENT naming
    the entry."""
    return [STATUS.required(value, f"statuses[{index}]") for index, value in enumerate(values)]


def failure_code(failure: NodeFailure) -> int:
    """The gRPC status code number of a node failure."""
    return UNKNOWN if failure.cause is None else code_for(failure.cause).value[0]


def node_spec_from_pb(node: graph_pb2.Node) -> NodeSpec:
    return NodeSpec(node.id, node.type, json_format.MessageToDict(node.inputs))


def edge_from_pb(edge: graph_pb2.Edge) -> Edge:
    return Edge(
        FieldRef(edge.source.node_id, edge.source.field),
        FieldRef(edge.destination.node_id, edge.destination.field),
    )


def node_to_pb(node: GraphNode) -> graph_pb2.Node:
    message = graph_pb2.Node(id=node.id, type=node.type.spec.name)
    message.inputs.update(dict(node.inputs))
    return message


def edge_to_pb(edge: Edge) -> graph_pb2.Edge:
    return graph_pb2.Edge(
        source=graph_pb2.EdgeConnection(node_id=edge.source.node_id, field=edge.source.field),
        destination=graph_pb2.EdgeConnection(
            node_id=edge.destination.node_id, field=edge.destination.field
        ),
    )


def node_error_to_pb(failure: NodeFailure) -> graph_pb2.NodeError:
    return graph_pb2.NodeError(
        error_type=failure.error_type, error=failure.error, error_code=failure_code(failure)
    )


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A Struct of JSON values (a node's outputs in JSON form); `update` sets them field by
    field, several times faster than json_format.ParseDict."""
    message = struct_pb2.Struct()
    message.update(values)
    return message


def session_to_pb(session: Session | SessionView, message: pb.Session | None = None) -> pb.Session:
    """The session (now, or as a view froze it) as a message; written into `message` (a
    response's field) when given. Everything is set in place, never built apart and copied
    in, so each node, edge and result is converted once per call (a copy would go over the
    whole graph again)."""
    if message is None:
        message = pb.Session()
    view = session.view() if isinstance(session, Session) else session
    message.id = view.id
    _fill_graph(message.graph, view)
    _fill_state(message.state, view)
    message.status = STATUS.to_pb(view.status)
    message.queue_item_id = view.queue_item_id
    message.create_time.FromDatetime(view.create_time)
    message.update_time.FromDatetime(view.update_time)
    return message


def _fill_graph(message: graph_pb2.Graph, view: SessionView) -> None:
    for node in view.nodes:
        added = message.nodes.add(id=node.id, type=node.type.spec.name)
        added.inputs.update(dict(node.inputs))
    for edge in view.edges:
        connection = message.edges.add()
        connection.source.node_id = edge.source.node_id
        connection.source.field = edge.source.field
        connection.destination.node_id = edge.destination.node_id
        connection.destination.field = edge.destination.field


def _fill_state(message: graph_pb2.GraphExecutionState, view: SessionView) -> None:
    message.executed_node_ids.extend(view.executed)
    for key, outputs in view.results.items():
        message.results[key].update(dict(outputs))
    for key, failure in view.errors.items():
        message.errors[key].CopyFrom(node_error_to_pb(failure))
    message.running_node_id = view.running
    message.ready_node_ids.extend(view.ready)
    message.pending_node_ids.extend(view.pending)


def _model_load_to_pb(message: pb.SessionEvent, load: ModelLoad) -> None:
    """Sets the model-load payload of the load's phase, field for field."""
    if load.phase == "failed":
        message.model_load_failed.CopyFrom(
            pb.ModelLoadFailed(
                model_key=load.model_key,
                submodel_type=load.submodel_type,  # type: ignore[arg-type]
                error_type=load.error_type,
                error=load.error,
                error_code=load.error_code,
            )
        )
        return
    loading = {
        "model_key": load.model_key,
        "submodel_type": load.submodel_type,
        "hash": load.hash,
        "path": load.path,
        "device": load.device,
        "precision": load.precision,
    }
    if load.phase == "started":
        message.model_load_started.CopyFrom(pb.ModelLoadStarted(**loading))
        return
    completed = pb.ModelLoadCompleted(
        **loading, size_bytes=load.size_bytes, cache_hit=load.cache_hit
    )
    completed.load_duration.FromTimedelta(timedelta(seconds=load.load_seconds))
    message.model_load_completed.CopyFrom(completed)


def event_to_pb(stamped: Stamped, dropped: int, previews: bool = False) -> pb.SessionEvent:
    """A session event; `dropped`: events the watcher missed just before it; `previews`:
    whether progress carries its preview image."""
    event = stamped.event
    if isinstance(event, RemoteEvent):
        message = pb.SessionEvent.FromString(event.message)
        message.dropped_count = dropped
        return message
    message = pb.SessionEvent(
        time=timestamp(stamped.time),
        session_id=event.session_id,
        queue_item_id=event.queue_item_id,
        dropped_count=dropped,
    )
    match event:
        case SessionSnapshot(session=session):
            session_to_pb(session, message.snapshot.session)
        case SessionQueued(run_mode=mode):
            message.session_queued.run_mode = RUN_MODE.to_pb(mode)
        case SessionStarted(run_mode=mode):
            message.session_started.run_mode = RUN_MODE.to_pb(mode)
        case execution_events.InvocationStarted(node_id=node_id, type=type_name):
            message.node_id = node_id
            message.invocation_started.type = type_name
        case InvocationProgress(node_id=node_id, step=step, total_steps=total, preview=preview):
            message.node_id = node_id
            message.invocation_progress.step = step
            message.invocation_progress.total_steps = total
            if previews and preview is not None:
                message.invocation_progress.preview.CopyFrom(
                    pb.PreviewImage(png=preview.png, width=preview.width, height=preview.height)
                )
        case ModelLoadEvent(node_id=node_id, load=load):
            message.node_id = node_id
            _model_load_to_pb(message, load)
        case execution_events.InvocationComplete():
            message.node_id = event.node_id
            message.invocation_complete.CopyFrom(
                pb.InvocationComplete(
                    type=event.type,
                    output_type=event.output_type,
                    outputs=struct(dict(event.outputs)),
                    cache_hit=event.cache_hit,
                )
            )
        case execution_events.InvocationError(node_id=node_id, type=type_name, failure=failure):
            message.node_id = node_id
            message.invocation_error.CopyFrom(
                pb.InvocationError(
                    type=type_name,
                    error_type=failure.error_type,
                    error=failure.error,
                    error_code=failure_code(failure),
                )
            )
        case execution_events.SessionComplete(status=status):
            message.session_complete.status = STATUS.to_pb(SETTLED[status])
        case execution_events.SessionCancelled():
            message.session_cancelled.SetInParent()
        case execution_events.SessionError(node_id=node_id, failure=failure):
            message.node_id = node_id
            message.session_error.CopyFrom(
                pb.SessionError(
                    error_type=failure.error_type,
                    error=failure.error,
                    error_code=failure_code(failure),
                )
            )
    return message


def event_to_bytes(stamped: Stamped) -> bytes:
    """A session event as another invoker process passes it on (no preview image)."""
    return event_to_pb(stamped, 0).SerializeToString()


def event_from_bytes(data: bytes) -> Stamped:
    """An event another invoker process sent (`event_to_bytes`), for this one's watchers."""
    message = pb.SessionEvent.FromString(data)
    event = RemoteEvent(message.session_id, message.queue_item_id, data)
    return Stamped(message.time.ToDatetime(tzinfo=UTC), event)
