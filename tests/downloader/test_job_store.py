"""The download job store, on SQLite and PostgreSQL: the file format it keeps, and tokens it
never writes."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from pydantic import SecretStr

from services.downloader.job_store import DownloadJobStore
from services.downloader.jobs import DownloadJob, DownloadJobKind, DownloadJobStatus, DownloadPart

SECRET = "hf_not-to-be-written"


def a_job(job_id: int, token: str | None) -> DownloadJob:
    return DownloadJob(
        id=job_id,
        kind=DownloadJobKind.URL,
        status=DownloadJobStatus.RUNNING,
        source="https://example.com/a.bin",
        parts=[DownloadPart(source="https://example.com/a.bin")],
        access_token=SecretStr(token) if token is not None else None,
        create_time=datetime.now(UTC),
    )


def written(database_url: str, folder: Path) -> bytes:
    """Everything the store wrote: the SQLite files (the WAL holds the writes until closed)
    or the rows of the PostgreSQL table."""
    if database_url == "sqlite:":
        return b"".join(path.read_bytes() for path in folder.glob("downloads.db*"))
    with psycopg.connect(database_url) as db:
        return str(db.execute("SELECT id, job FROM download_jobs").fetchall()).encode()


async def test_tokens_are_never_written_and_a_job_shows_it_had_one(
    database_url: str, tmp_path: Path
):
    store = await DownloadJobStore.open(database_url, tmp_path / "downloads.db")
    with_token = a_job(await store.allocate_id(), SECRET)
    without = a_job(await store.allocate_id(), None)
    store.save(with_token)
    store.save(without)
    await store.flush()
    everything = written(database_url, tmp_path)
    assert b"example.com/a.bin" in everything
    assert SECRET.encode() not in everything

    loaded = {job.id: job for job in await store.load_all()}
    assert loaded[with_token.id].access_token == SecretStr("")
    assert loaded[without.id].access_token is None
    await store.close()


async def test_a_file_written_by_an_earlier_version_opens_and_keeps_its_ids(tmp_path: Path):
    """Earlier versions wrote the same table and counter, and the token of unfinished jobs
    in clear text: such a token is not taken up again."""
    path = tmp_path / "downloads.db"
    old = a_job(7, None).model_dump(mode="json")
    old["access_token"] = SECRET
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE download_jobs (id INTEGER PRIMARY KEY, job TEXT NOT NULL)")
        db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.execute("INSERT INTO counters (name, value) VALUES ('job_id', 7)")
        db.execute("INSERT INTO download_jobs (id, job) VALUES (7, ?)", (json.dumps(old),))
    db.close()

    store = await DownloadJobStore.open("sqlite:", path)
    [loaded] = await store.load_all()
    assert (loaded.id, loaded.access_token) == (7, SecretStr(""))
    assert await store.allocate_id() == 8
    store.save(loaded)
    await store.close()
    with sqlite3.connect(path) as db:
        assert SECRET not in str(db.execute("SELECT job FROM download_jobs").fetchall())
    db.close()
