"""Where download jobs survive a restart: their last saved states, in the SQLite file
`downloads_db_path` or the `download_jobs` table of the PostgreSQL database.

A job is saved at every change of status, not on every chunk: a restart recomputes the
bytes from the partial files. Access tokens are never written: a job given one is stored
with an empty token, so it still shows that it had one, and the queue ends such a job, if
it is unfinished at start-up, in TOKEN_REQUIRED instead of running it without its token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr

from services.common.job_rows import JobRows, open_job_rows
from services.downloader.jobs import DownloadJob


class DownloadJobStore:
    """Download jobs by id, ids that are never reused, and writes kept in the order asked."""

    def __init__(self, rows: JobRows) -> None:
        self._rows = rows

    @classmethod
    async def open(cls, database_url: str, sqlite_path: Path) -> DownloadJobStore:
        """The store on the engine `database_url` names (see `open_job_rows`)."""
        return cls(await open_job_rows(database_url, sqlite_path, "download_jobs"))

    async def allocate_id(self) -> int:
        return await self._rows.allocate_id()

    def save(self, job: DownloadJob) -> None:
        """Store the job as it is now: read at once, written later off the event loop,
        after every write asked for before. Returns at once; `flush` waits for it."""
        data = job.model_dump(mode="json", exclude={"access_token"})
        if job.access_token is not None:
            data["access_token"] = ""
        self._rows.put_soon(job.id, json.dumps(data))

    async def delete(self, job_ids: Iterable[int]) -> None:
        await self._rows.delete(job_ids)

    async def flush(self) -> None:
        """Wait until every save and delete asked for so far is written."""
        await self._rows.flush()

    async def load_all(self) -> list[DownloadJob]:
        """Every stored job, by id; none holds a token (a row written before tokens were
        left out may still have one: it is dropped here too)."""
        jobs = [DownloadJob.model_validate_json(text) for text in await self._rows.load_all()]
        for job in jobs:
            if job.access_token is not None:
                job.access_token = SecretStr("")
        return jobs

    async def close(self) -> None:
        """Write what is pending, then close the file or connection."""
        await self._rows.close()
