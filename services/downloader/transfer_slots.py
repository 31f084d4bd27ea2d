"""The queue's parallelism: at most N files transfer at once, the rest wait by priority.

A plain semaphore wakes waiters first-come first-served; here a freed slot goes to the
waiting file of the job with the lowest priority (ties by job id, then by arrival), which
is the reference's rule that lower priorities run first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TransferSlots:
    """A priority semaphore for file transfers."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_use = 0
        self._arrivals = itertools.count()
        self._waiting: list[tuple[int, int, int, asyncio.Future[None]]] = []

    @property
    def in_use(self) -> int:
        return self._in_use

    @asynccontextmanager
    async def slot(self, priority: int, job_id: int) -> AsyncIterator[None]:
        await self._acquire(priority, job_id)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int, job_id: int) -> None:
        if self._in_use < self._limit and not self._waiting:
            self._in_use += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, job_id, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # granted just as we were cancelled: pass the slot on
            raise

    def _release(self) -> None:
        self._in_use -= 1
        while self._waiting and self._in_use < self._limit:
            *_, granted = heapq.heappop(self._waiting)
            if not granted.done():
                self._in_use += 1
                granted.set_result(None)
