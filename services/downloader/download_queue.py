"""The download queue (the reference's DownloadQueueService), complete and durable.

Every job runs as one asyncio task; its files each take a transfer slot while they move
bytes (at most `max_parallel_downloads`, given out by priority). Pause, cancel and
shutdown all stop a job by cancelling its task, with a recorded reason deciding what
happens to its partial files: pause keeps them for a Range resume, cancel deletes them
(unless preserved), shutdown leaves the job as it was so a restart resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import structlog
from pydantic import SecretStr
from yarl import URL

from services.common import errors
from services.common.allowed_roots import resolve_within
from services.common.event_bus import Delivery
from services.common.job_table import JobTable
from services.downloader.address_guard import AddressGuard, AddressNotAllowedError
from services.downloader.file_names import is_plain_name, is_safe_relative_path
from services.downloader.job_store import DownloadJobStore
from services.downloader.jobs import (
    DEFAULT_PRIORITY,
    DownloadEvent,
    DownloadJob,
    DownloadJobKind,
    DownloadJobStatus,
    DownloadPart,
    JobChanged,
    JobProgress,
    TransferError,
    now,
)
from services.downloader.local_transfer import (
    TransferStopped,
    copy_tree,
    remove_tree,
    rename_into_place,
    tree_size,
)
from services.downloader.settings import DownloaderSettings
from services.downloader.transfer_slots import TransferSlots
from services.downloader.url_download import UrlDownloader

log = structlog.get_logger(__name__)

Status = DownloadJobStatus
PROGRESS_INTERVAL_S = 1.0


class _StopReason(Enum):
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a multi-file request: its URL, path under dest_dir and known size."""

    url: str
    path: str
    size: int = 0


@dataclass(frozen=True)
class NewDownload:
    """A request for a job, as CreateDownloadJob carries it."""

    source: str = ""
    files: tuple[RemoteFile, ...] = ()
    dest_dir: str = ""
    dest_path: str = ""
    filename: str = ""
    priority: int = DEFAULT_PRIORITY
    access_token: str = ""
    start_later: bool = False
    preserve_partial_downloads: bool = False
    move: bool = False


