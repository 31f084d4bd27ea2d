"""A scaled-out deployment on loopback, as the compose file runs it: one model manager,
two inference workers (one torch thread each) and two invokers sharing one real
PostgreSQL database, each invoker balancing over both workers, with the tiny models.

40 txt2img sessions queued through both invokers each run exactly once, on one worker,
and a watcher on either invoker sees every run's events wherever it ran; an inference
worker killed mid-denoise fails only the node it ran (INFERENCE_WORKER_LOST) while both
invokers go on on the other; an invoker killed mid-run has its item FAILED (INVOKER_LOST)
once its lease runs out, its generation stopped, and the rest completes on the other.
The tests run in this order: each kill leaves one process fewer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from clients.sdk import EaselClient
from easel.inference.v1 import generation_service_pb2 as gen_pb
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as pb
from tests.invoker.test_inference_workers import WAIT_S, generations, txt2img
from tests.invoker.test_invoker_replicas import Watcher, invoke, item, wait
from tests.invoker.test_sessions_service import get
from tests.model_fixtures import ModelZoo
from tests.model_records import register_sd1
from tests.postgres import TestPostgres
from tests.processes import ServiceProcess, client_settings
from tests.running_suite import running_suite

LEASE_S = 3
LONG = 1000
"""Denoising steps of a generation that is still running when its process is killed."""
RUN = ["session_started", "invocation_started", "invocation_complete", "session_complete"]


@dataclass
class Deployment:
    invokers: list[ServiceProcess]
    clients: list[EaselClient]
    """One client per invoker, in the same order."""
    workers: list[ServiceProcess]
    sd1: str


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo, postgres_server: TestPostgres
) -> Iterator[Deployment]:
    with running_suite(
        tmp_path_factory.mktemp("scale_out"),
        ["model_manager", "inference", "invoker"],
        inference_workers=2,
        invokers=2,
        EASEL_DATABASE_URL=postgres_server.new_database(),
        EASEL_QUEUE_LEASE_S=str(LEASE_S),
    ) as running:
        invokers = running.started("invoker")
        clients = [EaselClient(client_settings(invoker.env)) for invoker in invokers]
        try:
            sd1 = register_sd1(clients[0], model_zoo)
            yield Deployment(invokers, clients, running.started("inference"), sd1)
        finally:
            for client in clients:
                client.close()


def queue(client: EaselClient, session_graph: graph_pb2.Graph) -> tuple[str, int]:
    """Create a session of `session_graph` and queue its run: its id and its item's."""
    request = pb.CreateSessionRequest(graph=session_graph)
    session_id = client.sessions.CreateSession(request).session.id
    return session_id, invoke(client, session_id).id


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_forty_sessions_run_once_on_both_workers_and_every_event_reaches_both_invokers(
    deployment,
):
    clients = deployment.clients
    graphs = [txt2img(deployment.sd1, seed=n) for n in range(40)]
    sessions = [
        clients[n % 2].sessions.CreateSession(pb.CreateSessionRequest(graph=g)).session.id
        for n, g in enumerate(graphs)
    ]
    watchers = [Watcher(client, sessions) for client in clients]
    items = [invoke(clients[n % 2], session_id).id for n, session_id in enumerate(sessions)]

    for session_id in sessions:
        for client in clients:
            done = wait(client, session_id)
            assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
            assert list(done.state.executed_node_ids) == ["t2i"], "a node ran twice"
    listed = clients[1].queue.ListQueueItems(queue_pb.ListQueueItemsRequest(page_size=100))
    assert sorted(found.id for found in listed.queue_items) == sorted(items)
    assert all(found.status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED for found in listed.queue_items)
    assert len({found.invoker_id for found in listed.queue_items}) == 2, "one invoker ran all"

    per_worker = [generations(worker) for worker in deployment.workers]
    assert all(per_worker), "one worker ran every generation"
    made = sorted(g.session_id for found in per_worker for g in found)
    assert made == sorted(sessions), "a session made no generation, or more than one"
    assert all(
        g.status == gen_pb.GENERATION_STATUS_COMPLETED for found in per_worker for g in found
    )

    for watcher in watchers:
        for session_id, kinds in watcher.finished().items():
            assert kinds[0] == "snapshot"
            assert kinds.count("session_queued") == 1
            assert "invocation_progress" in kinds, "the worker's progress was not relayed"
            assert [kind for kind in kinds if kind in RUN] == RUN, session_id


