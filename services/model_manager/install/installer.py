"""The model installer (the reference's ModelInstallService).

Remote files are fetched by the downloader service into a staging folder under
`models/.cache/installs/`; then, one install at a time (so two never race for a
destination), the model is probed, moved into `models_dir/<base>/<type>/`, hashed and
registered. Whatever fails or is cancelled leaves nothing behind: no record, no file in
`models_dir`, no staging folder, and a local source untouched.

Jobs are saved (`InstallJobStore`) at every change of state, so they survive a restart,
kill -9 included: at the next start a job that was downloading follows its download job
again and finishes; one that was being placed is undone and ends in ERROR
(INSTALL_INTERRUPTED), since a half-moved model cannot be trusted; staging folders that no
job owns are removed. A graceful stop leaves downloads running for the next start too.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from services.common import errors
from services.common.allowed_roots import resolve_within
from services.common.event_bus import Delivery
from services.common.job_table import JobTable
from services.common.model_taxonomy import SourceType
from services.model_manager.install.downloader_client import (
    DownloadCancelledError,
    DownloaderClient,
    DownloadGoneError,
    DownloadProgress,
    DownloadResult,
)
from services.model_manager.install.hf_repo import HuggingFaceRepo
from services.model_manager.install.install_jobs import (
    InstallEvent,
    InstallEventKind,
    InstallJob,
    InstallPart,
    InstallStatus,
)
from services.model_manager.install.job_store import InstallJobStore
from services.model_manager.install.model_files import (
    copy_model,
    delete_model_files,
    install_destination,
    move_model,
    on_disk,
    record_path,
)
from services.model_manager.install.model_sources import (
    HuggingFaceModelSource,
    LocalModelSource,
    ModelSource,
    UrlModelSource,
)
from services.model_manager.probe.hashing import hash_model
from services.model_manager.probe.model_probe import ProbedModel, probe_model
from services.model_manager.records.configs import AnyModelConfig, parse_config
from services.model_manager.records.record_store import ModelQuery, ModelRecordStore
from services.model_manager.settings import ModelManagerSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")

DOWNLOADER_WAIT_S = 30.0
"""How long a job taken up at start waits for the downloader (it may be starting too)."""


class UninstallMode(StrEnum):
    """How much of a model goes: the record, its files inside models_dir, or its files."""

    UNREGISTER = "unregister"
    DELETE = "delete"
    DELETE_UNCONDITIONALLY = "delete_unconditionally"


@dataclass(frozen=True)
class Uninstalled:
    config: AnyModelConfig
    files_deleted: bool
    path: Path


@dataclass
class SyncReport:
    """What a sync of the records with `models_dir` found, and did."""

    missing: list[tuple[AnyModelConfig, bool]] = field(default_factory=list)
    found: list[tuple[AnyModelConfig, bool]] = field(default_factory=list)
    failed: list[tuple[Path, errors.EaselError]] = field(default_factory=list)


class ModelInstaller:
    """Jobs that install models, and the direct register/install/uninstall operations."""

    def __init__(
        self,
        settings: ModelManagerSettings,
        store: ModelRecordStore,
        downloads: DownloaderClient,
        hub: HuggingFaceRepo,
        job_store: InstallJobStore,
    ) -> None:
        self._models_dir = settings.models_dir
        self._roots = settings.install_roots
        self._allow_unconditional_delete = settings.allow_unconditional_delete
        self._store = store
        self._downloads = downloads
        self._hub = hub
        self._staging = settings.models_dir / ".cache" / "installs"
        self._jobs: JobTable[InstallJob, InstallEvent] = JobTable(
            "model manager", "install job", "INSTALL_JOB_NOT_FOUND", lambda job: job.status.terminal
        )
        self._job_store = job_store
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._placing = asyncio.Lock()
        self._syncing = threading.Lock()
        self._stopping = False

    async def resume(self) -> None:
        """Load the saved jobs and take up those the last run left unfinished."""
        jobs = await self._job_store.load_all()
        for job in jobs:
            self._jobs.add(job)
        for job in jobs:
            if job.status is InstallStatus.RUNNING:
                await self._recover_placing(job)
        unfinished = [job for job in jobs if not job.status.terminal]
        owned = {str(job.id) for job in unfinished}
        await asyncio.to_thread(_remove_unowned, self._staging, owned)
        for job in unfinished:
            log.info("taking up an install job", job_id=job.id, status=job.status.value)
            self._start(job, resumed=True)

    async def shutdown(self) -> None:
        """Stop the installs and end watches. Downloads go on in the downloader and their
        jobs are taken up at the next start; a job being placed is undone and ends in ERROR
        (INSTALL_INTERRUPTED), as it would after a crash."""
        self._stopping = True
        self._jobs.close()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # Direct operations on local paths

    def local_path(self, path: str | Path, field: str = "path") -> Path:
        return resolve_within(path, self._roots, field=field, invalid_reason="PATH_NOT_ALLOWED")

    def probe(self, path: str, overrides: dict[str, Any], compute_hash: bool) -> AnyModelConfig:
        model = self.local_path(path)
        probed = probe_model(model, overrides)
        digest = hash_model(model) if compute_hash else ""
        return self._config(model, probed, digest, str(model), SourceType.PATH)

    def register_path(self, path: str, overrides: dict[str, Any]) -> AnyModelConfig:
        model = self.local_path(path)
        probed = probe_model(model, overrides)
        config = self._config(model, probed, hash_model(model), str(model), SourceType.PATH)
        return self._store.add(config)

    def install_path(self, path: str, overrides: dict[str, Any]) -> AnyModelConfig:
        """Move a local model into models_dir and register it; put it back if that fails."""
        model = self.local_path(path)
        probed = probe_model(model, overrides)
        if model.is_relative_to(self._models_dir):
            return self.register_path(str(model), overrides)
        destination = install_destination(self._models_dir, probed.base, probed.type, model.name)
        move_model(model, destination)
        try:
            config = self._config(
                destination, probed, hash_model(destination), str(model), SourceType.PATH
            )
            return self._store.add(config)
        except BaseException:
            move_model(destination, model)
            raise

    def uninstall(self, key: str, mode: UninstallMode) -> Uninstalled:
        config = self._store.get(key)
        path = on_disk(config.path, self._models_dir)
        inside = path.resolve().is_relative_to(self._models_dir)
        if mode is UninstallMode.DELETE_UNCONDITIONALLY and not self._allow_unconditional_delete:
            raise errors.PermissionDeniedError(
                "this server does not delete model files outside models_dir "
                "(allow_unconditional_delete is off)",
                reason="UNCONDITIONAL_DELETE_DISABLED",
                metadata={"key": key, "path": str(path)},
            )
        delete = mode is UninstallMode.DELETE_UNCONDITIONALLY or (
            mode is UninstallMode.DELETE and inside
        )
        if delete and path.exists():
            delete_model_files(path)
        self._store.delete(key)
        return Uninstalled(config, delete, path)

    def _config(
        self,
        model: Path,
        probed: ProbedModel,
        digest: str,
        source: str,
        source_type: SourceType,
        extra: dict[str, Any] | None = None,
    ) -> AnyModelConfig:
        data = {**(extra or {}), **probed.fields()}
        data.update(
            path=record_path(model, self._models_dir),
            hash=digest,
            source=source,
            source_type=source_type.value,
        )
        return parse_config(data, field="config")

    def sync(self, remove_missing: bool, dry_run: bool, register_new: bool) -> SyncReport:
        """Reconcile the records with the files: report (and maybe remove) records whose
        files vanished; find (and maybe register) models in models_dir without a record.
        Hidden files and folders (`.cache`, `.trash`, ...) are never models to find.
        Syncs run one at a time, so two never race to register the same model."""
        with self._syncing:
            return self._sync(remove_missing, dry_run, register_new)

    def _sync(self, remove_missing: bool, dry_run: bool, register_new: bool) -> SyncReport:
        report = SyncReport()
        registered: set[Path] = set()
        for config in self._store.search():
            path = on_disk(config.path, self._models_dir)
            registered.add(path.resolve())
            if not path.exists():
                removed = remove_missing and not dry_run
                if removed:
                    self._store.delete(config.key)
                report.missing.append((config, removed))
        register = register_new and not dry_run
        for candidate in sorted(self._models_dir.glob("*/*/*")):
            parts = candidate.relative_to(self._models_dir).parts
            if any(part.startswith(".") for part in parts) or candidate.resolve() in registered:
                continue
            try:
                probed = probe_model(candidate, {})
                digest = hash_model(candidate) if register else ""
                config = self._config(candidate, probed, digest, str(candidate), SourceType.PATH)
                if register:
                    config = self._store.add(config)
                report.found.append((config, register))
            except errors.EaselError as exc:
                report.failed.append((candidate, exc))
        return report

    # Install jobs

    async def import_model(self, source: ModelSource, config: dict[str, Any]) -> InstallJob:
        """Check the source, then start its install in the background and return its job."""
        if isinstance(source, LocalModelSource):
            path = self.local_path(source.path, field="local.path")
            if not path.exists():
                raise errors.FailedPreconditionError(
                    f"nothing exists at {path}",
                    reason="MODEL_FILES_MISSING",
                    metadata={"path": str(path)},
                )
            source = source.model_copy(update={"path": path})
        elif isinstance(source, HuggingFaceModelSource):
            source = source.resolved()  # the job shows the variant it installs
        job = InstallJob(
            id=await self._job_store.allocate_id(),
            source=source,
            config_in=config,
            inplace=isinstance(source, LocalModelSource) and source.inplace,
        )
        self._jobs.add(job)
        self._publish(job, InstallEventKind.SNAPSHOT)  # watchers of all jobs see it appear
        self._start(job, resumed=False)
        await self._job_store.save(job)  # written before anything the job saves itself
        return job

    def get_job(self, job_id: int) -> InstallJob:
        return self._jobs.get(job_id)

    def list_jobs(
        self, source: str = "", statuses: Iterable[InstallStatus] = ()
    ) -> list[InstallJob]:
        wanted = set(statuses)
        return [
            job
            for job in self._jobs.all()
            if (not source or str(job.source) == source) and (not wanted or job.status in wanted)
        ]

    async def cancel_job(self, job_id: int) -> InstallJob:
        job = self.get_job(job_id)
        if job.status is InstallStatus.CANCELLED:
            return job
        if job.status.terminal:
            raise errors.FailedPreconditionError(
                f"install job {job_id} is {job.status.value}",
                reason="INSTALL_JOB_FINISHED",
                metadata={"job_id": str(job_id), "status": job.status.value},
            )
        task = self._tasks[job_id]
        task.cancel()
        await asyncio.wait([task])
        return job

    async def prune_jobs(self) -> list[int]:
        pruned = self._jobs.prune()
        await self._job_store.delete(pruned)
        return pruned

    async def wait_job(self, job_id: int) -> InstallJob:
        return await self._jobs.wait(job_id)

    async def wait_all(self) -> list[InstallJob]:
        return await self._jobs.wait_all(lambda job: not job.status.terminal)

    def watch(self, job_ids: Iterable[int]) -> AsyncIterator[Delivery[InstallEvent]]:
        """A job's snapshot, then its events, until all watched are finished."""
        return self._jobs.watch(
            job_ids,
            lambda job: InstallEvent(InstallEventKind.SNAPSHOT, job, datetime.now(UTC)),
            lambda event: event.job.status.terminal,
        )

    def _start(self, job: InstallJob, resumed: bool) -> None:
        self._tasks[job.id] = asyncio.create_task(
            self._install(job, resumed), name=f"install-{job.id}"
        )

    async def _install(self, job: InstallJob, resumed: bool) -> None:
        staging = self._staging / str(job.id)
        try:
            if isinstance(job.source, LocalModelSource):
                await self._place(job, job.source.path, SourceType.PATH, copy=True)
            else:
                downloaded = await self._download(job, staging, resumed)
                url = isinstance(job.source, UrlModelSource)
                source_type = SourceType.URL if url else SourceType.HF_REPO_ID
                await self._place(job, downloaded, source_type, extra=job.repo_metadata)
        except asyncio.CancelledError:
            if self._stopping and job.status is not InstallStatus.RUNNING:
                raise  # left as saved: the next start takes it (and its download) up again
            if self._stopping:
                await self._fail(job, _interrupted(job))
            else:
                await self._stop_download(job)
                await self._end(job, InstallStatus.CANCELLED, InstallEventKind.CANCELLED)
        except DownloadCancelledError:
            await self._end(job, InstallStatus.CANCELLED, InstallEventKind.CANCELLED)
        except errors.EaselError as exc:
            await self._stop_download(job)
            await self._fail(job, exc)
        except Exception as exc:
            log.exception("install failed unexpectedly", job_id=job.id)
            await self._stop_download(job)
            await self._fail(job, errors.InternalError(f"{type(exc).__name__}: {exc}"))
        else:
            await self._end(job, InstallStatus.COMPLETED, InstallEventKind.COMPLETED)
        finally:
            self._tasks.pop(job.id, None)

    async def _download(self, job: InstallJob, staging: Path, resumed: bool) -> Path:
        """Fetch the job's model into `staging`, or follow again the download it had started
        before a restart; the downloaded model's path."""
        result = None
        if resumed:  # the downloader may be starting beside this process
            await self._downloads.wait_reachable(DOWNLOADER_WAIT_S)
        if resumed and job.status is InstallStatus.DOWNLOADING:
            result = await self._follow_again(job, staging)
        if result is None:
            result = await self._follow(job, await self._start_download(job, staging))
        if isinstance(job.source, UrlModelSource):
            downloaded = result.files[0].path
        else:
            downloaded = job.local_path
        assert downloaded is not None
        return downloaded

    async def _follow_again(self, job: InstallJob, staging: Path) -> DownloadResult | None:
        """Follow the download a job had started before a restart (found by its folder when
        its id was not saved yet); None when the downloader no longer has it."""
        if not job.download_job_ids:
            found = await self._downloads.find_active(staging)
            if found is None:
                return None
            job.download_job_ids.append(found)
            await self._job_store.save(job)
        try:
            return await self._follow(job, job.download_job_ids[-1])
        except DownloadGoneError:
            return None

    async def _start_download(self, job: InstallJob, staging: Path) -> int:
        """Create the job's download job into an empty `staging`; its id."""
        token = _access_token(job)
        await asyncio.to_thread(shutil.rmtree, staging, True)
        url, files, folder = "", [], staging
        if isinstance(job.source, UrlModelSource):
            url = job.source.url
            job.local_path = staging
        else:
            source = job.source
            assert isinstance(source, HuggingFaceModelSource)
            metadata = await self._hub.fetch_metadata(source.repo_id, token)
            selection = await self._hub.select_files(
                source.repo_id, source.variant, source.subfolder or None, token
            )
            self._refuse_installed_again(job, selection.model_dir_name)
            job.local_path = selection.model_path(staging)
            job.repo_metadata = {
                "tags": metadata.tags,
                "source_api_response": metadata.api_response,
            }
            files, folder = selection.download_files(), selection.download_folder(staging)
        job.status = InstallStatus.DOWNLOADING
        await self._job_store.save(job)
        if url:
            download_id = await self._downloads.start_url(url, folder, token)
        else:
            download_id = await self._downloads.start_files(files, folder, token)
        job.download_job_ids.append(download_id)
        await self._job_store.save(job)
        return download_id

    def _refuse_installed_again(self, job: InstallJob, name: str) -> None:
        """MODEL_FILE_EXISTS before any download when the source is installed already as
        `name`: its files would probe the same and meet that error only once all are in."""
        overrides = {f: str(v) for f, v in job.config_in.items() if f in ("base", "type")}
        for config in self._store.search(ModelQuery(source=str(job.source))):
            if all(str(getattr(config, f)) == v for f, v in overrides.items()):
                install_destination(self._models_dir, config.base, config.type, name)

    async def _follow(self, job: InstallJob, download_id: int) -> DownloadResult:
        job.status = InstallStatus.DOWNLOADING

        def progress(update: DownloadProgress) -> None:
            job.bytes, job.total_bytes = update.bytes, update.total_bytes
            job.parts = [
                InstallPart(
                    source=file.source,
                    local_path=str(file.path or ""),
                    bytes=file.bytes,
                    total_bytes=file.total_bytes,
                    download_job_id=update.job_id,
                )
                for file in update.files
            ]
            self._publish(job, InstallEventKind.DOWNLOADING)

        return await self._downloads.follow(download_id, progress)

    async def _stop_download(self, job: InstallJob) -> None:
        """Cancel the download of a job that ends while downloading (when still possible)."""
        if job.status is InstallStatus.DOWNLOADING and job.download_job_ids:
            with contextlib.suppress(errors.EaselError):
                await self._downloads.cancel(job.download_job_ids[-1])

    async def _recover_placing(self, job: InstallJob) -> None:
        """A job stopped while placing: completed if its record was written, else undone."""
        written = []
        if job.destination is not None:
            path = record_path(job.destination, self._models_dir)
            written = self._store.search(ModelQuery(path=path, source=str(job.source)))
        if written:
            job.config_out = written[0]
            await self._end(job, InstallStatus.COMPLETED, InstallEventKind.COMPLETED)
            return
        if job.destination is not None and not job.inplace:
            await asyncio.to_thread(_delete_quietly, job.destination)
        await self._fail(job, _interrupted(job))

    async def _place(
        self,
        job: InstallJob,
        model: Path,
        source_type: SourceType,
        *,
        copy: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Probe, place, hash and register `model`; undo the placing if anything fails.

        Each step in a worker thread runs to its end even when the job is cancelled
        meanwhile, so the undo never races a copy still writing."""
        job.status = InstallStatus.RUNNING
        job.local_path = model
        await self._job_store.save(job)
        self._publish(job, InstallEventKind.RUNNING)
        async with self._placing:
            probed = await _run_to_end(probe_model, model, job.config_in)
            if job.inplace:
                destination = model
            else:
                name = model.name
                destination = install_destination(self._models_dir, probed.base, probed.type, name)
            job.destination = destination
            await self._job_store.save(job)  # before anything moves: a restart can undo it
            try:
                if not job.inplace:
                    await _run_to_end(copy_model if copy else move_model, model, destination)
                digest = await _run_to_end(hash_model, destination)
                config = self._config(
                    destination, probed, digest, str(job.source), source_type, extra
                )
                job.config_out = self._store.add(config)
            except BaseException:
                if not job.inplace:
                    await asyncio.to_thread(_delete_quietly, destination)
                raise

    async def _fail(self, job: InstallJob, error: errors.EaselError) -> None:
        job.error_type, job.error = error.reason, error.message
        await self._end(job, InstallStatus.ERROR, InstallEventKind.ERROR)

    async def _end(self, job: InstallJob, status: InstallStatus, kind: InstallEventKind) -> None:
        """Finish the job: its staging folder removed and the job saved before anyone is
        told, so what a caller sees next is what a restart would find."""
        await asyncio.to_thread(shutil.rmtree, self._staging / str(job.id), True)
        job.status = status
        job.end_time = datetime.now(UTC)
        await self._job_store.save(job)
        self._publish(job, kind)
        log.info("install ended", job_id=job.id, status=status.value, error_type=job.error_type)

    def _publish(self, job: InstallJob, kind: InstallEventKind) -> None:
        self._jobs.publish(InstallEvent(kind, job.model_copy(deep=True), datetime.now(UTC)))


async def _run_to_end(step: Callable[..., T], *args: Any) -> T:
    """`step(*args)` in a worker thread; a cancellation meanwhile takes effect once it ends."""
    running = asyncio.ensure_future(asyncio.to_thread(step, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        raise


def _access_token(job: InstallJob) -> str | None:
    """The token to reach the job's remote host with. A job loaded after a restart holds an
    empty one in place of the token it was given (tokens are never stored):
    TOKEN_REQUIRED."""
    token = getattr(job.source, "access_token", None)
    if token is None:
        return None
    if not token.get_secret_value():
        raise errors.FailedPreconditionError(
            f"install job {job.id} must reach {job.source} again after a restart of the "
            "server, and access tokens are not kept across restarts; create the install "
            "job again with its access token",
            reason="TOKEN_REQUIRED",
            metadata={"job_id": str(job.id)},
        )
    return token.get_secret_value()


def _interrupted(job: InstallJob) -> errors.EaselError:
    return errors.UnavailableError(
        f"the server stopped while install job {job.id} was placing the model; what was "
        "placed has been removed and nothing was registered; create the install job again",
        reason="INSTALL_INTERRUPTED",
        metadata={"job_id": str(job.id)},
    )


def _delete_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        delete_model_files(path)


def _remove_unowned(staging: Path, owned: set[str]) -> None:
    """Remove what lies in the staging folder other than the folders of `owned` job ids."""
    if not staging.is_dir():
        return
    for entry in staging.iterdir():
        if entry.name not in owned:
            log.info("removing a staging folder no install job owns", path=str(entry))
            _delete_quietly(entry)
