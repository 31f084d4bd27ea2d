"""How the invoker calls its stores: in order, and on SQLite from one thread per file.

The session manager and its queue send their store calls through one `OrderedCalls`, so
they run one at a time in the order they were asked for, whether the caller waits for
them or not: a session written before its queue item is added is in the store before
the item, and a read sees every write asked for before it.

On SQLite the sessions, the queue items and the set default models all live in one file
(sessions.db), and SQLite makes a connection that writes while another one does sleep
and retry (1 ms, then 2, 5, 10…). Writers that share one thread never wait that way, so
the stores of a file are blocking classes whose calls all run on the file's writer thread
(`database_writer`, `on_writer`), behind the same asynchronous interface as the
PostgreSQL stores, which call the database from the event loop itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")
Call = Callable[[], Awaitable[Any]]


def database_writer(name: str = "sessions-db") -> ThreadPoolExecutor:
    """A new writer thread for the stores of one database file."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


async def on_writer(writer: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` run on `writer`, the thread of its database file."""
    return await asyncio.get_running_loop().run_in_executor(writer, partial(call, *args))


class OrderedCalls:
    """Store calls run one at a time, in the order asked for, by one task. A call whose
    caller stopped waiting before it began is dropped, as an executor drops it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[Call, asyncio.Future[Any] | str] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """The result of `call`, once every call asked for before it has run."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(call, done)
        return await done

    def soon(self, call: Call, failure: str) -> None:
        """Run `call` after those asked for before it, without waiting; if it fails,
        `failure` is logged with the error."""
        self._put(call, failure)

    async def close(self) -> None:
        """Runs the calls asked for, then stops."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task

    def _put(self, call: Call, outcome: asyncio.Future[Any] | str) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_in_order())
        self._queue.put_nowait((call, outcome))

    async def _run_in_order(self) -> None:
        while (queued := await self._queue.get()) is not None:
            call, outcome = queued
            if isinstance(outcome, asyncio.Future) and outcome.done():
                continue
            try:
                result = await call()
            except Exception as exc:
                if isinstance(outcome, str):
                    log.error(outcome, exc_info=exc)
                elif not outcome.done():
                    outcome.set_exception(exc)
                continue
            if isinstance(outcome, asyncio.Future) and not outcome.done():
                outcome.set_result(result)