class DownloadQueue:
    """Jobs, their scheduling, control, persistence and events."""

    def __init__(self, store: DownloadJobStore, settings: DownloaderSettings) -> None:
        self._store = store
        self._roots = settings.allowed_roots
        self._reserve = settings.free_space_reserve_bytes
        self._guard = AddressGuard(settings.allowed_networks)
        self._url = UrlDownloader(self._guard, self._check_free_space)
        self._slots = TransferSlots(settings.max_parallel_downloads)
        self._jobs: JobTable[DownloadJob, DownloadEvent] = JobTable(
            "downloader", "download job", "DOWNLOAD_JOB_NOT_FOUND", lambda job: job.status.terminal
        )
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stop_reasons: dict[int, _StopReason] = {}
        self._sequence = 0

    async def start(self) -> None:
        """Open the HTTP session and resume the jobs a previous run left unfinished."""
        await self._url.start()
        for job in self._store.load_all():
            self._jobs.add(job)
            self._sequence = max(self._sequence, job.job_sequence)
            for part in job.parts:
                partial = job.partial_path(part)
                if part.status is not Status.COMPLETED and partial is not None:
                    part.bytes = partial.stat().st_size if partial.is_file() else 0
            if job.status.active:
                log.info("resuming download", job_id=job.id)
                self._enqueue(job)

    async def shutdown(self) -> None:
        """Stop every running job where it is (partials kept, status unchanged)."""
        self._jobs.close()
        for job_id in list(self._tasks):
            self._stop_reasons[job_id] = _StopReason.SHUTDOWN
            self._tasks[job_id].cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._url.close()

    # Creating and reading jobs

    def create(self, new: NewDownload) -> DownloadJob:
        """Validate `new` completely, then create its job (nothing is left on a refusal)."""
        job = self._new_job(new)
        self._jobs.add(job)
        if new.start_later:
            self._save_and_publish(job)
        else:
            self._enqueue(job)
        return job

    def get(self, job_id: int) -> DownloadJob:
        return self._jobs.get(job_id)

    def list(self, statuses: Iterable[Status] = ()) -> list[DownloadJob]:
        wanted = set(statuses)
        return [job for job in self._jobs.all() if not wanted or job.status in wanted]

    def prune(self) -> list[int]:
        pruned = self._jobs.prune()
        self._store.delete(pruned)
        return pruned

    # Control

    def start_job(self, job_id: int) -> DownloadJob:
        job = self._unfinished(job_id)
        if job.status in (Status.IDLE, Status.PAUSED):
            self._enqueue(job)
        return job

    async def pause_job(self, job_id: int) -> DownloadJob:
        job = self._unfinished(job_id)
        if job.status.active:
            await self._stop(job, _StopReason.PAUSE)
        return job

    async def cancel_job(self, job_id: int) -> DownloadJob:
        job = self.get(job_id)
        if job.status is Status.CANCELLED:
            return job
        job = self._unfinished(job_id)
        if job.status.active:
            await self._stop(job, _StopReason.CANCEL)
        else:
            self._finish_cancelled(job)
        return job

    def start_all(self) -> list[DownloadJob]:
        return [self.start_job(job.id) for job in self.list([Status.IDLE, Status.PAUSED])]

    async def pause_all(self) -> list[DownloadJob]:
        return [
            await self.pause_job(job.id) for job in self.list([Status.ENQUEUED, Status.RUNNING])
        ]

    async def cancel_all(self) -> list[DownloadJob]:
        unfinished = [Status.IDLE, Status.ENQUEUED, Status.RUNNING, Status.PAUSED]
        return [await self.cancel_job(job.id) for job in self.list(unfinished)]

    async def wait(self, job_id: int) -> DownloadJob:
        return await self._jobs.wait(job_id)

    async def wait_all(self) -> list[DownloadJob]:
        """Wait until nothing is enqueued or running; the jobs that were, by id."""
        return await self._jobs.wait_all(lambda job: job.status.active)

    def watch(self, job_ids: Iterable[int]) -> AsyncIterator[Delivery[DownloadEvent]]:
        """A job's snapshot, then its changes and progress, until all watched are finished."""
        return self._jobs.watch(
            job_ids,
            lambda job: JobChanged(job, now()),
            lambda event: isinstance(event, JobChanged) and event.job.status.terminal,
        )

    # Validation

    def _new_job(self, new: NewDownload) -> DownloadJob:
        if new.files:
            kind, parts = DownloadJobKind.MULTI_FILE, self._remote_files(new)
        elif _is_url(new.source):
            kind, parts = DownloadJobKind.URL, [DownloadPart(source=self._url_source(new.source))]
        else:
            kind, parts = DownloadJobKind.LOCAL_PATH, [DownloadPart(source=self._local_source(new))]
        if kind is not DownloadJobKind.LOCAL_PATH and new.move:
            raise errors.InvalidArgumentError("move applies to local sources only", field="move")
        if kind is DownloadJobKind.LOCAL_PATH and new.access_token:
            raise errors.InvalidArgumentError(
                "an access token applies to URLs only", field="access_token"
            )
        dest_dir, dest_path, destination = self._destination(new, kind)
        if kind is DownloadJobKind.MULTI_FILE:
            assert dest_dir is not None
            for part, file in zip(parts, new.files, strict=True):
                part.destination = dest_dir / file.path
        else:
            parts[0].destination = destination
        self._check_space_at_create(
            dest_dir or (dest_path.parent if dest_path else None), kind, parts
        )
        job = DownloadJob(
            id=self._store.allocate_id(),
            kind=kind,
            source="" if kind is DownloadJobKind.MULTI_FILE else parts[0].source,
            destination=destination,
            dest_dir=dest_dir,
            filename=new.filename,
            dest_path=dest_path,
            priority=new.priority,
            parts=parts,
            access_token=SecretStr(new.access_token) if new.access_token else None,
            preserve_partial_downloads=new.preserve_partial_downloads,
            move=new.move,
            create_time=now(),
        )
        if kind is DownloadJobKind.LOCAL_PATH:
            parts[0].total_bytes = tree_size(Path(parts[0].source))
        return job

    def _url_source(self, source: str, field: str = "single_source") -> str:
        try:
            url = URL(source)
        except ValueError:
            url = URL()
        if not url.host:
            raise errors.InvalidArgumentError(
                f"{source!r} is not a valid URL: it names no host",
                field=field,
                reason="INVALID_SOURCE",
                metadata={"source": source},
            )
        try:
            self._guard.check_literal(url.host)
        except AddressNotAllowedError as exc:
            raise errors.PermissionDeniedError(
                str(exc),
                reason="ADDRESS_NOT_ALLOWED",
                metadata={"host": exc.host, "address": exc.address},
            ) from None
        return source

    def _local_source(self, new: NewDownload) -> str:
        source = new.source.strip()
        if not source:
            raise errors.InvalidArgumentError(
                "a source is required", field="single_source", reason="INVALID_SOURCE"
            )
        scheme = source.partition("://")[0]
        if "://" in source:
            raise errors.InvalidArgumentError(
                f"unsupported URL scheme {scheme!r}: only http and https are downloaded",
                field="single_source",
                reason="UNSUPPORTED_SCHEME",
                metadata={"scheme": scheme},
            )
        path = resolve_within(
            source, self._roots, field="single_source", invalid_reason="INVALID_SOURCE"
        )
        if not path.exists():
            raise errors.FailedPreconditionError(
                f"nothing exists at {path}",
                reason="SOURCE_NOT_FOUND",
                metadata={"path": str(path)},
            )
        return str(path)

    def _remote_files(self, new: NewDownload) -> list[DownloadPart]:
        paths: set[str] = set()
        parts = []
        for index, file in enumerate(new.files):
            field = f"multi_file.files[{index}]"
            if not _is_url(file.url):
                raise errors.InvalidArgumentError(
                    f"{file.url!r} is not an http(s) URL",
                    field=f"{field}.url",
                    reason="INVALID_SOURCE",
                    metadata={"source": file.url},
                )
            if not is_safe_relative_path(file.path) or file.path in paths:
                raise errors.InvalidArgumentError(
                    f"{file.path!r} must be a unique relative path without '..'",
                    field=f"{field}.path",
                    reason="INVALID_SOURCE",
                    metadata={"source": file.path},
                )
            if file.size < 0:
                raise errors.InvalidArgumentError(
                    "size must not be negative", field=f"{field}.size", reason="INVALID_SOURCE"
                )
            paths.add(file.path)
            self._url_source(file.url, field=f"{field}.url")
            parts.append(
                DownloadPart(source=file.url, expected_size=file.size, total_bytes=file.size)
            )
        return parts

    def _destination(
        self, new: NewDownload, kind: DownloadJobKind
    ) -> tuple[Path | None, Path | None, Path | None]:
        """(dest_dir, dest_path, final destination if known now) of a request."""

        def invalid(message: str, field: str) -> errors.InvalidArgumentError:
            return errors.InvalidArgumentError(message, field=field, reason="INVALID_DESTINATION")

        if bool(new.dest_dir) == bool(new.dest_path):
            raise invalid("give exactly one of dest_dir and dest_path", "dest_dir")
        if new.filename and (not new.dest_dir or kind is DownloadJobKind.MULTI_FILE):
            raise invalid("filename goes with dest_dir, and not with multi_file", "filename")
        if new.filename and not is_plain_name(new.filename):
            raise invalid(f"{new.filename!r} is not a plain file name", "filename")
        if new.dest_path:
            if kind is DownloadJobKind.MULTI_FILE:
                raise invalid("a multi-file job needs dest_dir", "dest_path")
            dest_path = self._within_roots(new.dest_path, "dest_path")
            destination: Path | None = dest_path
            dest_dir = None
        else:
            dest_dir = self._within_roots(new.dest_dir, "dest_dir")
            dest_path = None
            if kind is DownloadJobKind.MULTI_FILE:
                destination = dest_dir
            elif new.filename:
                destination = dest_dir / new.filename
            elif kind is DownloadJobKind.LOCAL_PATH:
                destination = dest_dir / Path(new.source).name
            else:
                destination = None
        if (
            destination is not None
            and kind is not DownloadJobKind.MULTI_FILE
            and destination.is_dir()
        ):
            raise errors.FailedPreconditionError(
                f"a folder exists at {destination}",
                reason="DESTINATION_EXISTS",
                metadata={"path": str(destination)},
            )
        return dest_dir, dest_path, destination

    def _within_roots(self, path: str, field: str) -> Path:
        return resolve_within(path, self._roots, field=field, invalid_reason="INVALID_DESTINATION")

    def _check_space_at_create(
        self, folder: Path | None, kind: DownloadJobKind, parts: list[DownloadPart]
    ) -> None:
        if folder is None:
            return
        if kind is DownloadJobKind.LOCAL_PATH:
            needed = tree_size(Path(parts[0].source))
        else:
            needed = sum(part.expected_size for part in parts)
        free = _free_bytes(folder)
        if free - needed < self._reserve:
            raise errors.ResourceExhaustedError(
                f"not enough free space in {folder}: {free} bytes free, "
                f"{needed + self._reserve} needed (with the reserve)",
                reason="DISK_FULL",
                metadata={
                    "path": str(folder),
                    "free_bytes": str(free),
                    "required_bytes": str(needed + self._reserve),
                },
            )

    def _check_free_space(self, folder: Path, needed: int) -> None:
        free = _free_bytes(folder)
        if free - needed < self._reserve:
            raise TransferError(
                "DISK_FULL",
                f"not enough free space in {folder}: {free} bytes free, "
                f"{needed} to write and {self._reserve} to keep free",
            )

    # Running

    def _unfinished(self, job_id: int) -> DownloadJob:
        job = self.get(job_id)
        if job.status.terminal:
            raise errors.FailedPreconditionError(
                f"download job {job_id} is {job.status.value}",
                reason="DOWNLOAD_JOB_FINISHED",
                metadata={"job_id": str(job_id), "status": job.status.value},
            )
        return job

    def _enqueue(self, job: DownloadJob) -> None:
        job.status = Status.ENQUEUED
        for part in job.parts:
            if part.status is not Status.COMPLETED:
                part.status = Status.ENQUEUED
        self._save_and_publish(job)
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"download-{job.id}")

    async def _stop(self, job: DownloadJob, reason: _StopReason) -> None:
        task = self._tasks.get(job.id)
        if task is None:
            return
        self._stop_reasons[job.id] = reason
        task.cancel()
        await asyncio.wait([task])

    async def _run(self, job: DownloadJob) -> None:
        try:
            if job.kind is DownloadJobKind.LOCAL_PATH:
                await self._run_local(job)
            else:
                await self._run_remote(job)
        except asyncio.CancelledError:
            self._stopped(job, self._stop_reasons.pop(job.id, _StopReason.SHUTDOWN))
        except TransferError as exc:
            self._failed(job, exc.error_type, exc.message)
        except Exception as exc:
            log.exception("download failed unexpectedly", job_id=job.id)
            self._failed(job, "INTERNAL", f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job, Status.COMPLETED)
        finally:
            self._tasks.pop(job.id, None)

    async def _run_remote(self, job: DownloadJob) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for part in job.parts:
                    if part.status is not Status.COMPLETED:
                        group.create_task(self._run_part(job, part))
        except BaseExceptionGroup as group:
            raise _first_cause(group) from None
        for part in job.parts:
            self._put_in_place(job.partial_path(part), part.destination)

    async def _run_part(self, job: DownloadJob, part: DownloadPart) -> None:
        async with self._slots.slot(job.priority, job.id):
            self._mark_running(job)
            part.status = Status.RUNNING
            try:
                await self._url.download(
                    job, part, lambda name: self._name_destination(job, name), _Progress(self, job)
                )
            except TransferError:
                part.status = Status.ERROR
                raise
            part.status = Status.COMPLETED
            self._store.save(job)  # a restart then skips this file of a multi-file job

    async def _run_local(self, job: DownloadJob) -> None:
        part = job.parts[0]
        source, final = Path(part.source), part.destination
        assert final is not None
        async with self._slots.slot(job.priority, job.id):
            self._mark_running(job)
            part.status = Status.RUNNING
            if job.move and rename_into_place(source, final):
                part.bytes = part.total_bytes
                part.status = Status.COMPLETED
                return
            partial = job.partial_path(part)
            assert partial is not None
            remove_tree(partial)
            self._check_free_space(partial.parent, part.total_bytes)
            stop = threading.Event()
            progress = _Progress(self, job)

            def on_bytes(copied: int) -> None:
                part.bytes = copied
                progress.bytes_received(part)

            copying = asyncio.ensure_future(
                asyncio.to_thread(copy_tree, source, partial, on_bytes, stop)
            )
            try:
                await asyncio.shield(copying)
            except asyncio.CancelledError:
                stop.set()
                with contextlib.suppress(TransferStopped, TransferError, OSError):
                    await copying
                raise
            self._put_in_place(partial, final)
            if job.move:
                remove_tree(source)
            part.status = Status.COMPLETED

    def _name_destination(self, job: DownloadJob, remote_name: str) -> Path:
        assert job.dest_dir is not None
        destination = job.dest_dir / remote_name
        if destination.is_dir():
            raise TransferError("DESTINATION_EXISTS", f"a folder exists at {destination}")
        return destination

    @staticmethod
    def _put_in_place(partial: Path | None, final: Path | None) -> None:
        assert partial is not None
        assert final is not None
        if final.is_dir() and not partial.is_dir():
            raise TransferError("DESTINATION_EXISTS", f"a folder exists at {final}")
        final.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(final)

    # Status changes

    def _mark_running(self, job: DownloadJob) -> None:
        if job.status is Status.RUNNING:
            return
        self._sequence += 1
        job.job_sequence = self._sequence
        job.start_time = job.start_time or now()
        job.status = Status.RUNNING
        self._save_and_publish(job)

    def _stopped(self, job: DownloadJob, reason: _StopReason) -> None:
        if reason is _StopReason.SHUTDOWN:
            return
        if reason is _StopReason.CANCEL:
            self._finish_cancelled(job)
            return
        self._set_unfinished_parts(job, Status.PAUSED)
        job.status = Status.PAUSED
        self._save_and_publish(job)

    def _finish_cancelled(self, job: DownloadJob) -> None:
        self._set_unfinished_parts(job, Status.CANCELLED)
        self._finish(job, Status.CANCELLED)

    def _failed(self, job: DownloadJob, error_type: str, message: str) -> None:
        self._set_unfinished_parts(job, Status.CANCELLED)
        job.error_type, job.error = error_type, message
        log.info("download failed", job_id=job.id, error_type=error_type, error=message)
        self._finish(job, Status.ERROR)

    def _finish(self, job: DownloadJob, status: Status) -> None:
        if status is not Status.COMPLETED and not job.preserve_partial_downloads:
            for part in job.parts:
                partial = job.partial_path(part)
                if partial is not None:
                    remove_tree(partial)
        job.status = status
        job.end_time = now()
        job.access_token = None
        self._save_and_publish(job)

    @staticmethod
    def _set_unfinished_parts(job: DownloadJob, status: Status) -> None:
        for part in job.parts:
            if part.status not in (Status.COMPLETED, Status.ERROR):
                part.status = status

    def _save_and_publish(self, job: DownloadJob) -> None:
        self._store.save(job)
        self._jobs.publish(JobChanged(job.model_copy(deep=True), now()))

    def publish_progress(self, job: DownloadJob) -> None:
        parts = tuple((p.bytes, p.total_bytes, p.status) for p in job.parts)
        # Straight onto the bus: progress changes no status and may come from a thread.
        self._jobs.events.publish(JobProgress(job.id, job.bytes, job.total_bytes, parts, now()))

    def headers_learnt(self, job: DownloadJob, part: DownloadPart) -> None:
        if job.kind is DownloadJobKind.URL:
            job.destination = part.destination
        self._save_and_publish(job)


class _Progress:
    """Reports one job's transfers: headers at once, bytes about every 1% or second."""

    def __init__(self, queue: DownloadQueue, job: DownloadJob) -> None:
        self._queue = queue
        self._job = job
        self._reported: dict[int, tuple[int, float]] = {}

    def headers_received(self, part: DownloadPart) -> None:
        self._queue.headers_learnt(self._job, part)

    def bytes_received(self, part: DownloadPart) -> None:
        """Called for every chunk, from the event loop or a copying thread."""
        last_bytes, last_time = self._reported.get(id(part), (0, 0.0))
        moment = time.monotonic()
        one_percent = part.total_bytes // 100 if part.total_bytes else None
        if (one_percent is not None and part.bytes - last_bytes >= max(one_percent, 1)) or (
            moment - last_time >= PROGRESS_INTERVAL_S
        ):
            self._reported[id(part)] = (part.bytes, moment)
            self._queue.publish_progress(self._job)


def _is_url(source: str) -> bool:
    return source.strip().lower().startswith(("http://", "https://"))


def _free_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """The error that failed a group of file transfers (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
