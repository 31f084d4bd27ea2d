"""Where install jobs survive a restart: their last saved states, in the SQLite file
`install_jobs_db` or the `install_jobs` table of the PostgreSQL database.

A job is saved when its state changes, not on download progress (the downloader keeps the
bytes). Access tokens are never written: a job given one is stored with an empty token,
so it still shows that it had one, and a job taken up again after a restart that must
reach the remote host once more ends in TOKEN_REQUIRED instead of running without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from services.common.job_rows import JobRows, open_job_rows
from services.model_manager.install.install_jobs import InstallJob


class InstallJobStore:
    """Install jobs by id, and ids that are never reused."""

    def __init__(self, rows: JobRows) -> None:
        self._rows = rows

    @classmethod
    async def open(cls, database_url: str, sqlite_path: Path) -> InstallJobStore:
        """The store on the engine `database_url` names (see `open_job_rows`)."""
        return cls(await open_job_rows(database_url, sqlite_path, "install_jobs"))

    async def allocate_id(self) -> int:
        return await self._rows.allocate_id()

    async def save(self, job: InstallJob) -> None:
        """Store the job as it is now (read at once, written later off the event loop)."""
        data = job.model_dump(mode="json")
        if getattr(job.source, "access_token", None) is not None:
            data["source"]["access_token"] = ""
        await self._rows.put(job.id, json.dumps(data))

    async def delete(self, job_ids: Iterable[int]) -> None:
        await self._rows.delete(job_ids)

    async def load_all(self) -> list[InstallJob]:
        return [InstallJob.model_validate_json(text) for text in await self._rows.load_all()]

    async def close(self) -> None:
        await self._rows.close()
