"""PostgreSQL connections that go away: the job rows reconnect and keep every write, or
refuse to go on once another process took their table; a pool tells a database it cannot
reach from one that refused a statement."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import psycopg
import pytest

from services.common import errors
from services.common.migrations import Migration
from services.common.postgres_jobs import PostgresJobRows, table_lock_key
from services.common.postgres_pool import PostgresPool
from tests.postgres import TestPostgres

TABLE = "download_jobs"


def end_holder(url: str) -> int:
    """Terminate the server process holding the job table's lock, as an operator or a
    server restart would, and wait for it to end; how many there were."""
    key = table_lock_key(TABLE)
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted "
            "AND classid = %s AND objid = %s AND objsubid = 1",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        ).fetchone()
    assert row is not None
    return int(row[0])


def stored(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, autocommit=True) as reader:
        return reader.execute(f"SELECT id, job FROM {TABLE} ORDER BY id").fetchall()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.events.append(("error", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append(("warning", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.events.append(("info", event, fields))


async def test_job_rows_whose_backend_is_ended_reconnect_and_keep_every_write_in_order(
    postgres_url: str,
):
    rows = await PostgresJobRows.open(postgres_url, TABLE)
    await rows.put(1, "running")
    for step in range(100):
        rows.put_soon(1, f"running {step}")
    rows.put_soon(2, "to be deleted")
    # Ended while those writes may still be under way: one that fails is made again.
    assert await asyncio.to_thread(end_holder, postgres_url) == 1
    for step in range(100, 200):
        rows.put_soon(1, f"running {step}")
    await rows.delete([2])
    rows.put_soon(1, "completed")
    rows.put_soon(3, "queued")
    await rows.flush()

    assert await asyncio.to_thread(stored, postgres_url) == [(1, "completed"), (3, "queued")]
    assert await rows.load_all() == ["completed", "queued"]
    # The table lock came back with the new connection: a second process is still refused.
    with pytest.raises(errors.FailedPreconditionError) as caught:
        await PostgresJobRows.open(postgres_url, TABLE)
    assert caught.value.reason == "JOB_STORE_IN_USE"

    # A second cut, with nothing under way: the next write is the one that finds it.
    assert await asyncio.to_thread(end_holder, postgres_url) == 1
    await rows.put(3, "completed")
    assert await rows.allocate_id() == 1
    assert await asyncio.to_thread(stored, postgres_url) == [(1, "completed"), (3, "completed")]
    # Cut once more just before closing: nothing is pending, so closing has nothing to do.
    assert await asyncio.to_thread(end_holder, postgres_url) == 1
    await rows.close()

    reopened = await PostgresJobRows.open(postgres_url, TABLE)
    assert await reopened.load_all() == ["completed", "completed"]
    await reopened.close()


async def test_job_rows_cut_off_from_a_backend_the_server_still_keeps_end_it_and_go_on(
    postgres_url: str,
):
    rows = await PostgresJobRows.open(postgres_url, TABLE)
    await rows.put(1, "running")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        [(name,)] = admin.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"easel {TABLE} %",),
        ).fetchall()
    assert end_holder(postgres_url) == 1
    # The server has not yet noticed the cut: the old backend, so named, keeps the lock.
    with psycopg.connect(postgres_url, autocommit=True, application_name=name) as lingering:
        lingering.execute("SELECT pg_advisory_lock(%s)", (table_lock_key(TABLE),))

        await rows.put(1, "completed")

        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
    assert await asyncio.to_thread(stored, postgres_url) == [(1, "completed")]
    await rows.close()


async def test_job_rows_cut_off_while_another_process_takes_their_table_refuse_every_call(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    rows = await PostgresJobRows.open(postgres_url, TABLE)
    logged = Recorder()
    monkeypatch.setattr(sys.modules[PostgresJobRows.__module__], "log", logged)
    await rows.put(1, "running")

    with psycopg.connect(postgres_url, autocommit=True) as other:
        assert end_holder(postgres_url) == 1
        # Granted once the ended backend has let go of the lock.
        other.execute("SELECT pg_advisory_lock(%s)", (table_lock_key(TABLE),))

        with pytest.raises(errors.FailedPreconditionError) as caught:
            await rows.put(1, "completed")
        assert caught.value.reason == "JOB_STORE_IN_USE"
        assert caught.value.metadata == {"table": TABLE}
        assert "another process took over download_jobs" in caught.value.message
        assert ("error", "job table taken over by another process", {"table": TABLE}) in (
            logged.events
        )

        rows.put_soon(2, "queued")
        for call in (rows.flush(), rows.load_all(), rows.allocate_id(), rows.delete([1])):
            with pytest.raises(errors.FailedPreconditionError) as caught:
                await call
            assert caught.value.reason == "JOB_STORE_IN_USE"
        failed = [fields for _, event, fields in logged.events if event == "writing a job failed"]
        assert len(failed) == 1
        assert isinstance(failed[0]["exc_info"], errors.FailedPreconditionError)
        # Nothing was written after the table was lost.
        assert stored(postgres_url) == [(1, "running")]
        await rows.close()
        assert other.execute(
            "SELECT pg_advisory_unlock(%s)", (table_lock_key(TABLE),)
        ).fetchone() == (True,)


def probe_pool(url: str) -> PostgresPool:
    return PostgresPool(
        url,
        "probe",
        [Migration(1, ("CREATE SEQUENCE probe_ids",))],
        what="the probe database",
        unavailable_reason="PROBE_UNAVAILABLE",
        max_size=1,
    )


def test_a_pool_whose_server_stopped_says_the_database_cannot_be_reached():
    server = TestPostgres()  # a server of its own, to stop
    try:
        pool = probe_pool(server.new_database())
    finally:
        server.stop()
    with pytest.raises(errors.UnavailableError) as caught, pool.connection() as db:
        db.execute("SELECT 1")
    assert caught.value.reason == "PROBE_UNAVAILABLE"
    assert caught.value.message.startswith(f"the probe database {pool.location} cannot be reached")
    pool.close()


def test_a_pool_whose_connection_is_ended_says_so_then_connects_again(postgres_url: str):
    pool = probe_pool(postgres_url)
    with pool.connection() as db:
        pid = db.info.backend_pid
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    with pytest.raises(errors.UnavailableError) as caught, pool.connection() as db:
        db.execute("SELECT 1")
    assert "cannot be reached" in caught.value.message
    with pool.connection() as db:
        assert db.execute("SELECT 1").fetchone() == (1,)
    pool.close()


def test_a_statement_the_server_cancels_is_not_taken_for_an_unreachable_database(
    postgres_url: str,
):
    pool = probe_pool(postgres_url)
    with pool.connection() as db:  # the pool's one connection, used again below
        db.execute("SET statement_timeout = '10ms'")
    with pytest.raises(errors.UnavailableError) as caught, pool.connection() as db:
        db.execute("SELECT pg_sleep(10)")
    message = caught.value.message
    assert "cannot be reached" not in message
    assert message.startswith(f"the probe database {pool.location} is busy or short of resources")
    assert "statement timeout" in message
    assert caught.value.reason == "PROBE_UNAVAILABLE"
    assert caught.value.metadata["sqlstate"] == "57014"

    # Any other refusal is PostgreSQL's own error, for the caller to report.
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState), pool.connection() as db:
        db.execute("SELECT currval('probe_ids')")
    with pool.connection() as db:
        assert db.execute("SELECT nextval('probe_ids')").fetchone() == (1,)
    pool.close()
