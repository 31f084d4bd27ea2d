"""Writes a download's bytes to disk in a worker thread while the event loop reads on.

On loopback one core can either parse HTTP or copy bytes into the page cache at about
1 GB/s; doing both on the event loop thread halves a download's speed and leaves the
second core idle when several run. Chunks are gathered into batches written with one
`os.writev` each (no copy to join them), one batch in flight while the next is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Self

BATCH_BYTES = 4 * 1024 * 1024


class BackgroundFileWriter:
    """An append-only file fed from the event loop and written from a worker thread."""

    def __init__(self, path: Path, *, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._in_flight: asyncio.Future[None] | None = None

    async def write(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= BATCH_BYTES:
            await self._wait_in_flight()
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            loop = asyncio.get_running_loop()
            self._in_flight = loop.run_in_executor(None, _write_all, self._fd, batch)

    async def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type, exc, traceback) -> None:
        """Flush what was received, even when stopped: a resume starts from the file's size."""
        try:
            if self._in_flight is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._in_flight)
                self._in_flight.result()
            _write_all(self._fd, self._batch)
        finally:
            os.close(self._fd)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][written:]
