"""Where download jobs survive a restart: an interface, its SQLite implementation, and the
thread that writes to it.

Jobs are written on every status change (not on every chunk: a restart recomputes bytes
from the partial files). Ids come from a persisted counter, so an id is never reused, not
even after its job was pruned.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from services.downloader.jobs import DownloadJob

log = structlog.get_logger(__name__)
T = TypeVar("T")


class DownloadJobStore(ABC):
    """Persistence of the queue's jobs."""

    @abstractmethod
    def allocate_id(self) -> int:
        """A new job id, never handed out before."""

    @abstractmethod
    def save(self, job: DownloadJob) -> None:
        """Insert or replace `job`, access token included (dropped once terminal)."""

    @abstractmethod
    def delete(self, job_ids: list[int]) -> None: ...

    @abstractmethod
    def load_all(self) -> list[DownloadJob]:
        """Every stored job, by id."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDownloadJobStore(DownloadJobStore):
    """Jobs as JSON rows in a WAL-mode SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS download_jobs (id INTEGER PRIMARY KEY, job TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
        )

    def allocate_id(self) -> int:
        with self._lock:
            row = self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('job_id', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()
        return int(row[0])

    def save(self, job: DownloadJob) -> None:
        data = job.model_dump(mode="json", exclude={"access_token"})
        if job.access_token is not None and not job.status.terminal:
            data["access_token"] = job.access_token.get_secret_value()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO download_jobs (id, job) VALUES (?, ?)",
                (job.id, json.dumps(data)),
            )

    def delete(self, job_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM download_jobs WHERE id = ?", [(i,) for i in job_ids])

    def load_all(self) -> list[DownloadJob]:
        with self._lock:
            rows = self._db.execute("SELECT job FROM download_jobs ORDER BY id").fetchall()
        return [DownloadJob.model_validate_json(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobStoreWriter:
    """Makes every call to a store in one worker thread, in the order they were asked.

    The queue changes jobs on its event loop, which must not wait on SQLite; a single
    thread keeps the writes of one job in order, so the last one asked is the one kept.
    `save` and `delete` return at once; `flush` waits until everything asked is written.
    """

    def __init__(self, store: DownloadJobStore) -> None:
        self._store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download-store")

    def save(self, job: DownloadJob) -> None:
        """Write `job`, a snapshot that nothing changes afterwards."""
        self._submit(self._store.save, job)

    def delete(self, job_ids: list[int]) -> None:
        self._submit(self._store.delete, job_ids)

    async def allocate_id(self) -> int:
        return await self.call(lambda store: store.allocate_id())

    async def call(self, work: Callable[[DownloadJobStore], T]) -> T:
        """Run `work(store)` in the writer thread, after everything asked before it."""
        return await asyncio.wrap_future(self._thread.submit(work, self._store))

    async def flush(self) -> None:
        """Wait until everything asked so far is written."""
        await self.call(lambda _store: None)

    async def close(self) -> None:
        """Write what is pending, then stop the thread (the store stays open)."""
        await asyncio.to_thread(self._thread.shutdown, wait=True)

    def _submit(self, work: Callable[..., None], *args: object) -> None:
        self._thread.submit(work, *args).add_done_callback(_log_failure)


def _log_failure(done: Future[None]) -> None:
    if done.exception() is not None:
        log.error("writing download jobs failed", exc_info=done.exception())
