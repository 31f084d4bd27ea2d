"""The model installer (the reference's ModelInstallService).

Remote files are fetched by the downloader service into a staging folder under
`models/.cache/installs/`; then, one install at a time (so two never race for a
destination), the model is probed, moved into `models_dir/<base>/<type>/`, hashed and
registered. Whatever fails or is cancelled leaves nothing behind: no record, no file in
`models_dir`, no staging folder, and a local source untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from easel.downloader.v1 import download_service_pb2 as download_pb
from services.common import errors
from services.common.allowed_roots import resolve_within
from services.common.event_bus import Delivery
from services.common.job_table import JobTable
from services.model_manager.install.downloader_client import (
    DownloadCancelledError,
    DownloaderClient,
    DownloadProgress,
)
from services.model_manager.install.hf_repo import HuggingFaceRepo
from services.model_manager.install.install_jobs import (
    InstallEvent,
    InstallEventKind,
    InstallJob,
    InstallPart,
    InstallStatus,
)
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
from services.model_manager.records.record_store import ModelRecordStore
from services.model_manager.records.taxonomy import SourceType
from services.model_manager.settings import ModelManagerSettings

log = structlog.get_logger(__name__)


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
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._ids = itertools.count(1)
        self._placing = asyncio.Lock()

    async def shutdown(self) -> None:
        """Cancel unfinished installs (they leave nothing behind) and end watches."""
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
        files vanished; find (and maybe register) models in models_dir without a record."""
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
        if not register_new:
            return report
        for candidate in sorted(self._models_dir.glob("*/*/*")):
            if candidate.is_relative_to(self._models_dir / ".cache") or (
                candidate.resolve() in registered
            ):
                continue
            try:
                probed = probe_model(candidate, {})
                digest = "" if dry_run else hash_model(candidate)
                config = self._config(candidate, probed, digest, str(candidate), SourceType.PATH)
                if not dry_run:
                    config = self._store.add(config)
                report.found.append((config, not dry_run))
            except errors.EaselError as exc:
                report.failed.append((candidate, exc))
        return report

    # Install jobs

    def import_model(self, source: ModelSource, config: dict[str, Any]) -> InstallJob:
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
        job = InstallJob(
            id=next(self._ids),
            source=source,
            config_in=config,
            inplace=isinstance(source, LocalModelSource) and source.inplace,
        )
        self._jobs.add(job)
        self._tasks[job.id] = asyncio.create_task(self._install(job), name=f"install-{job.id}")
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

    def prune_jobs(self) -> list[int]:
        return self._jobs.prune()

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

    async def _install(self, job: InstallJob) -> None:
        staging = self._staging / str(job.id)
        try:
            if isinstance(job.source, LocalModelSource):
                await self._place(job, job.source.path, SourceType.PATH, copy=True)
            elif isinstance(job.source, UrlModelSource):
                downloaded = await self._download_url(job, job.source, staging)
                await self._place(job, downloaded, SourceType.URL)
            else:
                downloaded, extra = await self._download_repo(job, job.source, staging)
                await self._place(job, downloaded, SourceType.HF_REPO_ID, extra=extra)
        except (asyncio.CancelledError, DownloadCancelledError):
            self._end(job, InstallStatus.CANCELLED, InstallEventKind.CANCELLED)
        except errors.EaselError as exc:
            job.error_type, job.error = exc.reason, exc.message
            self._end(job, InstallStatus.ERROR, InstallEventKind.ERROR)
        except Exception as exc:
            log.exception("install failed unexpectedly", job_id=job.id)
            job.error_type, job.error = "INTERNAL", f"{type(exc).__name__}: {exc}"
            self._end(job, InstallStatus.ERROR, InstallEventKind.ERROR)
        else:
            self._end(job, InstallStatus.COMPLETED, InstallEventKind.COMPLETED)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self._tasks.pop(job.id, None)

    async def _download_url(self, job: InstallJob, source: UrlModelSource, staging: Path) -> Path:
        token = source.access_token.get_secret_value() if source.access_token else ""
        request = download_pb.CreateDownloadJobRequest(
            single_source=source.url, dest_dir=str(staging), access_token=token
        )
        done = await self._download(job, request)
        return Path(done.destination)

    async def _download_repo(
        self, job: InstallJob, source: HuggingFaceModelSource, staging: Path
    ) -> tuple[Path, dict[str, Any]]:
        token = source.access_token.get_secret_value() if source.access_token else None
        metadata = await self._hub.fetch_metadata(source.repo_id, token)
        selection = await self._hub.select_files(
            source.repo_id, source.variant, source.subfolder or None, token
        )
        folder = staging / selection.model_dir_name
        request = download_pb.CreateDownloadJobRequest(
            multi_file=download_pb.MultiFileSource(
                files=[
                    download_pb.MultiFileSourceFile(url=f.url, path=f.local_path, size=f.size)
                    for f in selection.files
                ]
            ),
            dest_dir=str(folder if selection.is_folder else staging),
            access_token=token or "",
        )
        await self._download(job, request)
        downloaded = folder if selection.is_folder else staging / selection.files[0].local_path
        extra = {"tags": metadata.tags, "source_api_response": metadata.api_response}
        return downloaded, extra

    async def _download(
        self, job: InstallJob, request: download_pb.CreateDownloadJobRequest
    ) -> download_pb.DownloadJob:
        job.status = InstallStatus.DOWNLOADING

        def progress(update: DownloadProgress) -> None:
            if update.job_id not in job.download_job_ids:
                job.download_job_ids.append(update.job_id)
            job.bytes, job.total_bytes = update.bytes, update.total_bytes
            job.parts = [
                InstallPart(
                    source=source,
                    local_path=path,
                    bytes=part_bytes,
                    total_bytes=total,
                    download_job_id=update.job_id,
                )
                for source, path, part_bytes, total in update.parts
            ]
            job.local_path = Path(request.dest_dir)
            self._publish(job, InstallEventKind.DOWNLOADING)

        return await self._downloads.download(request, progress)

    async def _place(
        self,
        job: InstallJob,
        model: Path,
        source_type: SourceType,
        *,
        copy: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Probe, place, hash and register `model`; undo the placing if anything fails."""
        job.status = InstallStatus.RUNNING
        job.local_path = model
        self._publish(job, InstallEventKind.RUNNING)
        async with self._placing:
            probed = await asyncio.to_thread(probe_model, model, job.config_in)
            if job.inplace:
                destination, placed = model, None
            else:
                name = model.name
                destination = install_destination(self._models_dir, probed.base, probed.type, name)
                placed = destination
            try:
                if placed is not None:
                    place = copy_model if copy else move_model
                    await asyncio.to_thread(place, model, destination)
                digest = await asyncio.to_thread(hash_model, destination)
                config = self._config(
                    destination, probed, digest, str(job.source), source_type, extra
                )
                job.config_out = self._store.add(config)
            except BaseException:
                if placed is not None:
                    with contextlib.suppress(OSError):
                        delete_model_files(placed)
                raise

    def _end(self, job: InstallJob, status: InstallStatus, kind: InstallEventKind) -> None:
        job.status = status
        job.end_time = datetime.now(UTC)
        self._publish(job, kind)
        log.info("install ended", job_id=job.id, status=status.value, error_type=job.error_type)

    def _publish(self, job: InstallJob, kind: InstallEventKind) -> None:
        self._jobs.publish(InstallEvent(kind, job.model_copy(deep=True), datetime.now(UTC)))
