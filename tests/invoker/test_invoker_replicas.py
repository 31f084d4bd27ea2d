"""Two invoker processes on one real PostgreSQL database (`EASEL_DATABASE_URL`), as a
deployment with two replicas runs them: 40 sessions queued through both run exactly once
and a watcher on either invoker sees every event of every run, wherever it ran; an
invoker killed with -9 mid-run has its item FAILED (INVOKER_LOST) once its lease runs
out, its session FAILED, and the rest of the queue completes on the other."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as pb
from tests.conftest import SUITE_TOKEN
from tests.invoker.test_sessions_service import BLOCKING_NODE, create, edge, get, node, results
from tests.processes import ServiceProcess, client_settings, start_service, suite_env, wait_serving

LEASE_S = 2
TERMINAL = {"session_complete", "session_error", "session_cancelled"}


@pytest.fixture
def invokers(postgres_url: str, tmp_path: Path) -> Iterator[Callable[[], tuple]]:
    """Starts invokers sharing one root (the outputs folder) and one database."""
    root = tmp_path / "root"
    (root / "nodes").mkdir(parents=True)
    (root / "nodes" / "testing.py").write_text(BLOCKING_NODE)
    base = suite_env(
        root,
        EASEL_AUTH_TOKEN=SUITE_TOKEN,
        EASEL_DATABASE_URL=postgres_url,
        EASEL_QUEUE_LEASE_S=str(LEASE_S),
    )
    started: list[tuple[ServiceProcess, EaselClient]] = []

    def start() -> tuple[ServiceProcess, EaselClient]:
        env = dict(base)
        service = start_service("invoker", env, tmp_path)
        wait_serving(service)
        started.append((service, EaselClient(client_settings(env))))
        return started[-1]

    yield start
    for service, client in started:
        client.close()
        service.stop()


class Watcher:
    """WatchSessionEvents on one invoker, in a thread: the kinds of events per session,
    until every watched session's run has ended."""

    def __init__(self, client: EaselClient, session_ids: list[str]) -> None:
        self.kinds: dict[str, list[str]] = {session_id: [] for session_id in session_ids}
        self._stream = client.sessions.WatchSessionEvents(
            pb.WatchSessionEventsRequest(session_ids=session_ids), timeout=120
        )
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._subscribed.wait(30), "the watch never started"

    def _read(self) -> None:
        for response in self._stream:
            event = response.event
            self.kinds[event.session_id].append(event.WhichOneof("payload"))
            self._subscribed.set()
            if all(TERMINAL & set(kinds) for kinds in self.kinds.values()):
                self._stream.cancel()
                return

    def finished(self) -> dict[str, list[str]]:
        self._thread.join(60)
        assert not self._thread.is_alive(), f"a run's events never arrived: {self.kinds}"
        return self.kinds


def invoke(client: EaselClient, session_id: str) -> queue_pb.QueueItem:
    request = pb.InvokeSessionRequest(session_id=session_id, all=True)
    return client.sessions.InvokeSession(request).queue_item


def wait(client: EaselClient, session_id: str) -> pb.Session:
    request = pb.WaitSessionRequest(session_id=session_id)
    return client.sessions.WaitSession(request, timeout=60).session


def item(client: EaselClient, item_id: int) -> queue_pb.QueueItem:
    return client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=item_id)).queue_item


