"""SessionService and QueueService against a real invoker process: math graphs run over
the wire, AddNode with history and "*" links, error isolation, fan-out, priority order,
and every error reason the two services' protos list, each provoked over the wire and
leaving the whole session (or queue item) as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from clients.sdk import EaselClient
from clients.sdk.graphs import edge, node
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as pb
from services.common import errors
from tests.conftest import SUITE_TOKEN
from tests.processes import client_settings, start_service, suite_env, wait_serving

BLOCKING_NODE = '''
from typing import ClassVar

from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputField, OutputField


class BlockOutput(BaseOutput):
    output_type: ClassVar[str] = "block_output"
    done: bool = OutputField(description="Never set: the node only ends when cancelled.")


class BlockInvocation(BaseInvocation):
    """Waits until its run is cancelled."""

    invocation_type: ClassVar[str] = "block"
    cacheable: ClassVar[bool] = False
    value: int = InputField(0, description="Unused: an input for an edge to target.")

    async def invoke(self, context) -> BlockOutput:
        await context.cancelled.wait()
        context.raise_if_cancelled()
        return BlockOutput(done=True)


class StepsInvocation(BaseInvocation):
    """Reports two steps of progress."""

    invocation_type: ClassVar[str] = "steps"
    cacheable: ClassVar[bool] = False

    async def invoke(self, context) -> BlockOutput:
        context.progress(1, 2)
        context.progress(2, 2)
        return BlockOutput(done=True)
'''


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EaselClient]:
    base = tmp_path_factory.mktemp("sessions")
    root = base / "root"
    (root / "nodes").mkdir(parents=True)
    (root / "nodes" / "testing.py").write_text(BLOCKING_NODE)
    env = suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)
    service = start_service("invoker", env, base)
    try:
        wait_serving(service)
        with EaselClient(client_settings(env)) as easel:
            yield easel
    finally:
        service.stop()


def create(client: EaselClient, nodes=(), edges=()) -> pb.Session:
    request = pb.CreateSessionRequest(graph=graph_pb2.Graph(nodes=nodes, edges=edges))
    return client.sessions.CreateSession(request).session


def run(client: EaselClient, session_id: str, *, all: bool = True) -> pb.Session:
    client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session_id, all=all))
    request = pb.WaitSessionRequest(session_id=session_id)
    return client.sessions.WaitSession(request, timeout=30).session


def get(client: EaselClient, session_id: str) -> pb.Session:
    return client.sessions.GetSession(pb.GetSessionRequest(session_id=session_id)).session


def results(session: pb.Session) -> dict[str, dict[str, Any]]:
    return {key: json_format.MessageToDict(value) for key, value in session.state.results.items()}


def math_graph() -> tuple[list[graph_pb2.Node], list[graph_pb2.Edge]]:
    """(2 + 3) * 4."""
    return (
        [node("sum", "add", a=2, b=3), node("product", "mul", b=4)],
        [edge("sum.value", "product.a")],
    )


def test_a_math_graph_runs_whole_and_its_results_are_read_back(client):
    session = create(client, *math_graph())
    assert session.status == graph_pb2.SESSION_STATUS_IDLE
    assert list(session.state.ready_node_ids) == ["sum"]

    done = run(client, session.id)

    assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
    assert list(done.state.executed_node_ids) == ["sum", "product"]
    assert results(done) == {"sum": {"value": 5}, "product": {"value": 20}}
    assert done.queue_item_id > 0
    item = client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=done.queue_item_id))
    assert item.queue_item.status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED


def test_add_node_with_history_and_star_links_then_invoke_next(client):
    session = create(client, [node("first", "integer", value=7)])
    assert run(client, session.id, all=False).status == graph_pb2.SESSION_STATUS_COMPLETED

    history_link = graph_pb2.Edge(
        source=graph_pb2.EdgeConnection(node_id="-1", field="value"),
        destination=graph_pb2.EdgeConnection(field="a"),
    )
    added = client.sessions.AddNode(
        pb.AddNodeRequest(
            session_id=session.id, node=node("double", "mul", b=2), links=[history_link]
        )
    )
    assert added.status == graph_pb2.SESSION_STATUS_IDLE
    assert list(added.edges) == [edge("first.value", "double.a")]
    star_link = graph_pb2.Edge(source=graph_pb2.EdgeConnection(node_id="double", field="*"))
    added = client.sessions.AddNode(
        pb.AddNodeRequest(session_id=session.id, node=node("echo", "integer"), links=[star_link])
    )
    assert list(added.edges) == [edge("double.value", "echo.value")]

    after_next = run(client, session.id, all=False)
    assert after_next.status == graph_pb2.SESSION_STATUS_IDLE
    assert list(after_next.state.executed_node_ids) == ["first", "double"]
    assert run(client, session.id, all=False).status == graph_pb2.SESSION_STATUS_COMPLETED
    assert results(get(client, session.id))["echo"] == {"value": 14}


def test_a_failed_node_stops_only_its_dependants(client):
    session = create(
        client,
        [
            node("broken", "div", a=1, b=0),
            node("after", "add", b=1),
            node("independent", "add", a=1, b=1),
        ],
        [edge("broken.value", "after.a")],
    )

    done = run(client, session.id)

    assert done.status == graph_pb2.SESSION_STATUS_FAILED
    assert results(done) == {"independent": {"value": 2}}
    assert set(done.state.errors) == {"broken"}
    assert list(done.state.pending_node_ids) == ["after"]
    item = client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=done.queue_item_id))
    assert item.queue_item.status == queue_pb.QUEUE_ITEM_STATUS_FAILED
    assert item.queue_item.error_node_id == "broken"
    assert item.queue_item.error_type == done.state.errors["broken"].error_type


def test_iterate_and_collect_fan_out_over_the_wire(client):
    session = create(
        client,
        [
            node("range", "range", start=0, stop=3),
            node("iterate", "iterate"),
            node("times", "mul", b=10),
            node("plus", "add", b=1),
            node("collect", "collect"),
        ],
        [
            edge("range.collection", "iterate.collection"),
            edge("iterate.item", "times.a"),
            edge("times.value", "plus.a"),
            edge("plus.value", "collect.item"),
        ],
    )

    done = run(client, session.id)

    assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
    assert results(done)["collect"] == {"collection": [1, 11, 21]}
    assert [results(done)[f"plus#{index}"]["value"] for index in range(3)] == [1, 11, 21]


def test_the_queue_runs_sessions_by_priority(client):
    client.queue.PauseQueue(queue_pb.PauseQueueRequest())
    try:
        low = create(client, [node("one", "integer", value=1)])
        high = create(client, [node("two", "integer", value=2)])
        low_item = client.sessions.InvokeSession(
            pb.InvokeSessionRequest(session_id=low.id, all=True, priority=0)
        ).queue_item
        high_item = client.sessions.InvokeSession(
            pb.InvokeSessionRequest(session_id=high.id, all=True, priority=5)
        ).queue_item
        assert get(client, low.id).status == graph_pb2.SESSION_STATUS_QUEUED
        assert high_item.priority == 5
    finally:
        client.queue.ResumeQueue(queue_pb.ResumeQueueRequest())
    for session in (low, high):
        client.sessions.WaitSession(pb.WaitSessionRequest(session_id=session.id), timeout=30)

    def item(queue_item_id: int) -> queue_pb.QueueItem:
        request = queue_pb.GetQueueItemRequest(id=queue_item_id)
        return client.queue.GetQueueItem(request).queue_item

    first, second = item(high_item.id), item(low_item.id)
    assert first.status == second.status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED
    assert first.end_time.ToDatetime() <= second.start_time.ToDatetime()


def test_list_and_delete_sessions(client):
    session = create(client)
    listed = client.sessions.ListSessions(pb.ListSessionsRequest(page_size=1))
    assert [s.id for s in listed.sessions] == [session.id]
    assert listed.next_page_token

    client.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=session.id))
    with pytest.raises(errors.NotFoundError):
        get(client, session.id)


def test_watching_a_session_gives_its_snapshot_then_its_events_in_order(client):
    session = create(client, *math_graph())
    stream = client.sessions.WatchSessionEvents(
        pb.WatchSessionEventsRequest(session_ids=[session.id]), timeout=30
    )
    seen = []
    try:
        for response in stream:
            event = response.event
            seen.append((event.WhichOneof("payload"), event.node_id))
            if event.HasField("snapshot"):
                assert event.snapshot.session.id == session.id
                client.sessions.InvokeSession(
                    pb.InvokeSessionRequest(session_id=session.id, all=True)
                )
            if event.HasField("session_complete"):
                assert event.session_complete.status == graph_pb2.SESSION_STATUS_COMPLETED
                break
            if event.HasField("invocation_complete") and event.node_id == "product":
                assert json_format.MessageToDict(event.invocation_complete.outputs) == {"value": 20}
    finally:
        stream.cancel()

    assert seen == [
        ("snapshot", ""),
        ("session_queued", ""),
        ("session_started", ""),
        ("invocation_started", "sum"),
        ("invocation_complete", "sum"),
        ("invocation_started", "product"),
        ("invocation_complete", "product"),
        ("session_complete", ""),
    ]


def batch_field(node_id: str, field: str, values: list[Any]) -> queue_pb.BatchField:
    message = queue_pb.BatchField(node_id=node_id, field=field)
    message.values.extend(values)
    return message


def test_a_batch_runs_one_session_per_combination(client):
    nodes, edges = math_graph()
    request = queue_pb.EnqueueBatchRequest(
        graph=graph_pb2.Graph(nodes=nodes, edges=edges),
        fields=[batch_field("sum", "a", [1, 2]), batch_field("product", "b", [10, 100])],
        mode=queue_pb.BATCH_MODE_PRODUCT,
        all=True,
    )
    items = client.queue.EnqueueBatch(request).queue_items

    products = []
    for item in items:
        assert item.status == queue_pb.QUEUE_ITEM_STATUS_PENDING
        request = pb.WaitSessionRequest(session_id=item.session_id)
        done = client.sessions.WaitSession(request, timeout=30).session
        products.append(results(done)["product"]["value"])
    assert products == [40, 400, 50, 500]


def test_clear_queue_cancels_pending_runs_and_their_sessions(client):
    client.queue.PauseQueue(queue_pb.PauseQueueRequest())
    try:
        session = create(client, [node("one", "integer", value=1)])
        item = client.sessions.InvokeSession(
            pb.InvokeSessionRequest(session_id=session.id, all=True)
        ).queue_item
        status = client.queue.GetQueueStatus(queue_pb.GetQueueStatusRequest()).status
        assert status.paused
        assert status.pending_count >= 1
        cleared = client.queue.ClearQueue(queue_pb.ClearQueueRequest())
        assert cleared.cancelled_count >= 1
    finally:
        client.queue.ResumeQueue(queue_pb.ResumeQueueRequest())

    got = client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=item.id)).queue_item
    assert got.status == queue_pb.QUEUE_ITEM_STATUS_CANCELLED
    assert get(client, session.id).status == graph_pb2.SESSION_STATUS_CANCELLED
    listed = client.queue.ListQueueItems(
        queue_pb.ListQueueItemsRequest(session_id=session.id)
    ).queue_items
    assert [queued.id for queued in listed] == [item.id]


def test_a_nodes_progress_is_relayed_to_watchers(client):
    session = create(client, [node("work", "steps")])
    request = pb.WatchSessionEventsRequest(session_ids=[session.id])
    stream = client.sessions.WatchSessionEvents(request, timeout=30)
    progress = []
    try:
        for response in stream:
            event = response.event
            if event.HasField("snapshot"):
                invoke = pb.InvokeSessionRequest(session_id=session.id, all=True)
                client.sessions.InvokeSession(invoke)
            if event.HasField("invocation_progress"):
                step = event.invocation_progress
                progress.append((event.node_id, step.step, step.total_steps))
            if event.HasField("session_complete"):
                break
    finally:
        stream.cancel()
    assert progress == [("work", 1, 2), ("work", 2, 2)]


# Every error reason of SessionService and QueueService, provoked over the wire; each
# refusal leaves the whole session (or queue item) as GetSession read it before.

UNKNOWN_SESSION = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def refused(
    client: EaselClient, session_id: str, call: Callable[[], object], error: type[Exception]
) -> Any:
    """The error `call` raises; the session reads back exactly as before the call."""
    before = get(client, session_id)
    with pytest.raises(error) as caught:
        call()
    assert get(client, session_id) == before
    return caught.value


def session_count(client: EaselClient) -> int:
    request = pb.ListSessionsRequest(page_size=1000)
    return len(client.sessions.ListSessions(request).sessions)


@pytest.mark.parametrize(
    ("nodes", "edges", "reason", "field"),
    [
        ([node("a", "no_such_type")], [], "UNKNOWN_INVOCATION_TYPE", "graph.nodes[0].type"),
        (
            [node("a", "integer"), node("a", "integer")],
            [],
            "DUPLICATE_NODE_ID",
            "graph.nodes[1].id",
        ),
        ([node("-a", "integer")], [], "INVALID_NODE_ID", "graph.nodes[0].id"),
        ([node("a", "add", c=1)], [], "UNKNOWN_FIELD", "graph.nodes[0].inputs.c"),
        ([node("a", "add", a="x")], [], "INVALID_INPUT_VALUE", "graph.nodes[0].inputs.a"),
        ([node("a", "collect", item=1)], [], "INVALID_INPUT_VALUE", "graph.nodes[0].inputs.item"),
        (
            [node("a", "add")],
            [edge("b.value", "a.a")],
            "UNKNOWN_NODE",
            "graph.edges[0].source.node_id",
        ),
        (
            [node("a", "add"), node("b", "add")],
            [edge("a.nope", "b.a")],
            "UNKNOWN_FIELD",
            "graph.edges[0].source.field",
        ),
        (
            [node("a", "string"), node("b", "add")],
            [edge("a.value", "b.a")],
            "EDGE_TYPE_MISMATCH",
            "graph.edges[0].destination.field",
        ),
        (
            [node("a", "add"), node("b", "add")],
            [edge("a.value", "b.a"), edge("b.value", "a.a")],
            "GRAPH_CYCLE",
            "graph.edges[0]",
        ),
        ([node("a", "blur")], [], "MISSING_REQUIRED_INPUT", "graph.nodes[0].inputs.image"),
        (
            [node("a", "integer"), node("b", "iterate")],
            [edge("a.value", "b.index")],
            "INPUT_NOT_CONNECTABLE",
            "graph.edges[0].destination.field",
        ),
        (
            [node("a", "integer"), node("b", "add", a=1)],
            [edge("a.value", "b.a")],
            "INPUT_ALREADY_SET",
            "graph.edges[0].destination.field",
        ),
        (
            [node("a", "integer"), node("b", "add")],
            [edge("a.value", "b.a"), edge("a.value", "b.a")],
            "INPUT_ALREADY_SET",
            "graph.edges[1].destination.field",
        ),
    ],
)
def test_an_invalid_graph_is_refused_naming_its_field(client, nodes, edges, reason, field):
    before = session_count(client)
    with pytest.raises(errors.InvalidArgumentError) as caught:
        create(client, nodes, edges)
    assert caught.value.reason == reason
    assert caught.value.violations[0].field == field
    assert session_count(client) == before


def link(source: str, destination: str = "") -> graph_pb2.Edge:
    source_node, source_field = source.split(".")
    destination_field = destination.split(".")[-1] if destination else ""
    destination_node = destination.split(".")[0] if "." in destination else ""
    return graph_pb2.Edge(
        source=graph_pb2.EdgeConnection(node_id=source_node, field=source_field),
        destination=graph_pb2.EdgeConnection(node_id=destination_node, field=destination_field),
    )


@pytest.mark.parametrize(
    ("new", "links", "error", "reason"),
    [
        (node("sum", "integer"), [], errors.AlreadyExistsError, "DUPLICATE_NODE_ID"),
        (node("n", "no_such_type"), [], errors.InvalidArgumentError, "UNKNOWN_INVOCATION_TYPE"),
        (node("-n", "add"), [], errors.InvalidArgumentError, "INVALID_NODE_ID"),
        (node("n", "add", c=1), [], errors.InvalidArgumentError, "UNKNOWN_FIELD"),
        (node("n", "add", a="x"), [], errors.InvalidArgumentError, "INVALID_INPUT_VALUE"),
        (node("n", "blur"), [], errors.InvalidArgumentError, "MISSING_REQUIRED_INPUT"),
        (
            node("n", "add"),
            [link("-5.value", "a")],
            errors.InvalidArgumentError,
            "NO_SUCH_HISTORY_ENTRY",
        ),
        (node("n", "add"), [link("nope.value", "a")], errors.InvalidArgumentError, "UNKNOWN_NODE"),
        (
            node("n", "add"),
            [link("sum.value", "sum.a")],
            errors.InvalidArgumentError,
            "INVALID_LINK",
        ),
        (node("n", "add"), [link("sum.*", "a")], errors.InvalidArgumentError, "INVALID_LINK"),
        (node("n", "add"), [link("sum.value", "*")], errors.InvalidArgumentError, "INVALID_LINK"),
        (node("n", "add"), [link("n.value", "a")], errors.InvalidArgumentError, "GRAPH_CYCLE"),
        (node("n", "add"), [link("sum.nope", "a")], errors.InvalidArgumentError, "UNKNOWN_FIELD"),
        (
            node("n", "add", a=1),
            [link("sum.value", "a")],
            errors.InvalidArgumentError,
            "INPUT_ALREADY_SET",
        ),
        (
            node("n", "add"),
            [link("sum.value", "a"), link("product.value", "a")],
            errors.InvalidArgumentError,
            "INPUT_ALREADY_SET",
        ),
        (
            node("n", "iterate"),
            [link("sum.value", "index")],
            errors.InvalidArgumentError,
            "INPUT_NOT_CONNECTABLE",
        ),
        (
            node("n", "string"),
            [link("sum.value", "value")],
            errors.InvalidArgumentError,
            "EDGE_TYPE_MISMATCH",
        ),
    ],
)
def test_a_refused_node_leaves_the_session_unchanged(client, new, links, error, reason):
    session = create(client, *math_graph())
    request = pb.AddNodeRequest(session_id=session.id, node=new, links=links)
    caught = refused(client, session.id, lambda: client.sessions.AddNode(request), error)
    assert caught.reason == reason


def edge_graph() -> tuple[list[graph_pb2.Node], list[graph_pb2.Edge]]:
    """sum (b free) -> product, a free `add`, a string and a range -> iterate: targets
    for bad edges, none of them run."""
    nodes = [
        node("sum", "add", a=2),
        node("product", "mul", b=4),
        node("free", "add"),
        node("words", "string", value="x"),
        node("items", "range"),
        node("each", "iterate"),
    ]
    return nodes, [edge("sum.value", "product.a"), edge("items.collection", "each.collection")]


@pytest.mark.parametrize(
    ("bad", "error", "reason", "field"),
    [
        (
            edge("sum.value", "product.a"),
            errors.AlreadyExistsError,
            "EDGE_ALREADY_EXISTS",
            None,
        ),
        (edge("nope.value", "free.a"), errors.InvalidArgumentError, "UNKNOWN_NODE", None),
        (edge("sum.value", "nope.a"), errors.InvalidArgumentError, "UNKNOWN_NODE", None),
        (
            edge("sum.nope", "free.a"),
            errors.InvalidArgumentError,
            "UNKNOWN_FIELD",
            "edge.source.field",
        ),
        (
            edge("sum.value", "free.nope"),
            errors.InvalidArgumentError,
            "UNKNOWN_FIELD",
            "edge.destination.field",
        ),
        (
            edge("words.value", "free.a"),
            errors.InvalidArgumentError,
            "EDGE_TYPE_MISMATCH",
            "edge.destination.field",
        ),
        (
            edge("free.value", "product.b"),
            errors.InvalidArgumentError,
            "INPUT_ALREADY_SET",
            "edge.destination.field",
        ),
        (
            edge("free.value", "product.a"),
            errors.InvalidArgumentError,
            "INPUT_ALREADY_SET",
            "edge.destination.field",
        ),
        (
            edge("sum.value", "each.index"),
            errors.InvalidArgumentError,
            "INPUT_NOT_CONNECTABLE",
            "edge.destination.field",
        ),
        (edge("product.value", "sum.b"), errors.InvalidArgumentError, "GRAPH_CYCLE", "edge"),
    ],
)
def test_a_refused_edge_leaves_the_session_unchanged(client, bad, error, reason, field):
    session = create(client, *edge_graph())
    request = pb.AddEdgeRequest(session_id=session.id, edge=bad)
    caught = refused(client, session.id, lambda: client.sessions.AddEdge(request), error)
    assert caught.reason == reason
    if field is not None:
        assert caught.violations[0].field == field


def test_an_edge_into_an_executed_or_failed_node_is_refused(client):
    session = create(
        client, [node("sum", "add", a=2), node("broken", "div", b=0), node("late", "add")]
    )
    assert run(client, session.id).status == graph_pb2.SESSION_STATUS_FAILED

    for destination in ("sum.b", "broken.a"):
        request = pb.AddEdgeRequest(session_id=session.id, edge=edge("late.value", destination))
        caught = refused(
            client,
            session.id,
            lambda request=request: client.sessions.AddEdge(request),
            errors.FailedPreconditionError,
        )
        assert caught.reason == "NODE_ALREADY_EXECUTED"
        assert caught.metadata["node_id"] == destination.split(".")[0]


@pytest.mark.parametrize(
    ("nodes", "edges", "status"),
    [
        (*math_graph(), graph_pb2.SESSION_STATUS_COMPLETED),
        (
            [node("broken", "div", b=0), node("after", "add")],
            [edge("broken.value", "after.a")],
            graph_pb2.SESSION_STATUS_FAILED,
        ),
    ],
)
def test_a_session_with_nothing_left_to_run_is_not_invoked(client, nodes, edges, status):
    session = create(client, nodes, edges)
    assert run(client, session.id).status == status

    request = pb.InvokeSessionRequest(session_id=session.id, all=True)
    caught = refused(
        client,
        session.id,
        lambda: client.sessions.InvokeSession(request),
        errors.FailedPreconditionError,
    )
    assert caught.reason == "NOTHING_TO_RUN"


def test_a_session_with_no_run_is_not_cancelled(client):
    idle = create(client, *math_graph())
    completed = create(client, *math_graph())
    run(client, completed.id)

    for session in (idle, completed):
        request = pb.CancelSessionRequest(session_id=session.id)
        caught = refused(
            client,
            session.id,
            lambda request=request: client.sessions.CancelSession(request),
            errors.FailedPreconditionError,
        )
        assert caught.reason == "SESSION_NOT_RUNNING"


def busy_refusals(client: EaselClient, session_id: str) -> None:
    """A QUEUED or RUNNING session refuses a second run and deletion, unchanged."""
    calls = (
        lambda: client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session_id)),
        lambda: client.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=session_id)),
    )
    for call in calls:
        caught = refused(client, session_id, call, errors.FailedPreconditionError)
        assert caught.reason == "SESSION_BUSY"


def test_a_queued_session_is_busy(client):
    client.queue.PauseQueue(queue_pb.PauseQueueRequest())
    try:
        session = create(client, *math_graph())
        client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session.id, all=True))
        assert get(client, session.id).status == graph_pb2.SESSION_STATUS_QUEUED

        busy_refusals(client, session.id)

        client.sessions.CancelSession(pb.CancelSessionRequest(session_id=session.id))
    finally:
        client.queue.ResumeQueue(queue_pb.ResumeQueueRequest())
    assert get(client, session.id).status == graph_pb2.SESSION_STATUS_CANCELLED


def test_a_running_session_is_busy_and_its_running_node_takes_no_edge(client):
    session = create(client, [node("source", "integer", value=1), node("wait", "block")])
    stream = client.sessions.WatchSessionEvents(
        pb.WatchSessionEventsRequest(session_ids=[session.id]), timeout=30
    )
    try:
        for response in stream:
            event = response.event
            if event.HasField("snapshot"):
                request = pb.InvokeSessionRequest(session_id=session.id, all=True)
                item = client.sessions.InvokeSession(request).queue_item
            if event.HasField("invocation_started") and event.node_id == "wait":
                assert get(client, session.id).state.running_node_id == "wait"
                busy_refusals(client, session.id)
                request = pb.AddEdgeRequest(
                    session_id=session.id, edge=edge("source.value", "wait.value")
                )
                caught = refused(
                    client,
                    session.id,
                    lambda request=request: client.sessions.AddEdge(request),
                    errors.FailedPreconditionError,
                )
                assert caught.reason == "NODE_ALREADY_EXECUTED"
                wait = pb.WaitSessionRequest(session_id=session.id)
                refused(
                    client,
                    session.id,
                    lambda wait=wait: client.sessions.WaitSession(wait, timeout=0.2),
                    errors.DeadlineExceededError,
                )
                client.sessions.CancelSession(pb.CancelSessionRequest(session_id=session.id))
            if event.HasField("session_cancelled"):
                break
    finally:
        stream.cancel()

    done = client.sessions.WaitSession(pb.WaitSessionRequest(session_id=session.id), timeout=30)
    assert done.session.status == graph_pb2.SESSION_STATUS_CANCELLED
    finished = client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=item.id)).queue_item
    request = queue_pb.CancelQueueItemRequest(id=item.id)
    caught = refused(
        client,
        session.id,
        lambda: client.queue.CancelQueueItem(request),
        errors.FailedPreconditionError,
    )
    assert caught.reason == "QUEUE_ITEM_FINISHED"
    assert client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=item.id)).queue_item == (
        finished
    )


def test_every_rpc_naming_an_unknown_session_is_not_found(client):
    before = session_count(client)
    sessions = client.sessions
    calls = [
        lambda: sessions.GetSession(pb.GetSessionRequest(session_id=UNKNOWN_SESSION)),
        lambda: sessions.DeleteSession(pb.DeleteSessionRequest(session_id=UNKNOWN_SESSION)),
        lambda: sessions.AddNode(
            pb.AddNodeRequest(session_id=UNKNOWN_SESSION, node=node("n", "add"))
        ),
        lambda: sessions.AddEdge(
            pb.AddEdgeRequest(session_id=UNKNOWN_SESSION, edge=edge("a.value", "b.a"))
        ),
        lambda: sessions.InvokeSession(pb.InvokeSessionRequest(session_id=UNKNOWN_SESSION)),
        lambda: sessions.CancelSession(pb.CancelSessionRequest(session_id=UNKNOWN_SESSION)),
        lambda: sessions.WaitSession(pb.WaitSessionRequest(session_id=UNKNOWN_SESSION)),
        lambda: next(
            iter(
                sessions.WatchSessionEvents(
                    pb.WatchSessionEventsRequest(session_ids=[UNKNOWN_SESSION]), timeout=30
                )
            )
        ),
    ]
    for call in calls:
        with pytest.raises(errors.NotFoundError) as caught:
            call()
        assert caught.value.reason == "SESSION_NOT_FOUND"
        assert caught.value.metadata["session_id"] == UNKNOWN_SESSION
    assert session_count(client) == before


def test_a_bad_session_listing_is_refused_naming_its_field(client):
    create(client)
    create(client)
    first = client.sessions.ListSessions(pb.ListSessionsRequest(page_size=1))
    assert first.next_page_token
    cases = [
        (pb.ListSessionsRequest(page_size=-1), None, "page_size"),
        (
            pb.ListSessionsRequest(statuses=[graph_pb2.SESSION_STATUS_UNSPECIFIED]),
            None,
            "statuses[0]",
        ),
        (
            pb.ListSessionsRequest(statuses=[graph_pb2.SESSION_STATUS_IDLE, 99]),
            None,
            "statuses[1]",
        ),
        (pb.ListSessionsRequest(page_token="not-a-token"), "INVALID_PAGE_TOKEN", "page_token"),
        (
            pb.ListSessionsRequest(
                page_size=1,
                page_token=first.next_page_token,
                statuses=[graph_pb2.SESSION_STATUS_IDLE],
            ),
            "INVALID_PAGE_TOKEN",
            "page_token",
        ),
    ]
    for request, reason, field in cases:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            client.sessions.ListSessions(request)
        if reason is not None:
            assert caught.value.reason == reason
        assert caught.value.violations[0].field == field


def test_a_bad_queue_listing_is_refused_naming_its_field(client):
    for _ in range(2):
        run(client, create(client, [node("one", "integer", value=1)]).id)
    first = client.queue.ListQueueItems(queue_pb.ListQueueItemsRequest(page_size=1))
    assert first.next_page_token
    cases = [
        (queue_pb.ListQueueItemsRequest(page_size=-1), None, "page_size"),
        (
            queue_pb.ListQueueItemsRequest(statuses=[queue_pb.QUEUE_ITEM_STATUS_UNSPECIFIED]),
            None,
            "statuses[0]",
        ),
        (
            queue_pb.ListQueueItemsRequest(page_token="not-a-token"),
            "INVALID_PAGE_TOKEN",
            "page_token",
        ),
        (
            queue_pb.ListQueueItemsRequest(
                page_size=1,
                page_token=first.next_page_token,
                statuses=[queue_pb.QUEUE_ITEM_STATUS_COMPLETED],
            ),
            "INVALID_PAGE_TOKEN",
            "page_token",
        ),
    ]
    for request, reason, field in cases:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            client.queue.ListQueueItems(request)
        if reason is not None:
            assert caught.value.reason == reason
        assert caught.value.violations[0].field == field


def test_an_unknown_queue_item_is_not_found(client):
    before = client.queue.GetQueueStatus(queue_pb.GetQueueStatusRequest()).status
    calls = (
        lambda: client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=10**9)),
        lambda: client.queue.CancelQueueItem(queue_pb.CancelQueueItemRequest(id=10**9)),
    )
    for call in calls:
        with pytest.raises(errors.NotFoundError) as caught:
            call()
        assert caught.value.reason == "QUEUE_ITEM_NOT_FOUND"
    assert client.queue.GetQueueStatus(queue_pb.GetQueueStatusRequest()).status == before


@pytest.mark.parametrize(
    ("fields", "mode", "reason", "field"),
    [
        ([batch_field("sum", "a", [1, 2])], queue_pb.BATCH_MODE_UNSPECIFIED, None, "mode"),
        (
            [batch_field("sum", "a", [1, 2]), batch_field("sum", "b", [1])],
            queue_pb.BATCH_MODE_ZIP,
            "BATCH_LENGTH_MISMATCH",
            "fields[1].values",
        ),
        (
            [batch_field("sum", "a", [1, "x"])],
            queue_pb.BATCH_MODE_ZIP,
            "BATCH_VALUE_TYPE_MISMATCH",
            "fields[0].values[1]",
        ),
        ([], queue_pb.BATCH_MODE_ZIP, None, "fields"),
        ([batch_field("", "a", [1])], queue_pb.BATCH_MODE_ZIP, None, "fields[0].node_id"),
        ([batch_field("sum", "", [1])], queue_pb.BATCH_MODE_ZIP, None, "fields[0].field"),
        ([batch_field("sum", "a", [])], queue_pb.BATCH_MODE_ZIP, None, "fields[0].values"),
        (
            [batch_field("sum", "a", [1]), batch_field("sum", "a", [2])],
            queue_pb.BATCH_MODE_PRODUCT,
            "DUPLICATE_BATCH_FIELD",
            "fields[1]",
        ),
        (
            [batch_field("sum", "a", list(range(101))), batch_field("sum", "b", list(range(100)))],
            queue_pb.BATCH_MODE_PRODUCT,
            "BATCH_TOO_LARGE",
            "fields",
        ),
        (
            [batch_field("sum", "a", list(range(10001)))],
            queue_pb.BATCH_MODE_ZIP,
            "BATCH_TOO_LARGE",
            "fields",
        ),
        (
            [batch_field("nope", "a", [1])],
            queue_pb.BATCH_MODE_ZIP,
            "UNKNOWN_NODE",
            "fields[0].node_id",
        ),
        (
            [batch_field("sum", "a", ["x"])],
            queue_pb.BATCH_MODE_ZIP,
            "INVALID_INPUT_VALUE",
            "graph.nodes[0].inputs.a",
        ),
        (
            [batch_field("product", "a", [1])],
            queue_pb.BATCH_MODE_ZIP,
            "INPUT_ALREADY_SET",
            "graph.edges[0].destination.field",
        ),
    ],
)
def test_a_refused_batch_makes_nothing(client, fields, mode, reason, field):
    before = client.queue.GetQueueStatus(queue_pb.GetQueueStatusRequest()).status
    sessions = session_count(client)
    nodes, edges = math_graph()
    request = queue_pb.EnqueueBatchRequest(
        graph=graph_pb2.Graph(nodes=nodes, edges=edges), fields=fields, mode=mode
    )
    with pytest.raises(errors.InvalidArgumentError) as caught:
        client.queue.EnqueueBatch(request)
    if reason is not None:
        assert caught.value.reason == reason
    assert caught.value.violations[0].field == field
    assert client.queue.GetQueueStatus(queue_pb.GetQueueStatusRequest()).status == before
    assert session_count(client) == sessions
