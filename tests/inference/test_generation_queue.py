"""The generation queue with stand-in work (no models): order, one at a time, cancel,
errors, pins, expiry and the events it publishes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch

from services.common.errors import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from services.inference.events import InferenceEvents
from services.inference.generation.denoise import DenoiseCancelled, Progress, StepHooks
from services.inference.generation.jobs import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    GenerationQueued,
    GenerationStarted,
    GenerationStatus,
    OperationKind,
)
from services.inference.generation.queue import GenerationQueue
from services.inference.tensors.store import TensorKind, TensorStore

KIND = OperationKind.DENOISE_LATENTS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tensors(tmp_path: Path):
    store = TensorStore(tmp_path, budget_bytes=1024 * 1024)
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def events() -> InferenceEvents:
    return InferenceEvents()


@pytest.fixture
async def queue(
    events: InferenceEvents, tensors: TensorStore, clock: Clock
) -> AsyncIterator[GenerationQueue]:
    generations = GenerationQueue(events, tensors, keep_count=3, keep_age_s=60, clock=clock)
    generations.start()
    yield generations
    await generations.close()


def _steps(count: int, record: list[str] | None = None, name: str = "") -> Callable:
    """Work that takes `count` denoising steps, checking for cancel before each."""

    def work(hooks: StepHooks) -> str:
        if record is not None:
            record.append(name)
        for step in range(1, count + 1):
            if hooks.should_cancel and hooks.should_cancel():
                raise DenoiseCancelled(step - 1)
            if hooks.on_progress:
                hooks.on_progress(Progress(step, count))
        return f"result of {name}"

    return work


def _blocked(release: threading.Event, started: threading.Event) -> Callable:
    def work(hooks: StepHooks) -> str:
        started.set()
        release.wait(10)
        done = 0
        while hooks.should_cancel is None or not hooks.should_cancel():
            done += 1
            if hooks.on_progress:
                hooks.on_progress(Progress(done, 1000))
            if done == 1000:
                return "finished"
        raise DenoiseCancelled(done)

    return work


async def test_generations_run_one_at_a_time_in_creation_order(queue: GenerationQueue) -> None:
    release, started = threading.Event(), threading.Event()
    first = queue.create(KIND, _blocked(release, started), total_steps=1000)
    order: list[str] = []
    later = [queue.create(KIND, _steps(2, order, name), total_steps=2) for name in ("b", "c", "d")]
    await asyncio.to_thread(started.wait, 10)

    assert queue.get(first.id).status is GenerationStatus.RUNNING
    assert [queue.get(g.id).status for g in later] == [GenerationStatus.QUEUED] * 3
    assert [g.id for g in queue.list()] == [g.id for g in reversed([first, *later])]

    queue.cancel(first.id)
    release.set()
    assert (await queue.wait(first.id)).status is GenerationStatus.CANCELLED
    done = [await queue.wait(g.id) for g in later]

    assert order == ["b", "c", "d"]
    assert [g.status for g in done] == [GenerationStatus.COMPLETED] * 3
    assert done[0].result == "result of b"
    assert done[0].step == 2


async def test_events_of_a_generation_in_order(
    queue: GenerationQueue, events: InferenceEvents
) -> None:
    subscription = events.bus.subscribe()
    generation = queue.create(KIND, _steps(3, name="x"), total_steps=3, session_id="s")
    received = []
    while not received or not isinstance(received[-1], GenerationCompleted):
        received.append((await asyncio.wait_for(anext(subscription), 10)).event)
    subscription.close()

    kinds = [type(event) for event in received]
    assert kinds == [
        GenerationQueued,
        GenerationStarted,
        GenerationProgress,
        GenerationProgress,
        GenerationProgress,
        GenerationCompleted,
    ]
    assert [event.step for event in received if isinstance(event, GenerationProgress)] == [1, 2, 3]
    assert {event.context.generation_id for event in received} == {generation.id}
    assert {event.context.session_id for event in received} == {"s"}


async def test_cancel_a_queued_generation_at_once_and_a_running_one_within_a_step(
    queue: GenerationQueue, events: InferenceEvents
) -> None:
    release, started = threading.Event(), threading.Event()
    running = queue.create(KIND, _blocked(release, started), total_steps=1000)
    queued = queue.create(KIND, _steps(1), total_steps=1)
    await asyncio.to_thread(started.wait, 10)

    assert queue.cancel(queued.id).status is GenerationStatus.CANCELLED
    assert queue.cancel(queued.id).status is GenerationStatus.CANCELLED  # again: no change
    assert queue.cancel(running.id).status is GenerationStatus.RUNNING
    release.set()
    ended = await queue.wait(running.id)

    assert ended.status is GenerationStatus.CANCELLED
    assert ended.step == 0
    assert queue.get(queued.id).start_time is None


async def test_cancel_a_finished_generation_is_a_failed_precondition(
    queue: GenerationQueue,
) -> None:
    generation = queue.create(KIND, _steps(1), total_steps=1)
    await queue.wait(generation.id)
    with pytest.raises(FailedPreconditionError):
        queue.cancel(generation.id)


async def test_failures_end_in_error_with_the_domain_error(queue: GenerationQueue) -> None:
    def out_of_memory(_hooks: StepHooks) -> None:
        raise ResourceExhaustedError("too big", reason="OUT_OF_MEMORY")

    def broken(_hooks: StepHooks) -> None:
        raise RuntimeError("boom")

    oom = await queue.wait(queue.create(KIND, out_of_memory).id)
    crash = await queue.wait(queue.create(KIND, broken).id)

    assert oom.status is GenerationStatus.ERROR
    assert oom.error == ResourceExhaustedError("too big", reason="OUT_OF_MEMORY")
    assert crash.status is GenerationStatus.ERROR
    assert isinstance(crash.error, InternalError)
    assert "boom" in crash.error.message


async def test_input_tensors_are_pinned_until_the_generation_ends(
    queue: GenerationQueue, tensors: TensorStore
) -> None:
    name = tensors.put(
        {"noise": torch.zeros(1, 4, 8, 8)}, kind=TensorKind.NOISE, generation_id="g"
    ).name
    release, started = threading.Event(), threading.Event()
    generation = queue.create(KIND, _blocked(release, started), inputs=[name])
    await asyncio.to_thread(started.wait, 10)

    with pytest.raises(FailedPreconditionError):
        tensors.delete(name)
    queue.cancel(generation.id)
    release.set()
    await queue.wait(generation.id)
    assert tensors.delete(name) > 0


async def test_an_unknown_input_tensor_queues_nothing(queue: GenerationQueue) -> None:
    with pytest.raises(NotFoundError):
        queue.create(KIND, _steps(1), inputs=["no-such-tensor"])
    assert queue.list() == []


async def test_a_tensor_made_by_a_generation_cancelled_meanwhile_is_deleted(
    queue: GenerationQueue, tensors: TensorStore
) -> None:
    release, started = threading.Event(), threading.Event()

    def encode(_hooks: StepHooks):
        started.set()
        release.wait(10)
        return tensors.put(
            {"latents": torch.zeros(1, 4, 8, 8)}, kind=TensorKind.LATENTS, generation_id="g"
        )

    generation = queue.create(OperationKind.ENCODE_IMAGE, encode)
    await asyncio.to_thread(started.wait, 10)
    queue.cancel(generation.id)
    release.set()

    assert (await queue.wait(generation.id)).status is GenerationStatus.CANCELLED
    assert tensors.list() == []


async def test_finished_generations_expire_by_count_and_age(
    queue: GenerationQueue, clock: Clock
) -> None:
    ids = []
    for _ in range(5):
        generation = queue.create(KIND, _steps(1), total_steps=1)
        await queue.wait(generation.id)
        ids.append(generation.id)
        clock.now += 1

    assert [g.id for g in queue.list()] == ids[:1:-1]  # only the newest 3 are kept
    with pytest.raises(NotFoundError) as raised:
        queue.get(ids[0])
    assert raised.value.reason == "GENERATION_NOT_FOUND"

    clock.now += 60
    assert queue.list() == []
    with pytest.raises(InvalidArgumentError):
        queue.get("")


async def test_list_filters_by_session_and_status(queue: GenerationQueue) -> None:
    a = queue.create(KIND, _steps(1), session_id="a")
    b = queue.create(KIND, _steps(1), session_id="b")
    await queue.wait(a.id)
    await queue.wait(b.id)

    assert [g.id for g in queue.list(session_id="a")] == [a.id]
    assert queue.list(statuses={GenerationStatus.ERROR}) == []
    assert len(queue.list(statuses={GenerationStatus.COMPLETED})) == 2


async def test_cancelled_events_carry_the_steps_done(
    queue: GenerationQueue, events: InferenceEvents
) -> None:
    subscription = events.bus.subscribe(lambda event: isinstance(event, GenerationCancelled))
    release, started = threading.Event(), threading.Event()
    generation = queue.create(KIND, _blocked(release, started))
    await asyncio.to_thread(started.wait, 10)
    queue.cancel(generation.id)
    release.set()
    await queue.wait(generation.id)

    delivery = await asyncio.wait_for(anext(subscription), 10)
    subscription.close()
    assert delivery.event.step == 0
    assert delivery.event.context.generation_id == generation.id


async def test_errors_publish_a_failed_event(
    queue: GenerationQueue, events: InferenceEvents
) -> None:
    subscription = events.bus.subscribe(lambda event: isinstance(event, GenerationFailed))

    def missing(_hooks: StepHooks) -> None:
        raise FailedPreconditionError("files gone", reason="MODEL_FILES_MISSING")

    generation = queue.create(KIND, missing)
    await queue.wait(generation.id)
    delivery = await asyncio.wait_for(anext(subscription), 10)
    subscription.close()
    assert delivery.event.error.reason == "MODEL_FILES_MISSING"
