"""The job bookkeeping the downloader and the installer share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from services.common.errors import InvalidArgumentError, NotFoundError, UnavailableError
from services.common.job_table import JobTable


class Job(BaseModel):
    id: int
    done: bool = False


@dataclass(frozen=True)
class Changed:
    job_id: int


def table() -> JobTable[Job, Changed]:
    return JobTable("test service", "test job", "TEST_JOB_NOT_FOUND", lambda job: job.done)


async def test_lookup_listing_and_pruning():
    jobs = table()
    for job_id in (3, 1, 2):
        jobs.add(Job(id=job_id, done=job_id != 2))
    assert [job.id for job in jobs.all()] == [1, 2, 3]
    with pytest.raises(NotFoundError) as unknown:
        jobs.get(7)
    assert (unknown.value.reason, unknown.value.metadata) == ("TEST_JOB_NOT_FOUND", {"job_id": "7"})
    with pytest.raises(InvalidArgumentError):
        jobs.get(0)
    assert jobs.prune() == [1, 3]
    assert [job.id for job in jobs.all()] == [2]


async def test_waiting_wakes_on_published_changes_only():
    jobs = table()
    job = Job(id=1)
    jobs.add(job)
    waiting = asyncio.create_task(jobs.wait(1))
    joined = asyncio.create_task(jobs.wait_all(lambda j: not j.done))
    await asyncio.sleep(0.01)
    job.done = True
    assert not waiting.done()  # nobody said so yet
    jobs.publish(Changed(1))
    assert await asyncio.wait_for(waiting, 1) is job
    assert [j.id for j in await asyncio.wait_for(joined, 1)] == [1]


def watch(jobs: JobTable[Job, Changed], job_ids: list[int]):
    return jobs.watch(job_ids, lambda job: Changed(-job.id), lambda event: event.job_id == 2)


async def test_a_watch_starts_with_a_snapshot_and_ends_when_its_jobs_are_finished():
    jobs = table()
    jobs.add(Job(id=1, done=True))
    jobs.add(Job(id=2))
    everything, named = watch(jobs, []), watch(jobs, [1, 2])
    assert (await anext(everything)).event == Changed(-2)  # unfinished ones only
    assert [(await anext(named)).event for _ in range(2)] == [Changed(-1), Changed(-2)]
    jobs.publish(Changed(3))
    jobs.publish(Changed(2))  # finishes job 2: the named watch ends after it
    assert [(await anext(everything)).event for _ in range(2)] == [Changed(3), Changed(2)]
    assert [delivery.event async for delivery in named] == [Changed(2)]


async def test_a_watch_of_finished_jobs_ends_after_the_snapshot_and_unknown_ids_fail():
    jobs = table()
    jobs.add(Job(id=1, done=True))
    assert [d.event async for d in watch(jobs, [1])] == [Changed(-1)]
    with pytest.raises(NotFoundError):
        await anext(watch(jobs, [5]))
    with pytest.raises(InvalidArgumentError):
        await anext(watch(jobs, [0]))


async def test_closing_ends_open_watches_unavailable():
    jobs = table()
    jobs.add(Job(id=1))
    open_watch = watch(jobs, [])
    await anext(open_watch)
    reading = asyncio.ensure_future(anext(open_watch))
    await asyncio.sleep(0.01)
    jobs.close()
    with pytest.raises(UnavailableError):
        await asyncio.wait_for(reading, 1)
