"""The download queue, complete and durable: jobs, their scheduling, control and events.

Every job runs as one asyncio task; its files each take a transfer slot while they move
bytes (at most `max_parallel_downloads`, given out by priority). Pause, cancel and
shutdown all stop a job by cancelling its task, with a recorded reason deciding what
happens to its partial files: pause keeps them for a Range resume, cancel deletes them
(unless preserved), shutdown leaves the job as it was so a restart resumes it.

However a transfer ends, its task ends the job: COMPLETED, ERROR (any failure, expected
or not), PAUSED or CANCELLED; only a shutdown leaves a job ENQUEUED or RUNNING, to be
resumed. Nothing blocking runs on the event loop: requests are checked, files walked and
moved in worker threads, and the store is written by its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from enum import Enum
from pathlib import Path

import structlog
from pydantic import SecretStr

from services.common import errors
from services.common.event_bus import Delivery
from services.common.job_table import JobTable
from services.downloader.address_guard import AddressGuard
from services.downloader.job_requests import NewDownload, RequestValidator
from services.downloader.job_store import DownloadJobStore
from services.downloader.jobs import (
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
    copy_tree,
    free_bytes,
    list_source,
    make_folder,
    move_by_rename,
    put_in_place,
    remove_tree,
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


class DownloadQueue:
    """Jobs, their scheduling, control, persistence and events."""

    def __init__(self, store: DownloadJobStore, settings: DownloaderSettings) -> None:
        self._store = store
        self._reserve = settings.free_space_reserve_bytes
        guard = AddressGuard(settings.allowed_networks)
        self._requests = RequestValidator(settings.allowed_roots, guard, self._reserve)
        self._url = UrlDownloader(guard, self._check_free_space)
        self._slots = TransferSlots(settings.max_parallel_downloads)
        self._jobs: JobTable[DownloadJob, DownloadEvent] = JobTable(
            "downloader", "download job", "DOWNLOAD_JOB_NOT_FOUND", lambda job: job.status.terminal
        )
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stop_reasons: dict[int, _StopReason] = {}
        self._ending: set[int] = set()  # jobs being ended: too late to stop them
        self._sequence = 0
        self._shutting_down = False

    async def start(self) -> None:
        """Open the HTTP session and resume the jobs a previous run left unfinished; end
        in TOKEN_REQUIRED those of them that were given an access token, which was not
        kept."""
        await self._url.start()
        jobs = await self._store.load_all()
        await asyncio.to_thread(_count_partial_bytes, jobs)
        for job in jobs:
            self._jobs.add(job)
            self._sequence = max(self._sequence, job.job_sequence)
            if not job.status.terminal and job.access_token is not None:
                await self._failed(job, "TOKEN_REQUIRED", _token_lost(job))
            elif job.status.active:
                log.info("resuming download", job_id=job.id)
                self._enqueue(job)
        await self._store.flush()

    async def shutdown(self) -> None:
        """Stop every running job where it is (partials kept, status unchanged); jobs
        enqueued from now on wait for the next start."""
        self._shutting_down = True
        self._jobs.close()
        for job_id, task in list(self._tasks.items()):
            if job_id not in self._ending and job_id not in self._stop_reasons:
                self._stop_reasons[job_id] = _StopReason.SHUTDOWN
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._url.close()

    async def close(self) -> None:
        """Write what is pending to the store; call once no RPC runs any more."""
        await self._store.flush()

    # Creating and reading jobs

    async def create(self, new: NewDownload) -> DownloadJob:
        """Check `new` completely, then create its job (nothing is left on a refusal)."""
        planned = await asyncio.to_thread(self._requests.validate, new)
        job = planned.job(await self._store.allocate_id(), now())
        self._jobs.add(job)
        if new.start_later:
            self._save_and_publish(job)
        else:
            self._enqueue(job)
        await self._store.flush()
        return job

    def get(self, job_id: int) -> DownloadJob:
        return self._jobs.get(job_id)

    def list(self, statuses: Iterable[Status] = ()) -> list[DownloadJob]:
        wanted = set(statuses)
        return [job for job in self._jobs.all() if not wanted or job.status in wanted]

    async def prune(self) -> list[int]:
        pruned = self._jobs.prune()
        await self._store.delete(pruned)
        return pruned

    # Control: each call returns once the job's new state is stored

    async def start_job(self, job_id: int) -> DownloadJob:
        job = self._start(job_id)
        await self._store.flush()
        return job

    async def pause_job(self, job_id: int) -> DownloadJob:
        job = await self._pause(job_id)
        await self._store.flush()
        return job

    async def cancel_job(self, job_id: int) -> DownloadJob:
        job = await self._cancel(job_id)
        await self._store.flush()
        return job

    async def start_all(self) -> list[DownloadJob]:
        jobs = [self._start(job.id) for job in self.list([Status.IDLE, Status.PAUSED])]
        await self._store.flush()
        return jobs

    async def pause_all(self) -> list[DownloadJob]:
        active = self.list([Status.ENQUEUED, Status.RUNNING])
        jobs = [await self._pause(job.id) for job in active]
        await self._store.flush()
        return jobs

    async def cancel_all(self) -> list[DownloadJob]:
        unfinished = self.list([Status.IDLE, Status.ENQUEUED, Status.RUNNING, Status.PAUSED])
        jobs = [await self._cancel(job.id) for job in unfinished]
        await self._store.flush()
        return jobs

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

    def _start(self, job_id: int) -> DownloadJob:
        job = self._unfinished(job_id)
        if job.status in (Status.IDLE, Status.PAUSED):
            self._enqueue(job)
        return job

    async def _pause(self, job_id: int) -> DownloadJob:
        job = self._unfinished(job_id)
        if job.status.active:
            await self._stop(job, _StopReason.PAUSE)
        if job.status.active:  # no transfer was left to stop it
            self._pause_now(job)
        return job

    async def _cancel(self, job_id: int) -> DownloadJob:
        job = self.get(job_id)
        if job.status is Status.CANCELLED:
            return job
        job = self._unfinished(job_id)
        await self._stop(job, _StopReason.CANCEL)
        if not job.status.terminal:  # idle, paused, or no transfer was left to end it
            await self._finish(job, Status.CANCELLED)
        return job

    def _unfinished(self, job_id: int) -> DownloadJob:
        job = self.get(job_id)
        if job.status.terminal:
            raise errors.FailedPreconditionError(
                f"download job {job_id} is {job.status.value}",
                reason="DOWNLOAD_JOB_FINISHED",
                metadata={"job_id": str(job_id), "status": job.status.value},
            )
        return job

    # Running

    def _enqueue(self, job: DownloadJob) -> None:
        job.status = Status.ENQUEUED
        for part in job.parts:
            if part.status is not Status.COMPLETED:
                part.status = Status.ENQUEUED
        self._save_and_publish(job)
        if not self._shutting_down:
            self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"download-{job.id}")

    async def _stop(self, job: DownloadJob, reason: _StopReason) -> None:
        """Stop the job's transfer for `reason` and wait until its task has ended. A job
        being ended already, or being stopped for another reason, ends as that goes."""
        task = self._tasks.get(job.id)
        if task is None:
            return
        if job.id not in self._ending and job.id not in self._stop_reasons:
            self._stop_reasons[job.id] = reason
            task.cancel()
        await asyncio.wait([task])

    async def _run(self, job: DownloadJob) -> None:
        """Transfer the job's files and end it COMPLETED, or end it by how that failed or
        was stopped."""
        try:
            try:
                if job.kind is DownloadJobKind.LOCAL_PATH:
                    await self._run_local(job)
                else:
                    await self._run_remote(job)
            except asyncio.CancelledError:
                self._ending.add(job.id)
                await self._stopped(job, self._stop_reasons.pop(job.id, _StopReason.SHUTDOWN))
            except TransferError as exc:
                self._ending.add(job.id)
                await self._failed(job, exc.error_type, exc.message)
            except Exception as exc:
                self._ending.add(job.id)
                log.exception("download failed unexpectedly", job_id=job.id)
                await self._failed(job, "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            self._ending.discard(job.id)
            self._stop_reasons.pop(job.id, None)
            self._tasks.pop(job.id, None)

    async def _run_remote(self, job: DownloadJob) -> None:
        unfinished = [part for part in job.parts if part.status is not Status.COMPLETED]
        if not unfinished:  # stopped after its last file arrived, before it was ended
            await self._complete(job)
            return
        try:
            async with asyncio.TaskGroup() as group:
                for part in unfinished:
                    group.create_task(self._run_part(job, part))
        except BaseExceptionGroup as group:
            raise _first_cause(group) from None

    async def _run_part(self, job: DownloadJob, part: DownloadPart) -> None:
        async with self._slots.slot(job.priority, job.id):
            self._mark_running(job)
            part.status = Status.RUNNING
            try:
                await self._url.download(
                    job, part, lambda name: self._name_destination(job, name), _Progress(self, job)
                )
            except Exception:
                part.status = Status.ERROR
                raise
            part.status = Status.COMPLETED
            if all(other.status is Status.COMPLETED for other in job.parts):
                await self._complete(job)
            else:
                self._store.save(job)  # a restart skips this file then

    async def _run_local(self, job: DownloadJob) -> None:
        part = job.parts[0]
        async with self._slots.slot(job.priority, job.id):
            self._mark_running(job)
            part.status = Status.RUNNING
            progress = _Progress(self, job)
            await _in_thread(lambda stop: self._place_local(job, part, progress, stop))
            part.status = Status.COMPLETED
            await self._complete(job)

    async def _complete(self, job: DownloadJob) -> None:
        """Put the files of a job whose every file has arrived in place, and end it
        COMPLETED. This runs in the slot of its last file, so that the job has ended before
        the slot goes on: never more jobs RUNNING than slots."""
        self._ending.add(job.id)
        if job.kind is not DownloadJobKind.LOCAL_PATH:
            await _in_thread(lambda _stop: self._put_parts_in_place(job))
        await self._finish(job, Status.COMPLETED)

    def _place_local(
        self, job: DownloadJob, part: DownloadPart, progress: _Progress, stop: threading.Event
    ) -> None:
        """Move or copy a local source into place (in a worker thread): by a rename when
        moving within a filesystem, else a copy into the partial path first."""
        source, final, partial = Path(part.source), part.destination, job.partial_path(part)
        assert final is not None
        assert partial is not None
        if job.move and move_by_rename(source, final):
            part.bytes = part.total_bytes
            return
        tree = list_source(source)
        part.total_bytes = tree.size
        remove_tree(partial)
        make_folder(partial.parent)
        self._check_free_space(partial.parent, tree.size)

        def on_bytes(copied: int) -> None:
            part.bytes = copied
            progress.bytes_received(part)

        copy_tree(tree, partial, on_bytes, stop)
        put_in_place(partial, final)
        if job.move:
            remove_tree(source)

    @staticmethod
    def _put_parts_in_place(job: DownloadJob) -> None:
        for part in job.parts:
            partial = job.partial_path(part)
            assert partial is not None
            assert part.destination is not None
            put_in_place(partial, part.destination)

    def _name_destination(self, job: DownloadJob, remote_name: str) -> Path:
        assert job.dest_dir is not None
        destination = job.dest_dir / remote_name
        if destination.is_dir():
            raise TransferError("DESTINATION_EXISTS", f"a folder exists at {destination}")
        return destination

    def _check_free_space(self, folder: Path, needed: int) -> None:
        free = free_bytes(folder)
        if free - needed < self._reserve:
            raise TransferError(
                "DISK_FULL",
                f"not enough free space in {folder}: {free} bytes free, "
                f"{needed} to write and {self._reserve} to keep free",
            )

    # Status changes

    def _mark_running(self, job: DownloadJob) -> None:
        if job.status is Status.RUNNING:
            return
        self._sequence += 1
        job.job_sequence = self._sequence
        job.start_time = job.start_time or now()
        job.status = Status.RUNNING
        self._save_and_publish(job)

    async def _stopped(self, job: DownloadJob, reason: _StopReason) -> None:
        if reason is _StopReason.CANCEL:
            await self._finish(job, Status.CANCELLED)
        elif reason is _StopReason.PAUSE:
            self._pause_now(job)

    def _pause_now(self, job: DownloadJob) -> None:
        _set_unfinished_parts(job, Status.PAUSED)
        job.status = Status.PAUSED
        self._save_and_publish(job)

    async def _failed(self, job: DownloadJob, error_type: str, message: str) -> None:
        job.error_type, job.error = error_type, message
        log.info("download failed", job_id=job.id, error_type=error_type, error=message)
        await self._finish(job, Status.ERROR)

    async def _finish(self, job: DownloadJob, status: Status) -> None:
        """End `job` in the terminal `status`, its partial files removed first unless it
        completed or keeps them. Nothing keeps the job from ending: a removal that fails
        is logged, and one that is interrupted goes on while the job ends."""
        try:
            if status is not Status.COMPLETED:
                _set_unfinished_parts(job, Status.CANCELLED)
                if not job.preserve_partial_downloads:
                    partials = [job.partial_path(part) for part in job.parts]
                    await asyncio.shield(asyncio.to_thread(_remove_partials, job.id, partials))
        finally:
            job.status = status
            job.end_time = now()
            if job.access_token is not None:
                job.access_token = SecretStr("")  # no longer needed; it was given
            self._save_and_publish(job)

    def _save_and_publish(self, job: DownloadJob) -> None:
        snapshot = job.model_copy(deep=True)
        self._store.save(snapshot)
        self._jobs.publish(JobChanged(snapshot, now()))

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
        """Called for every chunk, from the event loop or a transfer or copying thread."""
        last_bytes, last_time = self._reported.get(id(part), (0, 0.0))
        moment = time.monotonic()
        one_percent = part.total_bytes // 100 if part.total_bytes else None
        if (one_percent is not None and part.bytes - last_bytes >= max(one_percent, 1)) or (
            moment - last_time >= PROGRESS_INTERVAL_S
        ):
            self._reported[id(part)] = (part.bytes, moment)
            self._queue.publish_progress(self._job)


async def _in_thread(work: Callable[[threading.Event], None]) -> None:
    """Run `work(stop)` in a worker thread. Cancelling sets `stop` and waits until the work
    has ended, so nothing writes a job's files once its task has ended; work that was done
    before it could stop stands (the cancellation came too late)."""
    stop = threading.Event()
    running = asyncio.ensure_future(asyncio.to_thread(work, stop))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await running
        if running.exception() is None:
            return
        raise


def _count_partial_bytes(jobs: list[DownloadJob]) -> None:
    """Take each unfinished file's bytes from its partial file (stored jobs have the bytes
    of their last status change)."""
    for job in jobs:
        for part in job.parts:
            partial = job.partial_path(part)
            if part.status is not Status.COMPLETED and partial is not None:
                part.bytes = partial.stat().st_size if partial.is_file() else 0


def _token_lost(job: DownloadJob) -> str:
    return (
        f"download job {job.id} was unfinished when the downloader restarted, and access "
        "tokens are not kept across restarts; create the job again with its access token"
    )


def _remove_partials(job_id: int, partials: list[Path | None]) -> None:
    for partial in partials:
        if partial is None:
            continue
        try:
            remove_tree(partial)
        except Exception:
            log.exception("could not remove a partial file", job_id=job_id, path=str(partial))


def _set_unfinished_parts(job: DownloadJob, status: Status) -> None:
    for part in job.parts:
        if part.status not in (Status.COMPLETED, Status.ERROR):
            part.status = status


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """The error that failed a group of file transfers (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
