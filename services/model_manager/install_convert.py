"""Conversions between the model install API's protobuf messages and the install domain.

Configs and metadata inside install messages go through `record_convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from easel.model_manager.v1 import model_install_service_pb2 as install_pb
from easel.model_manager.v1 import model_pb2
from services.common.errors import InvalidArgumentError
from services.common.proto_enums import EnumMap
from services.model_manager.install.install_jobs import (
    InstallEvent,
    InstallEventKind,
    InstallJob,
    InstallPart,
    InstallStatus,
)
from services.model_manager.install.installer import SyncReport, UninstallMode
from services.model_manager.install.model_sources import (
    HuggingFaceModelSource,
    LocalModelSource,
    ModelSource,
    UrlModelSource,
    parse_source,
)
from services.model_manager.record_convert import (
    ENUMS,
    config_to_pb,
    dict_changes,
)
from services.model_manager.records.configs import AnyModelConfig

INSTALL_STATUS = EnumMap(InstallStatus, install_pb.InstallStatus)
UNINSTALL_MODE = EnumMap(UninstallMode, install_pb.UninstallMode)
REPO_VARIANT = ENUMS[model_pb2.ModelRepoVariant.DESCRIPTOR.full_name]


def config_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A request's config dict (overrides), with enum names turned into string forms."""
    return dict_changes(struct)


def install_source(request: install_pb.CreateInstallJobRequest) -> ModelSource:
    which = request.WhichOneof("source")
    if which == "heuristic_source":
        return parse_source(
            request.heuristic_source, access_token=request.access_token, inplace=request.inplace
        )
    if which in ("local", "url", "hugging_face") and (request.access_token or request.inplace):
        raise InvalidArgumentError(
            "access_token and inplace go with heuristic_source; typed sources carry their own",
            field="access_token" if request.access_token else "inplace",
            reason="INVALID_SOURCE",
        )
    if which == "local":
        return LocalModelSource(path=Path(request.local.path), inplace=request.local.inplace)
    if which == "url":
        typed = parse_source(request.url.url, access_token=request.url.access_token)
        if not isinstance(typed, UrlModelSource):
            raise InvalidArgumentError(
                f"{request.url.url!r} is not an http(s) URL",
                field="url.url",
                reason="INVALID_SOURCE",
            )
        return typed
    if which == "hugging_face":
        source = request.hugging_face
        typed = parse_source(source.repo_id, access_token=source.access_token)
        if not isinstance(typed, HuggingFaceModelSource) or typed.variant or typed.subfolder:
            raise InvalidArgumentError(
                f"{source.repo_id!r} is not an owner/name repo id",
                field="hugging_face.repo_id",
                reason="INVALID_SOURCE",
            )
        variant = REPO_VARIANT.from_pb(source.variant)
        return typed.model_copy(
            update={"variant": variant, "subfolder": source.subfolder.strip("/")}
        )
    raise InvalidArgumentError(
        "a source is required", field="heuristic_source", reason="INVALID_SOURCE"
    )


def source_filter(text: str) -> str:
    """A ListInstallJobs `source` in the string form jobs show (a repo's variant resolved);
    empty for no filter."""
    if not text:
        return ""
    try:
        source = parse_source(text)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            exc.message, field="source", reason=exc.reason, metadata=exc.metadata
        ) from None
    return str(source.resolved() if isinstance(source, HuggingFaceModelSource) else source)


def install_statuses(values: list[int]) -> list[InstallStatus]:
    return INSTALL_STATUS.filter(values, "statuses")


def uninstall_mode(value: int) -> UninstallMode:
    return UNINSTALL_MODE.required(value, "mode")


