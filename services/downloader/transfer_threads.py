"""Event loops in worker threads that carry the HTTP transfers, one per core.

One event loop receives at most about 1 GB/s on loopback: every byte is copied out of the
socket on its thread. Parallel downloads spread over one loop per core instead (socket
reads and disk writes release the GIL), while the main loop keeps serving gRPC. Each
loop owns its aiohttp session, since sessions cannot cross loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

T = TypeVar("T")


class TransferThread:
    """One event loop running in its own thread, with its own HTTP session."""

    def __init__(self, name: str, make_session: Callable[[], aiohttp.ClientSession]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._make_session = make_session
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self) -> None:
        self.session = self._make_session()

    def stop(self) -> None:
        if self.session is not None:
            asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class TransferThreads:
    """A pool of transfer threads; `run` carries a coroutine out and awaits its end."""

    def __init__(self, make_session: Callable[[], aiohttp.ClientSession]) -> None:
        count = min(os.cpu_count() or 1, 4)
        self._threads = [TransferThread(f"transfer-{i}", make_session) for i in range(count)]
        self._next = itertools.cycle(self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for thread in self._threads:
            thread.stop()

    async def run(self, work: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
        """Run `work(session)` on the next transfer thread and return its outcome.

        Cancelling the caller cancels the work there and waits until it has finished
        cleaning up, so the caller never races a transfer that is still writing.
        """
        thread = next(self._next)
        here = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = here.create_future()
        started: list[asyncio.Task[T]] = []

        def report(task: asyncio.Task[T]) -> None:
            here.call_soon_threadsafe(_settle, outcome, task)

        def begin() -> None:
            assert thread.session is not None
            task = thread.loop.create_task(_as_coroutine(work, thread.session))
            task.add_done_callback(report)
            started.append(task)

        thread.loop.call_soon_threadsafe(begin)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            thread.loop.call_soon_threadsafe(lambda: started[0].cancel())
            with contextlib.suppress(BaseException):
                await outcome
            raise


async def _as_coroutine(
    work: Callable[[aiohttp.ClientSession], Awaitable[T]], session: aiohttp.ClientSession
) -> T:
    return await work(session)


def _settle(outcome: asyncio.Future, task: asyncio.Task) -> None:
    if outcome.done():
        return
    if task.cancelled():
        outcome.cancel()
    elif task.exception() is not None:
        outcome.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        outcome.set_result(task.result())