def test_forty_sessions_run_once_across_two_invokers_and_every_event_reaches_both(invokers):
    _, first = invokers()
    _, second = invokers()
    clients = [first, second]
    sessions = [
        create(
            clients[n % 2],
            [node("sum", "add", a=n, b=1), node("double", "mul", b=2)],
            [edge("sum.value", "double.a")],
        ).id
        for n in range(40)
    ]
    watchers = [Watcher(client, sessions) for client in clients]
    items = [invoke(clients[n % 2], session_id).id for n, session_id in enumerate(sessions)]

    for n, session_id in enumerate(sessions):
        for client in clients:
            done = wait(client, session_id)
            assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
            assert results(done) == {"sum": {"value": n + 1}, "double": {"value": (n + 1) * 2}}
            assert list(done.state.executed_node_ids) == ["sum", "double"], "a node ran twice"
    listed = first.queue.ListQueueItems(queue_pb.ListQueueItemsRequest(page_size=100))
    assert sorted(found.id for found in listed.queue_items) == sorted(items)
    assert all(found.status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED for found in listed.queue_items)
    assert all(found.invoker_id for found in listed.queue_items)
    run = [
        "session_started",
        "invocation_started",
        "invocation_complete",
        "invocation_started",
        "invocation_complete",
        "session_complete",
    ]
    for watcher in watchers:
        seen = watcher.finished()
        assert all(kinds[0] == "snapshot" for kinds in seen.values())
        assert all(kinds.count("session_queued") == 1 for kinds in seen.values())
        # A run's events come in order; its SessionQueued comes from the invoker that
        # queued it, and may follow the first events of a run another one started at once.
        run_events = {
            session_id: [kind for kind in kinds[1:] if kind != "session_queued"]
            for session_id, kinds in seen.items()
        }
        assert run_events == {session_id: run for session_id in sessions}


def test_an_invoker_killed_mid_run_loses_only_its_item_and_the_rest_completes(invokers):
    killed, first = invokers()
    _, second = invokers()
    # Each invoker runs one item at a time: one blocking session lands on each.
    blocking = [create(first, [node("wait", "block")]).id for _ in range(2)]
    blocked_items = [invoke(first, session_id).id for session_id in blocking]
    deadline = time.monotonic() + 30
    while any(get(second, s).status != graph_pb2.SESSION_STATUS_RUNNING for s in blocking):
        assert time.monotonic() < deadline, "the blocking sessions never both ran"
        time.sleep(0.02)
    rest = [create(second, [node("seven", "integer", value=n)]).id for n in range(10)]
    rest_items = [invoke(second, session_id).id for session_id in rest]

    killed.process.kill()
    killed.process.wait()
    lost_at = time.monotonic()

    deadline = lost_at + LEASE_S * 3 + 10
    while not any(
        item(second, item_id).status == queue_pb.QUEUE_ITEM_STATUS_FAILED
        for item_id in blocked_items
    ):
        assert time.monotonic() < deadline, "the dead invoker's item never failed"
        time.sleep(0.05)
    assert time.monotonic() - lost_at >= LEASE_S - 1, "the item failed before its lease ran out"
    ended = [item(second, item_id) for item_id in blocked_items]
    [lost] = [found for found in ended if found.status == queue_pb.QUEUE_ITEM_STATUS_FAILED]
    [alive] = [found for found in ended if found.status == queue_pb.QUEUE_ITEM_STATUS_RUNNING]
    assert lost.error_type == "INVOKER_LOST"
    assert lost.invoker_id != alive.invoker_id
    assert wait(second, lost.session_id).status == graph_pb2.SESSION_STATUS_FAILED

    # The survivor's own blocking run ends when cancelled; the queue goes on behind it.
    second.sessions.CancelSession(pb.CancelSessionRequest(session_id=alive.session_id))
    assert wait(second, alive.session_id).status == graph_pb2.SESSION_STATUS_CANCELLED
    for n, session_id in enumerate(rest):
        done = wait(second, session_id)
        assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
        assert results(done) == {"seven": {"value": n}}
    assert all(
        item(second, item_id).status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED
        for item_id in rest_items
    )
    again = item(second, lost.id)
    assert (again.status, again.error_type) == (queue_pb.QUEUE_ITEM_STATUS_FAILED, "INVOKER_LOST")
    request = queue_pb.ListQueueItemsRequest(session_id=lost.session_id)
    assert [found.id for found in second.queue.ListQueueItems(request).queue_items] == [lost.id]
    assert get(second, lost.session_id).status == graph_pb2.SESSION_STATUS_FAILED
