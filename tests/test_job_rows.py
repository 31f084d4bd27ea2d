"""Jobs kept across restarts, on SQLite and on PostgreSQL alike: writes in the order asked,
ids never reused, and (PostgreSQL) one process per job table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from services.common import errors
from services.common.job_rows import open_job_rows


async def test_writes_land_in_the_order_asked_awaited_or_not(database_url: str, tmp_path: Path):
    rows = await open_job_rows(database_url, tmp_path / "jobs.db", "jobs")
    for step in range(200):
        rows.put_soon(1, f"state {step}")
    await rows.put(2, "other")
    assert await rows.load_all() == ["state 199", "other"]
    for step in range(200, 300):
        rows.put_soon(1, f"state {step}")
    await rows.delete([2])
    rows.put_soon(3, "last")
    await rows.flush()
    assert await rows.load_all() == ["state 299", "last"]
    await rows.close()


async def test_close_writes_what_was_asked_and_ids_survive_it(database_url: str, tmp_path: Path):
    path = tmp_path / "jobs.db"
    rows = await open_job_rows(database_url, path, "jobs")
    ids = [await rows.allocate_id() for _ in range(3)]
    for job_id in ids:
        rows.put_soon(job_id, f"job {job_id}")
    await rows.delete(ids)
    rows.put_soon(9, "pending at close")
    await rows.close()

    reopened = await open_job_rows(database_url, path, "jobs")
    assert await reopened.load_all() == ["pending at close"]
    assert await reopened.allocate_id() == 4
    await reopened.close()


async def test_a_write_that_fails_unawaited_is_logged_and_later_ones_still_land(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    logged: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def error(self, event: str, **fields: Any) -> None:
            logged.append((event, fields))

    rows = await open_job_rows(database_url, tmp_path / "jobs.db", "jobs")
    monkeypatch.setattr(sys.modules[type(rows).__module__], "log", Recorder())
    rows.put_soon(1, None)  # type: ignore[arg-type]  # the NOT NULL column refuses it
    rows.put_soon(2, "kept")
    await rows.flush()
    assert await rows.load_all() == ["kept"]
    [(event, fields)] = logged
    assert event == "writing a job failed"
    assert fields["table"] == "jobs"
    assert "not null" in str(fields["exc_info"]).lower().replace("-", " ")
    await rows.close()


async def test_tables_of_one_database_keep_their_own_jobs_and_ids(
    database_url: str, tmp_path: Path
):
    downloads = await open_job_rows(database_url, tmp_path / "downloads.db", "download_jobs")
    installs = await open_job_rows(database_url, tmp_path / "installs.db", "install_jobs")
    assert [await downloads.allocate_id(), await downloads.allocate_id()] == [1, 2]
    assert await installs.allocate_id() == 1
    await downloads.put(1, "download")
    await installs.put(1, "install")
    assert await downloads.load_all() == ["download"]
    assert await installs.load_all() == ["install"]
    await downloads.close()
    await installs.close()


async def test_a_second_process_on_a_postgres_job_table_is_refused_until_the_first_closes(
    postgres_url: str, tmp_path: Path
):
    first = await open_job_rows(postgres_url, tmp_path / "unused.db", "download_jobs")
    await first.put(await first.allocate_id(), "first's job")
    with pytest.raises(errors.FailedPreconditionError) as caught:
        await open_job_rows(postgres_url, tmp_path / "unused.db", "download_jobs")
    assert caught.value.reason == "JOB_STORE_IN_USE"
    assert "download_jobs" in caught.value.message
    await first.close()

    second = await open_job_rows(postgres_url, tmp_path / "unused.db", "download_jobs")
    assert await second.load_all() == ["first's job"]
    assert await second.allocate_id() == 2
    await second.close()
