"""The jobs a service keeps by id, with what every job API offers on top of them.

The downloader's queue and the model installer both keep jobs by integer id and offer
the same operations on them: look one up (NOT_FOUND with the service's reason), list,
prune the finished ones, wait for one or for all, and watch them. Those live here once;
what a job is, and when it is finished or active, stays with each service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Generic, TypeVar

from pydantic import BaseModel

from services.common import errors
from services.common.event_bus import ChangeSignal, Delivery, EventBus, follow

J = TypeVar("J", bound=BaseModel)  # a job: a pydantic model with an integer `id`
E = TypeVar("E")  # an event about a job: has a `job_id`


class JobTable(Generic[J, E]):
    """Jobs by id, their events, and waiting on their changes.

    `service` and `noun` name the service and its jobs in messages ("downloader",
    "download job"), `not_found_reason` is the ErrorInfo reason of an unknown id,
    `finished` tells a terminal job.
    """

    def __init__(
        self, service: str, noun: str, not_found_reason: str, finished: Callable[[J], bool]
    ) -> None:
        self._service = service
        self._noun = noun
        self._not_found_reason = not_found_reason
        self._finished = finished
        self._jobs: dict[int, J] = {}
        self._changed = ChangeSignal()
        self.events: EventBus[E] = EventBus()
        self._closing = asyncio.Event()

    def add(self, job: J) -> None:
        self._jobs[job.id] = job

    def get(self, job_id: int) -> J:
        if job_id < 1:
            raise errors.InvalidArgumentError("id must be 1 or more", field="id")
        try:
            return self._jobs[job_id]
        except KeyError:
            raise errors.NotFoundError(
                f"{self._noun} {job_id} does not exist",
                reason=self._not_found_reason,
                metadata={"job_id": str(job_id)},
            ) from None

    def all(self) -> list[J]:
        """Every job, by id."""
        return [job for _, job in sorted(self._jobs.items())]

    def prune(self) -> list[int]:
        """Forget the finished jobs; their ids, ascending."""
        pruned = [job.id for job in self.all() if self._finished(job)]
        for job_id in pruned:
            del self._jobs[job_id]
        return pruned

    def publish(self, event: E) -> None:
        """Tell subscribers about `event`, and waiters that a job changed."""
        self.events.publish(event)
        self._changed.notify()

    async def wait(self, job_id: int) -> J:
        job = self.get(job_id)
        await self._changed.wait_until(lambda: self._finished(job))
        return job

    async def wait_all(self, active: Callable[[J], bool]) -> list[J]:
        """Wait until no job is `active`; the jobs that were during the wait, by id."""
        seen: set[int] = set()

        def idle() -> bool:
            now_active = {job.id for job in self._jobs.values() if active(job)}
            seen.update(now_active)
            return not now_active

        await self._changed.wait_until(idle)
        return [self._jobs[job_id] for job_id in sorted(seen) if job_id in self._jobs]

    def close(self) -> None:
        """The service is stopping: open watches end UNAVAILABLE."""
        self._closing.set()

    async def watch(
        self,
        job_ids: Iterable[int],
        snapshot_of: Callable[[J], E],
        ends_job: Callable[[E], bool],
    ) -> AsyncIterator[Delivery[E]]:
        """What a `Watch…` RPC streams: a snapshot of the watched jobs (the named ones, or
        every unfinished one), then their events. Watching named jobs, it ends once all of
        them are finished (`ends_job` tells an event that finishes its job); watching all,
        it runs until the reader stops. Subscribing before the snapshot means no event
        falls between the two."""
        ids = set(job_ids)
        if any(job_id < 1 for job_id in ids):
            raise errors.InvalidArgumentError("job ids must be 1 or more", field="job_ids")
        watched = [self.get(job_id) for job_id in sorted(ids)]
        if ids:
            subscription = self.events.subscribe(lambda event: event.job_id in ids)
        else:
            subscription = self.events.subscribe()
            watched = [job for job in self.all() if not self._finished(job)]
        unfinished = {job.id for job in watched if not self._finished(job)}
        try:
            for job in watched:
                yield Delivery(snapshot_of(job.model_copy(deep=True)), 0)
            if ids and not unfinished:
                return
            async for delivery in follow(subscription, self._closing, self._service):
                yield delivery
                if ends_job(delivery.event):
                    unfinished.discard(delivery.event.job_id)
                    if ids and not unfinished:
                        return
        finally:
            subscription.close()
