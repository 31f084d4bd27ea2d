"""gRPC's own retry policy retries a call answered UNAVAILABLE (and nothing else) as many
times as `retry_attempts` allows; a unary call without a timeout gets `call_timeout_s`,
while `Wait…` calls and streams get no deadline unless the caller gives one."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import pytest

from clients.sdk import AsyncEaselClient, ClientSettings, EaselClient
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import queue_service_pb2_grpc, session_service_pb2_grpc
from easel.invoker.v1 import session_service_pb2 as session_pb
from services.common import errors
from tests.processes import free_port
from tests.sdk.fake_server import FakeServer


class Queue(queue_service_pb2_grpc.QueueServiceServicer):
    """GetQueueStatus answers UNAVAILABLE to its first `unavailable_first` attempts;
    GetQueueItem is always NOT_FOUND; ListQueueItems never answers."""

    def __init__(self) -> None:
        self.unavailable_first = 0
        self.attempts: collections.Counter[str] = collections.Counter()
        self.time_remaining: dict[str, float | None] = {}

    async def GetQueueStatus(self, request, context):
        self.attempts["GetQueueStatus"] += 1
        self.time_remaining["GetQueueStatus"] = context.time_remaining()
        if self.attempts["GetQueueStatus"] <= self.unavailable_first:
            raise errors.UnavailableError("not ready yet", reason="WARMING_UP")
        return queue_pb.GetQueueStatusResponse()

    async def GetQueueItem(self, request, context):
        self.attempts["GetQueueItem"] += 1
        raise errors.NotFoundError("no such item", reason="QUEUE_ITEM_NOT_FOUND")

    async def ListQueueItems(self, request, context):
        await asyncio.Event().wait()


class Sessions(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    async def WaitSession(self, request, context):
        self._queue.time_remaining["WaitSession"] = context.time_remaining()
        return session_pb.WaitSessionResponse()

    async def WatchSessionEvents(self, request, context):
        self._queue.time_remaining["WatchSessionEvents"] = context.time_remaining()
        yield session_pb.WatchSessionEventsResponse()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeServer, Queue]]:
    queue = Queue()
    services = [
        (queue_service_pb2_grpc.add_QueueServiceServicer_to_server, queue),
        (session_service_pb2_grpc.add_SessionServiceServicer_to_server, Sessions(queue)),
    ]
    with FakeServer(services) as fake:
        yield fake, queue


@pytest.fixture
def queue(server) -> Queue:
    """The fake queue, its counts and records cleared."""
    _, queue = server
    queue.__init__()
    return queue


def settings(server, **values) -> ClientSettings:
    fake, _ = server
    return ClientSettings(invoker_address=fake.address, **values)


STATUS = queue_pb.GetQueueStatusRequest()
DEADLINE_ROUNDING_S = 1
"""gRPC sends deadlines rounded up, so a server may see up to a second more."""


def test_a_call_answered_unavailable_is_retried_until_it_succeeds(server, queue):
    queue.unavailable_first = 2
    with EaselClient(settings(server)) as client:
        client.queue.GetQueueStatus(STATUS)
    assert queue.attempts["GetQueueStatus"] == 3


async def test_the_asyncio_client_retries_unavailable_too(server, queue):
    queue.unavailable_first = 2
    async with AsyncEaselClient(settings(server)) as client:
        await client.queue.GetQueueStatus(STATUS)
    assert queue.attempts["GetQueueStatus"] == 3


@pytest.mark.parametrize("attempts", [1, 3])
def test_retries_stop_after_retry_attempts(server, queue, attempts):
    queue.unavailable_first = 100
    with (
        EaselClient(settings(server, retry_attempts=attempts)) as client,
        pytest.raises(errors.UnavailableError) as unavailable,
    ):
        client.queue.GetQueueStatus(STATUS)
    assert unavailable.value.reason == "WARMING_UP"
    assert queue.attempts["GetQueueStatus"] == attempts


async def test_other_failures_are_not_retried(server, queue):
    with EaselClient(settings(server)) as client, pytest.raises(errors.NotFoundError):
        client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=1))
    async with AsyncEaselClient(settings(server)) as client:
        with pytest.raises(errors.NotFoundError):
            await client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=1))
    assert queue.attempts["GetQueueItem"] == 2


async def test_a_service_nobody_listens_on_is_unavailable():
    down = ClientSettings(invoker_address=f"127.0.0.1:{free_port()}")
    with EaselClient(down) as client, pytest.raises(errors.UnavailableError):
        client.queue.GetQueueStatus(STATUS)
    async with AsyncEaselClient(down) as client:
        with pytest.raises(errors.UnavailableError):
            await client.queue.GetQueueStatus(STATUS)


def test_unary_calls_get_the_default_deadline_and_wait_calls_and_streams_none(server, queue):
    with EaselClient(settings(server, call_timeout_s=30)) as client:
        client.queue.GetQueueStatus(STATUS)
        assert 0 < queue.time_remaining["GetQueueStatus"] <= 30 + DEADLINE_ROUNDING_S
        client.queue.GetQueueStatus(STATUS, timeout=300)
        assert queue.time_remaining["GetQueueStatus"] > 30 + DEADLINE_ROUNDING_S
        client.sessions.WaitSession(session_pb.WaitSessionRequest(session_id="s"))
        assert queue.time_remaining["WaitSession"] is None
        watch = session_pb.WatchSessionEventsRequest(session_ids=["s"])
        list(client.sessions.WatchSessionEvents(watch))
        assert queue.time_remaining["WatchSessionEvents"] is None


async def test_the_asyncio_client_applies_the_same_deadlines(server, queue):
    async with AsyncEaselClient(settings(server, call_timeout_s=30)) as client:
        await client.queue.GetQueueStatus(STATUS)
        assert 0 < queue.time_remaining["GetQueueStatus"] <= 30 + DEADLINE_ROUNDING_S
        await client.sessions.WaitSession(session_pb.WaitSessionRequest(session_id="s"))
        assert queue.time_remaining["WaitSession"] is None
        watch = session_pb.WatchSessionEventsRequest(session_ids=["s"])
        [_ async for _ in client.sessions.WatchSessionEvents(watch)]
        assert queue.time_remaining["WatchSessionEvents"] is None


def test_without_call_timeout_s_calls_have_no_deadline(server, queue):
    with EaselClient(settings(server)) as client:
        client.queue.GetQueueStatus(STATUS)
    assert queue.time_remaining["GetQueueStatus"] is None


async def test_a_call_past_its_deadline_raises_deadline_exceeded(server, queue):
    hanging = queue_pb.ListQueueItemsRequest()
    with (
        EaselClient(settings(server, call_timeout_s=0.2)) as client,
        pytest.raises(errors.DeadlineExceededError),
    ):
        client.queue.ListQueueItems(hanging)
    async with AsyncEaselClient(settings(server, call_timeout_s=0.2)) as client:
        with pytest.raises(errors.DeadlineExceededError):
            await client.queue.ListQueueItems(hanging)
