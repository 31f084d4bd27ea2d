"""The event bus: filtered fan-out, bounded buffers with counted drops, any-thread publish."""

from __future__ import annotations

import asyncio
import threading

from services.common.event_bus import EventBus


async def next_within(subscription):
    return await asyncio.wait_for(anext(subscription), 1.0)


async def test_each_subscriber_gets_what_it_asked_for():
    bus: EventBus[int] = EventBus()
    everything = bus.subscribe()
    evens = bus.subscribe(lambda n: n % 2 == 0)
    for n in range(4):
        bus.publish(n)
    assert [(await next_within(everything)).event for _ in range(4)] == [0, 1, 2, 3]
    assert [(await next_within(evens)).event for _ in range(2)] == [0, 2]
    assert evens.pending() == 0


async def test_a_slow_subscriber_drops_and_is_told_how_many():
    bus: EventBus[int] = EventBus()
    slow = bus.subscribe(buffer_size=2)
    fast = bus.subscribe(buffer_size=100)
    for n in range(10):
        bus.publish(n)
    assert [(await next_within(fast)).event for _ in range(10)] == list(range(10))
    first, second = await next_within(slow), await next_within(slow)
    assert (first.event, first.dropped_before) == (0, 0)
    assert (second.event, second.dropped_before) == (1, 0)
    assert slow.dropped_total == 8
    bus.publish(10)
    third = await next_within(slow)
    assert (third.event, third.dropped_before) == (10, 8)


async def test_publishing_from_another_thread():
    bus: EventBus[str] = EventBus()
    subscription = bus.subscribe()
    worker = threading.Thread(target=lambda: [bus.publish(f"step {n}") for n in range(3)])
    worker.start()
    worker.join()
    received = [(await next_within(subscription)).event for _ in range(3)]
    assert received == ["step 0", "step 1", "step 2"]


async def test_closing_a_subscription_stops_delivery():
    bus: EventBus[int] = EventBus()
    async with bus.subscribe() as subscription:
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    bus.publish(1)
    assert subscription.pending() == 0
