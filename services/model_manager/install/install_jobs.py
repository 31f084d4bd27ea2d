"""Install jobs (the reference's ModelInstallJob) and the events the installer publishes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from services.model_manager.install.model_sources import ModelSource
from services.model_manager.records.configs import AnyModelConfig


class InstallStatus(StrEnum):
    """Where an install is: waiting, downloading, running (probe, move, register), done."""

    WAITING = "waiting"
    DOWNLOADING = "downloading"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (InstallStatus.COMPLETED, InstallStatus.ERROR, InstallStatus.CANCELLED)


class InstallPart(BaseModel):
    """One file being downloaded for an install."""

    source: str
    local_path: str = ""
    bytes: int = 0
    total_bytes: int = 0
    download_job_id: int = 0


class InstallJob(BaseModel):
    """An install from its request to its record (or its error)."""

    id: int
    status: InstallStatus = InstallStatus.WAITING
    source: ModelSource
    config_in: dict[str, Any] = Field(default_factory=dict)
    config_out: AnyModelConfig | None = None
    inplace: bool = False
    local_path: Path | None = None
    bytes: int = 0
    total_bytes: int = 0
    parts: list[InstallPart] = Field(default_factory=list)
    download_job_ids: list[int] = Field(default_factory=list)
    error_type: str = ""
    error: str = ""
    create_time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    end_time: datetime | None = None
    # Kept for a restart, not shown to callers:
    repo_metadata: dict[str, Any] = Field(default_factory=dict)
    """Record fields read from a repo before its download (tags, source_api_response),
    so a job taken up again after a restart still writes them."""
    destination: Path | None = None
    """Where placing puts the model inside models_dir, saved before anything is moved
    there, so a restart can remove a half-placed model."""


class InstallEventKind(StrEnum):
    """The reference's model_install_* events, plus the snapshot a watch begins with."""

    SNAPSHOT = "snapshot"
    DOWNLOADING = "downloading"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class InstallEvent:
    """Something happened to a job; carries a snapshot of it for the payload's fields."""

    kind: InstallEventKind
    job: InstallJob
    time: datetime

    @property
    def job_id(self) -> int:
        return self.job.id
