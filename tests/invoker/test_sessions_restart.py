"""Sessions and queue items survive a restart of the invoker: finished sessions keep their
results (nothing runs again), a PENDING item runs after the restart, and the item that
was RUNNING when the invoker died is FAILED with INVOKER_RESTARTED, its session FAILED;
a RUNNING item cancelled over the wire ends its session CANCELLED."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as pb
from services.common import errors
from tests.invoker.test_sessions_service import BLOCKING_NODE, create, edge, get, node, results, run
from tests.processes import client_settings, wait_serving


def wait_running(client: EaselClient, session_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while get(client, session_id).state.running_node_id == "":
        assert time.monotonic() < deadline, "the node never started"
        time.sleep(0.01)


@pytest.fixture
def invoker(run_service, easel_env):
    nodes = Path(easel_env["EASEL_ROOT"]) / "nodes"
    nodes.mkdir()
    (nodes / "block.py").write_text(BLOCKING_NODE)

    def start():
        service = run_service("invoker")
        wait_serving(service)
        return service

    return start


def test_a_running_session_cancelled_over_the_wire_ends_cancelled(invoker, easel_env):
    invoker()
    with EaselClient(client_settings(easel_env)) as client:
        session = create(client, [node("wait", "block")])
        client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session.id, all=True))
        wait_running(client, session.id)
        with pytest.raises(errors.FailedPreconditionError) as busy:
            client.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=session.id))
        assert busy.value.reason == "SESSION_BUSY"

        client.sessions.CancelSession(pb.CancelSessionRequest(session_id=session.id))
        done = client.sessions.WaitSession(
            pb.WaitSessionRequest(session_id=session.id), timeout=30
        ).session

    assert done.status == graph_pb2.SESSION_STATUS_CANCELLED
    assert list(done.state.ready_node_ids) == ["wait"]


def test_sessions_and_queue_items_survive_a_restart(invoker, easel_env):
    first = invoker()
    with EaselClient(client_settings(easel_env)) as client:
        finished = run(
            client,
            create(
                client,
                [node("sum", "add", a=2, b=3), node("product", "mul", b=4)],
                [edge("sum.value", "product.a")],
            ).id,
        )
        blocked = create(client, [node("wait", "block")])
        running_item = client.sessions.InvokeSession(
            pb.InvokeSessionRequest(session_id=blocked.id, all=True)
        ).queue_item
        wait_running(client, blocked.id)
        waiting = create(client, [node("seven", "integer", value=7)])
        pending_item = client.sessions.InvokeSession(
            pb.InvokeSessionRequest(session_id=waiting.id, all=True)
        ).queue_item
    first.process.kill()
    first.process.wait()

    invoker()
    with EaselClient(client_settings(easel_env)) as client:
        ran = client.sessions.WaitSession(
            pb.WaitSessionRequest(session_id=waiting.id), timeout=30
        ).session
        assert ran.status == graph_pb2.SESSION_STATUS_COMPLETED
        assert results(ran) == {"seven": {"value": 7}}
        item = client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=pending_item.id))
        assert item.queue_item.status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED

        failed = get(client, blocked.id)
        assert failed.status == graph_pb2.SESSION_STATUS_FAILED
        item = client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=running_item.id))
        assert item.queue_item.status == queue_pb.QUEUE_ITEM_STATUS_FAILED
        assert item.queue_item.error_type == "INVOKER_RESTARTED"

        kept = get(client, finished.id)
        assert kept.status == graph_pb2.SESSION_STATUS_COMPLETED
        assert kept.graph == finished.graph
        assert kept.state == finished.state
        with pytest.raises(errors.FailedPreconditionError) as caught:
            client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=finished.id))
        assert caught.value.reason == "NOTHING_TO_RUN"
