"""Download jobs as the queue keeps them, and the events it publishes about them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, SecretStr

DEFAULT_PRIORITY = 10


class DownloadJobStatus(StrEnum):
    """Where a job is in its lifecycle (the reference's DownloadJobStatus)."""

    IDLE = "idle"
    ENQUEUED = "enqueued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def active(self) -> bool:
        return self in (DownloadJobStatus.ENQUEUED, DownloadJobStatus.RUNNING)


TERMINAL_STATUSES = frozenset(
    {DownloadJobStatus.COMPLETED, DownloadJobStatus.ERROR, DownloadJobStatus.CANCELLED}
)


class DownloadJobKind(StrEnum):
    """What a job transfers."""

    URL = "url"
    LOCAL_PATH = "local_path"
    MULTI_FILE = "multi_file"


class DownloadPart(BaseModel):
    """One file a job transfers: the only one of URL and LOCAL_PATH jobs, one of many of
    MULTI_FILE jobs. Resume validators are kept per file.

    Who writes it: the queue's event loop, except while the file transfers. Then the
    transfer (a coroutine on a transfer thread for a URL, a worker thread for a local
    copy) alone writes `bytes`, `total_bytes`, `destination` and the validators, and the
    loop only reads them: a snapshot may hold a newer `bytes` than `total_bytes`, never a
    torn value (each is one attribute store). `status` is the loop's alone, set before
    the transfer starts and after it has ended; stopping a transfer waits until it has.
    """

    source: str
    destination: Path | None = None
    bytes: int = 0
    total_bytes: int = 0
    expected_size: int = 0
    status: DownloadJobStatus = DownloadJobStatus.IDLE
    etag: str = ""
    last_modified: str = ""
    content_type: str = ""


class DownloadJob(BaseModel):
    """A job and everything needed to run, resume or report it."""

    id: int
    kind: DownloadJobKind
    status: DownloadJobStatus = DownloadJobStatus.IDLE
    source: str = ""
    destination: Path | None = None
    dest_dir: Path | None = None
    filename: str = ""
    dest_path: Path | None = None
    priority: int = DEFAULT_PRIORITY
    parts: list[DownloadPart]
    access_token: SecretStr | None = None  # empty once ended, and when loaded (never stored)
    preserve_partial_downloads: bool = False
    move: bool = False
    job_sequence: int = 0
    create_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    error_type: str = ""
    error: str = ""

    @property
    def bytes(self) -> int:
        return sum(part.bytes for part in self.parts)

    @property
    def total_bytes(self) -> int:
        """The sum of the files' sizes, once every one is known; 0 before."""
        if any(part.total_bytes == 0 for part in self.parts):
            return 0
        return sum(part.total_bytes for part in self.parts)

    def partial_path(self, part: DownloadPart) -> Path | None:
        """Where `part`'s data is written until complete: `<final>.<job id>.part`."""
        if part.destination is None:
            return None
        return part.destination.with_name(f"{part.destination.name}.{self.id}.part")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobChanged:
    """A job's status or fields changed; carries a snapshot of the whole job."""

    job: DownloadJob
    time: datetime

    @property
    def job_id(self) -> int:
        return self.job.id


@dataclass(frozen=True)
class JobProgress:
    """Bytes moved: about every 1% of a file, and at least once a second while bytes flow."""

    job_id: int
    bytes: int
    total_bytes: int
    parts: tuple[tuple[int, int, DownloadJobStatus], ...]
    time: datetime


DownloadEvent = JobChanged | JobProgress


class TransferError(Exception):
    """Why a file transfer failed; ends its job in ERROR with `error_type`."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