def test_a_worker_killed_mid_denoise_fails_only_its_node_and_both_invokers_go_on(deployment):
    first, second = deployment.clients
    slow = first.sessions.CreateSession(
        pb.CreateSessionRequest(graph=txt2img(deployment.sd1, LONG))
    ).session.id
    killed: list[ServiceProcess] = []
    behind: list[str] = []

    def kill_its_worker() -> None:
        [running] = [w for w in deployment.workers if generations(w, slow)]
        running.process.kill()
        running.process.wait()
        killed.append(running)
        # Queued on both invokers while the worker is dead and its node not failed yet.
        for n in range(6):
            behind.append(queue(deployment.clients[n % 2], txt2img(deployment.sd1, seed=n))[0])

    events = []
    for event in first.run_session(slow, timeout=WAIT_S):
        events.append(event)
        if not killed and event.HasField("invocation_progress"):
            kill_its_worker()
    errors = [event for event in events if event.HasField("invocation_error")]
    assert [(e.node_id, e.invocation_error.error_type) for e in errors] == [
        ("t2i", "INFERENCE_WORKER_LOST")
    ]
    assert errors[0].invocation_error.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert events[-1].HasField("session_error")
    assert wait(second, slow).status == graph_pb2.SESSION_STATUS_FAILED

    for session_id in behind:
        assert wait(second, session_id).status == graph_pb2.SESSION_STATUS_COMPLETED
    [survivor] = [worker for worker in deployment.workers if worker is not killed[0]]
    ran = [g.session_id for g in generations(survivor) if g.session_id in behind]
    assert sorted(ran) == sorted(behind)
    deployment.workers.remove(killed[0])


def test_an_invoker_killed_mid_run_loses_only_its_item_and_the_rest_completes(deployment):
    [worker] = deployment.workers
    killed, _ = deployment.invokers
    clients = deployment.clients
    second = clients[1]
    # Each invoker runs one item at a time: one long run lands on each.
    slow = [queue(second, txt2img(deployment.sd1, LONG, seed=n)) for n in range(2)]
    until(
        lambda: all(get(second, s).status == graph_pb2.SESSION_STATUS_RUNNING for s, _ in slow),
        "the long runs never both ran",
    )
    until(
        lambda: any(
            g.status == gen_pb.GENERATION_STATUS_RUNNING
            for session_id, _ in slow
            for g in generations(worker, session_id)
        ),
        "no generation started",
    )
    # Queued through both, behind the long runs, before one invoker dies.
    rest = [queue(clients[n % 2], txt2img(deployment.sd1, seed=n)) for n in range(6)]

    killed.process.kill()
    killed.process.wait()
    lost_at = time.monotonic()

    until(
        lambda: any(
            item(second, item_id).status == queue_pb.QUEUE_ITEM_STATUS_FAILED for _, item_id in slow
        ),
        "the dead invoker's item never failed",
        timeout=LEASE_S * 3 + 10,
    )
    assert time.monotonic() - lost_at >= LEASE_S - 1, "the item failed before its lease ran out"
    ended = [item(second, item_id) for _, item_id in slow]
    [lost] = [found for found in ended if found.status == queue_pb.QUEUE_ITEM_STATUS_FAILED]
    [alive] = [found for found in ended if found.status == queue_pb.QUEUE_ITEM_STATUS_RUNNING]
    assert lost.error_type == "INVOKER_LOST"
    assert lost.invoker_id != alive.invoker_id
    assert wait(second, lost.session_id).status == graph_pb2.SESSION_STATUS_FAILED
    # The dead invoker's call ended with it, and with the call its generation.
    until(
        lambda: (
            [g.status for g in generations(worker, lost.session_id)]
            == [gen_pb.GENERATION_STATUS_CANCELLED]
        ),
        "the dead invoker's generation went on",
    )

    second.sessions.CancelSession(pb.CancelSessionRequest(session_id=alive.session_id))
    assert wait(second, alive.session_id).status == graph_pb2.SESSION_STATUS_CANCELLED
    for session_id, item_id in rest:
        assert wait(second, session_id).status == graph_pb2.SESSION_STATUS_COMPLETED
        assert item(second, item_id).status == queue_pb.QUEUE_ITEM_STATUS_COMPLETED
    again = item(second, lost.id)
    assert (again.status, again.error_type) == (queue_pb.QUEUE_ITEM_STATUS_FAILED, "INVOKER_LOST")
    request = queue_pb.ListQueueItemsRequest(session_id=lost.session_id)
    assert [found.id for found in second.queue.ListQueueItems(request).queue_items] == [lost.id]
    # Ending the call left no task of it behind in the worker.
    assert "Task was destroyed but it is pending" not in worker.log()
