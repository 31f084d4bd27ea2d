"""The notices between invoker processes on one PostgreSQL database (ReplicaLink), on the
real server: everything one process sends reaches the other once, in the order sent,
whatever its size and channel; a burst of small events travels in a few notices rather
than one each; a process never hears its own notices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from services.invoker.replica_notices import EVENTS_CHANNEL, QUEUE_CHANNEL
from services.invoker.replicas import INLINE_LIMIT, ReplicaLink


class Heard:
    """What one link handed to its handlers, in order."""

    def __init__(self, link: ReplicaLink) -> None:
        self.items: list[tuple[str, str | bytes]] = []
        self.changed = asyncio.Event()
        link.on_event(lambda body: self._note(EVENTS_CHANNEL, body))

        async def queue_notice(message: str) -> None:
            self._note(QUEUE_CHANNEL, message)

        link.on(QUEUE_CHANNEL, queue_notice)

    def _note(self, channel: str, item: str | bytes) -> None:
        self.items.append((channel, item))
        self.changed.set()

    async def until_count(self, count: int) -> None:
        async with asyncio.timeout(30):
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def links(postgres_url: str) -> AsyncIterator[tuple[ReplicaLink, ReplicaLink, Heard]]:
    sender, receiver = ReplicaLink(postgres_url, "sender"), ReplicaLink(postgres_url, "receiver")
    heard = Heard(receiver)
    Heard(sender)  # the sender listens too, and must not hear itself
    await sender.start()
    await receiver.start()
    yield sender, receiver, heard
    await sender.close()
    await receiver.close()


async def test_every_notice_arrives_once_in_the_order_sent_whatever_its_size(links):
    sender, _, heard = links
    big = bytes(range(256)) * (INLINE_LIMIT // 128)  # too big for a notice: sent as a row
    sent: list[tuple[str, str | bytes]] = []
    for index in range(60):
        if index % 20 == 10:
            sent.append((EVENTS_CHANNEL, big + bytes([index])))
        elif index % 7 == 3:
            sent.append((QUEUE_CHANNEL, f"added {index}"))
        else:
            sent.append((EVENTS_CHANNEL, f"event {index}".encode()))
    for channel, item in sent:
        if channel == EVENTS_CHANNEL:
            assert isinstance(item, bytes)
            sender.publish_event(item)
        else:
            assert isinstance(item, str)
            sender.send_soon(channel, item)

    await heard.until_count(len(sent))
    await sender.close()  # sends what was asked for: nothing more may arrive after
    assert heard.items == sent


async def test_a_burst_of_small_events_travels_in_a_few_notices(links, postgres_url):
    sender, _, heard = links
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        await db.execute(f"LISTEN {EVENTS_CHANNEL}")
        bodies = [f"step {step} of 200".encode() for step in range(200)]
        for body in bodies:
            sender.publish_event(body)
        await heard.until_count(len(bodies))
        assert [item for _, item in heard.items] == bodies
        notices = []
        async for notice in db.notifies(timeout=0.5):
            notices.append(notice)
    assert 1 <= len(notices) <= 3
    assert all(len(notice.payload) < 8000 for notice in notices)


async def test_a_process_does_not_hear_its_own_notices(postgres_url):
    link = ReplicaLink(postgres_url, "alone")
    heard = Heard(link)
    other = ReplicaLink(postgres_url, "other")
    other_heard = Heard(other)
    await link.start()
    await other.start()
    try:
        link.publish_event(b"mine")
        link.send_soon(QUEUE_CHANNEL, "added")
        await other_heard.until_count(2)
        # Notices reach a listener in the order they were committed: once the other's
        # reply is heard, the link's own two would have been too.
        other.send_soon(QUEUE_CHANNEL, "reply")
        await heard.until_count(1)
    finally:
        await link.close()
        await other.close()
    assert heard.items == [(QUEUE_CHANNEL, "reply")]
