"""Jobs kept in SQLite across restarts: writes in the order asked, ids never reused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common import sqlite_jobs
from services.common.sqlite_jobs import SqliteJobRows


async def test_writes_land_in_the_order_asked_awaited_or_not(tmp_path: Path):
    rows = SqliteJobRows(tmp_path / "jobs.db", "jobs")
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
    rows.close()


async def test_close_writes_what_was_asked_and_ids_survive_it(tmp_path: Path):
    path = tmp_path / "jobs.db"
    rows = SqliteJobRows(path, "jobs")
    ids = [await rows.allocate_id() for _ in range(3)]
    for job_id in ids:
        rows.put_soon(job_id, f"job {job_id}")
    await rows.delete(ids)
    rows.put_soon(9, "pending at close")
    rows.close()

    reopened = SqliteJobRows(path, "jobs")
    assert await reopened.load_all() == ["pending at close"]
    assert await reopened.allocate_id() == 4
    reopened.close()


async def test_a_write_that_fails_unawaited_is_logged_and_later_ones_still_land(
    tmp_path: Path, monkeypatch
):
    logged: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def error(self, event: str, **fields: Any) -> None:
            logged.append((event, fields))

    monkeypatch.setattr(sqlite_jobs, "log", Recorder())
    rows = SqliteJobRows(tmp_path / "jobs.db", "jobs")
    rows.put_soon(1, None)  # type: ignore[arg-type]  # the NOT NULL column refuses it
    rows.put_soon(2, "kept")
    await rows.flush()
    assert await rows.load_all() == ["kept"]
    [(event, fields)] = logged
    assert event == "writing a job failed"
    assert fields["table"] == "jobs"
    assert "NOT NULL" in str(fields["exc_info"])
    rows.close()
