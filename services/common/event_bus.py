"""An in-process publish/subscribe bus whose slow readers never slow the publisher.

Each subscriber has a bounded buffer. When it is full the newest event is dropped for
that subscriber alone and counted; the next event it does receive says how many it
missed, so a `Watch…` stream can report the gap instead of silently skipping it.
Publishing never blocks and may happen from any thread: work running in worker threads
(a denoising loop, a file copy) publishes straight onto the bus.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, Self, TypeVar

from services.common.errors import UnavailableError

DEFAULT_BUFFER_SIZE = 1024

E = TypeVar("E")


@dataclass(frozen=True)
class Delivery(Generic[E]):
    """An event as one subscriber receives it, with the count it missed just before it."""

    event: E
    dropped_before: int


class Subscription(Generic[E]):
    """One reader of the bus; iterate it for deliveries, close it (or leave its block) to stop."""

    def __init__(self, bus: EventBus[E], accepts: Callable[[E], bool], buffer_size: int) -> None:
        self._bus = bus
        self._accepts = accepts
        self._queue: asyncio.Queue[Delivery[E]] = asyncio.Queue(maxsize=buffer_size)
        self._dropped_since_delivery = 0
        self.dropped_total = 0

    def offer(self, event: E) -> None:
        """Buffer `event` if this subscriber wants it, or count it as dropped when full."""
        if not self._accepts(event):
            return
        if self._queue.full():
            self._dropped_since_delivery += 1
            self.dropped_total += 1
            return
        self._queue.put_nowait(Delivery(event, self._dropped_since_delivery))
        self._dropped_since_delivery = 0

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery[E]:
        return await self._queue.get()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class EventBus(Generic[E]):
    """Fan-out of one service's events to its subscribers; build it inside the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._subscriptions: list[Subscription[E]] = []

    def subscribe(
        self,
        accepts: Callable[[E], bool] = lambda _event: True,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> Subscription[E]:
        subscription = Subscription(self, accepts, buffer_size)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[E]) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def publish(self, event: E) -> None:
        """Hand `event` to every interested subscriber; never blocks, callable from any thread."""
        if threading.get_ident() == self._loop_thread:
            self._deliver(event)
        else:
            self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: E) -> None:
        for subscription in tuple(self._subscriptions):
            subscription.offer(event)


async def follow(
    subscription: Subscription[E], closing: asyncio.Event, service: str
) -> AsyncIterator[Delivery[E]]:
    """The deliveries of `subscription` for a `Watch…` stream, until its reader stops; when
    the service starts shutting down (`closing`), the stream ends UNAVAILABLE at once
    rather than holding the shutdown for its grace period."""
    closed = asyncio.ensure_future(closing.wait())
    delivery: asyncio.Future[Delivery[E]] | None = None
    try:
        while True:
            delivery = asyncio.ensure_future(anext(subscription))
            await asyncio.wait([delivery, closed], return_when=asyncio.FIRST_COMPLETED)
            if not delivery.done():
                raise UnavailableError(f"the {service} is shutting down")
            yield delivery.result()
    finally:
        closed.cancel()
        if delivery is not None:
            delivery.cancel()
        subscription.close()


class ChangeSignal:
    """Lets coroutines wait, without polling, until a condition on changing state holds:
    whoever changes the state calls `notify`, and every waiter re-checks its condition."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        while True:
            changed = self._changed
            if done():
                return
            await changed.wait()
