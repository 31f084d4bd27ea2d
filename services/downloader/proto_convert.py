"""Conversions between the downloader's protobuf messages and its domain objects."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from easel.downloader.v1 import download_service_pb2 as pb
from services.common import errors
from services.common.proto_enums import EnumMap
from services.downloader.job_requests import NewDownload, RemoteFile
from services.downloader.jobs import (
    DEFAULT_PRIORITY,
    DownloadEvent,
    DownloadJob,
    DownloadJobKind,
    DownloadJobStatus,
    DownloadPart,
    JobChanged,
)

STATUS = EnumMap(DownloadJobStatus, pb.DownloadJobStatus)
KIND = EnumMap(DownloadJobKind, pb.DownloadJobKind)


def new_download(request: pb.CreateDownloadJobRequest) -> NewDownload:
    files = tuple(
        RemoteFile(url=file.url, path=file.path, size=file.size)
        for file in request.multi_file.files
    )
    if request.HasField("multi_file") and not files:
        raise errors.InvalidArgumentError(
            "multi_file needs at least one file", field="multi_file.files", reason="INVALID_SOURCE"
        )
    if not request.HasField("single_source") and not files:
        raise errors.InvalidArgumentError(
            "a source is required", field="single_source", reason="INVALID_SOURCE"
        )
    return NewDownload(
        source=request.single_source,
        files=files,
        dest_dir=request.dest_dir,
        dest_path=request.dest_path,
        filename=request.filename,
        priority=request.priority if request.HasField("priority") else DEFAULT_PRIORITY,
        access_token=request.access_token,
        start_later=request.start_later,
        preserve_partial_downloads=request.preserve_partial_downloads,
        move=request.move,
    )


def statuses(values: list[int]) -> list[DownloadJobStatus]:
    return STATUS.filter(values, "statuses")


def job_to_pb(job: DownloadJob) -> pb.DownloadJob:
    single = job.parts[0] if job.kind is not DownloadJobKind.MULTI_FILE else None
    return pb.DownloadJob(
        id=job.id,
        kind=KIND.to_pb(job.kind),
        status=STATUS.to_pb(job.status),
        source=job.source,
        destination=_path(job.destination),
        dest_dir=_path(job.dest_dir),
        filename=job.filename,
        dest_path=_path(job.dest_path),
        priority=job.priority,
        bytes=job.bytes,
        total_bytes=job.total_bytes,
        parts=[] if single else [_part_to_pb(part) for part in job.parts],
        has_access_token=job.access_token is not None,
        preserve_partial_downloads=job.preserve_partial_downloads,
        move=job.move,
        job_sequence=job.job_sequence,
        create_time=_timestamp(job.create_time),
        start_time=_timestamp(job.start_time),
        end_time=_timestamp(job.end_time),
        error_type=job.error_type,
        error=job.error,
        content_type=single.content_type if single else "",
        etag=single.etag if single else "",
        last_modified=single.last_modified if single else "",
    )


def event_to_pb(event: DownloadEvent, dropped_count: int) -> pb.WatchDownloadsResponse:
    envelope = pb.DownloadEvent(
        time=_timestamp(event.time), job_id=event.job_id, dropped_count=dropped_count
    )
    if isinstance(event, JobChanged):
        envelope.job_changed.job.CopyFrom(job_to_pb(event.job))
    else:
        envelope.progress.bytes = event.bytes
        envelope.progress.total_bytes = event.total_bytes
        for part_bytes, total, status in event.parts:
            envelope.progress.parts.add(
                bytes=part_bytes, total_bytes=total, status=STATUS.to_pb(status)
            )
    return pb.WatchDownloadsResponse(event=envelope)


def _part_to_pb(part: DownloadPart) -> pb.DownloadPart:
    return pb.DownloadPart(
        source=part.source,
        destination=_path(part.destination),
        bytes=part.bytes,
        total_bytes=part.total_bytes,
        status=STATUS.to_pb(part.status),
    )


def _path(path: object) -> str:
    return "" if path is None else str(path)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