def model_source_to_pb(source: ModelSource) -> install_pb.ModelSource:
    if isinstance(source, LocalModelSource):
        return install_pb.ModelSource(
            local=install_pb.LocalModelSource(path=str(source.path), inplace=source.inplace)
        )
    if isinstance(source, UrlModelSource):
        return install_pb.ModelSource(
            url=install_pb.UrlModelSource(
                url=source.url, has_access_token=source.access_token is not None
            )
        )
    return install_pb.ModelSource(
        hugging_face=install_pb.HuggingFaceModelSource(
            repo_id=source.repo_id,
            variant=REPO_VARIANT.to_pb(source.variant),
            subfolder=source.subfolder,
            has_access_token=source.access_token is not None,
        )
    )


def install_job_to_pb(job: InstallJob) -> install_pb.InstallJob:
    message = install_pb.InstallJob(
        id=job.id,
        status=INSTALL_STATUS.to_pb(job.status),
        inplace=job.inplace,
        source=model_source_to_pb(job.source),
        source_string=str(job.source),
        local_path=str(job.local_path or ""),
        bytes=job.bytes,
        total_bytes=job.total_bytes,
        parts=[_install_part(part) for part in job.parts],
        download_job_ids=job.download_job_ids,
        error_type=job.error_type,
        error=job.error,
    )
    message.config_in.update(job.config_in)
    if job.config_out is not None:
        message.config_out.CopyFrom(config_to_pb(job.config_out))
    message.create_time.FromDatetime(job.create_time)
    if job.end_time is not None:
        message.end_time.FromDatetime(job.end_time)
    return message


def install_event_to_pb(event: InstallEvent, dropped: int) -> install_pb.WatchInstallJobsResponse:
    job = event.job
    envelope = install_pb.InstallEvent(job_id=job.id, source=str(job.source), dropped_count=dropped)
    envelope.time.FromDatetime(event.time)
    if event.kind is InstallEventKind.SNAPSHOT:
        envelope.snapshot.job.CopyFrom(install_job_to_pb(job))
    elif event.kind is InstallEventKind.DOWNLOADING:
        envelope.downloading.CopyFrom(
            install_pb.InstallDownloadingEvent(
                local_path=str(job.local_path or ""),
                bytes=job.bytes,
                total_bytes=job.total_bytes,
                parts=[_install_part(part) for part in job.parts],
            )
        )
    elif event.kind is InstallEventKind.RUNNING:
        envelope.running.SetInParent()
    elif event.kind is InstallEventKind.COMPLETED:
        assert job.config_out is not None
        envelope.completed.CopyFrom(
            install_pb.InstallCompletedEvent(
                key=job.config_out.key,
                total_bytes=job.total_bytes,
                config=config_to_pb(job.config_out),
            )
        )
    elif event.kind is InstallEventKind.ERROR:
        envelope.error.CopyFrom(
            install_pb.InstallErrorEvent(error_type=job.error_type, error=job.error)
        )
    else:
        envelope.cancelled.SetInParent()
    return install_pb.WatchInstallJobsResponse(event=envelope)


def sync_to_pb(report: SyncReport) -> install_pb.SyncModelsResponse:
    return install_pb.SyncModelsResponse(
        missing=[
            install_pb.MissingModel(model=config_to_pb(config), removed=removed)
            for config, removed in report.missing
        ],
        found=[
            install_pb.FoundModel(model=_found_config(config, registered), registered=registered)
            for config, registered in report.found
        ],
        failed=[
            install_pb.SyncFailure(path=str(path), error_type=error.reason, error=error.message)
            for path, error in report.failed
        ],
    )


def _found_config(config: AnyModelConfig, registered: bool) -> model_pb2.ModelConfig:
    """A registered model's record; an unregistered one's probed config has no key or times,
    since no record exists."""
    message = config_to_pb(config)
    if not registered:
        for name in ("key", "create_time", "update_time"):
            message.ClearField(name)
    return message


def _install_part(part: InstallPart) -> install_pb.InstallPart:
    return install_pb.InstallPart(
        source=part.source,
        local_path=part.local_path,
        bytes=part.bytes,
        total_bytes=part.total_bytes,
        download_job_id=part.download_job_id,
    )
