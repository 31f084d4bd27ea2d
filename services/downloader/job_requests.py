"""What a request for a download job may ask, checked completely before the job exists.

Checking reads the file system (paths resolved against the allowed roots, folders on the
way, free space, the size of a local source), so `RequestValidator.validate` blocks and
the queue runs it in a worker thread. A refused request leaves nothing behind: no job, no
id, no file or folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import SecretStr
from yarl import URL

from services.common import errors
from services.common.allowed_roots import resolve_within
from services.downloader.address_guard import AddressGuard, AddressNotAllowedError, numeric_ipv4
from services.downloader.file_names import is_plain_name, is_safe_relative_path
from services.downloader.jobs import (
    DEFAULT_PRIORITY,
    DownloadJob,
    DownloadJobKind,
    DownloadPart,
    TransferError,
)
from services.downloader.local_transfer import free_bytes, list_source

HUB_HOSTS = frozenset({"huggingface.co", "hf.co"})
"""Hosts of the HuggingFace Hub whose file pages are rewritten to the files themselves."""

_HUB_REPO_TYPES = frozenset({"datasets", "spaces"})


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


@dataclass
class PlannedJob:
    """A request that passed every check: its job, once it has an id."""

    new: NewDownload
    kind: DownloadJobKind
    parts: list[DownloadPart]
    dest_dir: Path | None
    dest_path: Path | None
    destination: Path | None

    def job(self, job_id: int, created: datetime) -> DownloadJob:
        new = self.new
        return DownloadJob(
            id=job_id,
            kind=self.kind,
            source="" if self.kind is DownloadJobKind.MULTI_FILE else self.parts[0].source,
            destination=self.destination,
            dest_dir=self.dest_dir,
            filename=new.filename,
            dest_path=self.dest_path,
            priority=new.priority,
            parts=self.parts,
            access_token=SecretStr(new.access_token) if new.access_token else None,
            preserve_partial_downloads=new.preserve_partial_downloads,
            move=new.move,
            create_time=created,
        )


class RequestValidator:
    """Checks requests against the allowed roots, the SSRF guard and the free-space
    reserve; every refusal is a domain error naming the request field at fault."""

    def __init__(self, roots: Sequence[Path], guard: AddressGuard, reserve_bytes: int) -> None:
        self._roots = list(roots)
        self._guard = guard
        self._reserve = reserve_bytes

    def validate(self, new: NewDownload) -> PlannedJob:
        """The job `new` asks for, or the first error in it. Blocks on the file system."""
        if new.files:
            kind, parts = DownloadJobKind.MULTI_FILE, self._remote_files(new)
        elif is_url(new.source):
            kind, parts = DownloadJobKind.URL, [DownloadPart(source=self._url(new.source))]
        else:
            kind = DownloadJobKind.LOCAL_PATH
            parts = [DownloadPart(source=str(self._local_source(new)))]
        if kind is not DownloadJobKind.LOCAL_PATH and new.move:
            raise errors.InvalidArgumentError("move applies to local sources only", field="move")
        if kind is DownloadJobKind.LOCAL_PATH and new.access_token:
            raise errors.InvalidArgumentError(
                "an access token applies to URLs only", field="access_token"
            )
        dest_dir, dest_path, destination = self._destination(new, kind)
        if kind is DownloadJobKind.MULTI_FILE:
            assert dest_dir is not None
            for index, (part, file) in enumerate(zip(parts, new.files, strict=True)):
                part.destination = self._file_destination(dest_dir, file.path, index)
        else:
            parts[0].destination = destination
        if kind is DownloadJobKind.LOCAL_PATH:
            parts[0].total_bytes = needed = _source_size(Path(parts[0].source))
        else:
            needed = sum(part.expected_size for part in parts)
        folder = dest_path.parent if dest_path is not None else dest_dir
        assert folder is not None
        self._check_space(folder, needed)
        return PlannedJob(new, kind, parts, dest_dir, dest_path, destination)

    # Sources

    def _url(self, source: str, field: str = "single_source") -> str:
        try:
            url = URL(source)
        except ValueError:
            url = URL()
        if not url.host:
            raise _invalid_source(f"{source!r} is not a valid URL: it names no host", field, source)
        try:
            numeric_ipv4(url.host)
        except ValueError as exc:
            raise _invalid_source(f"{source!r} is not a valid URL: {exc}", field, source) from None
        try:
            self._guard.check_literal(url.host)
        except AddressNotAllowedError as exc:
            raise errors.PermissionDeniedError(
                str(exc),
                reason="ADDRESS_NOT_ALLOWED",
                metadata={"host": exc.host, "address": exc.address},
            ) from None
        return hub_file_url(source)

    def _local_source(self, new: NewDownload) -> Path:
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
        return path

    def _remote_files(self, new: NewDownload) -> list[DownloadPart]:
        paths: set[str] = set()
        parts = []
        for index, file in enumerate(new.files):
            field = f"multi_file.files[{index}]"
            if not is_url(file.url):
                message = f"{file.url!r} is not an http(s) URL"
                raise _invalid_source(message, f"{field}.url", file.url)
            if not is_safe_relative_path(file.path) or file.path in paths:
                raise _invalid_source(
                    f"{file.path!r} must be a unique relative path without '..'",
                    f"{field}.path",
                    file.path,
                )
            if file.size < 0:
                raise errors.InvalidArgumentError(
                    "size must not be negative", field=f"{field}.size", reason="INVALID_SOURCE"
                )
            paths.add(file.path)
            url = self._url(file.url, field=f"{field}.url")
            parts.append(DownloadPart(source=url, expected_size=file.size, total_bytes=file.size))
        return parts

    # Destinations

    def _destination(
        self, new: NewDownload, kind: DownloadJobKind
    ) -> tuple[Path | None, Path | None, Path | None]:
        """(dest_dir, dest_path, final destination if known now) of a request."""
        if bool(new.dest_dir) == bool(new.dest_path):
            raise _invalid_destination("give exactly one of dest_dir and dest_path", "dest_dir")
        if new.filename and (not new.dest_dir or kind is DownloadJobKind.MULTI_FILE):
            raise _invalid_destination(
                "filename goes with dest_dir, and not with multi_file", "filename"
            )
        if new.filename and not is_plain_name(new.filename):
            raise _invalid_destination(f"{new.filename!r} is not a plain file name", "filename")
        if new.dest_path:
            if kind is DownloadJobKind.MULTI_FILE:
                raise _invalid_destination("a multi-file job needs dest_dir", "dest_path")
            dest_path = self._within_roots(new.dest_path, "dest_path")
            _check_folder_possible(dest_path.parent, "dest_path")
            destination: Path | None = dest_path
            dest_dir = None
        else:
            dest_dir = self._within_roots(new.dest_dir, "dest_dir")
            _check_folder_possible(dest_dir, "dest_dir")
            dest_path = None
            if kind is DownloadJobKind.MULTI_FILE:
                destination = dest_dir
            elif new.filename:
                destination = dest_dir / new.filename
            elif kind is DownloadJobKind.LOCAL_PATH:
                destination = dest_dir / Path(new.source).name
            else:
                destination = None
        if destination is not None and kind is not DownloadJobKind.MULTI_FILE:
            _check_no_folder_at(destination)
        return dest_dir, dest_path, destination

    def _file_destination(self, dest_dir: Path, path: str, index: int) -> Path:
        """dest_dir/path of a multi-file entry, whose folders must stay inside the roots
        (a symlinked folder under dest_dir must not lead out) and be creatable."""
        field = f"multi_file.files[{index}].path"
        destination = dest_dir / path
        self._within_roots(str(destination.parent), field)
        _check_folder_possible(destination.parent, field)
        _check_no_folder_at(destination)
        return destination

    def _within_roots(self, path: str, field: str) -> Path:
        return resolve_within(path, self._roots, field=field, invalid_reason="INVALID_DESTINATION")

    def _check_space(self, folder: Path, needed: int) -> None:
        free = free_bytes(folder)
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


def is_url(source: str) -> bool:
    return source.strip().lower().startswith(("http://", "https://"))


def hub_file_url(source: str) -> str:
    """The file behind a HuggingFace Hub file page, else `source` unchanged.

    `https://huggingface.co/<repo>/blob/<revision>/<path>` is the page a browser shows
    for a file, the URL users copy; `/resolve/` in its place is the file itself. Only the
    public hub's hosts (`HUB_HOSTS`) are rewritten: the downloader cannot know which other
    hosts are hub mirrors, so their URLs must be given as `/resolve/` URLs.
    """
    url = URL(source)
    if url.host not in HUB_HOSTS:
        return source
    segments = url.raw_path.split("/")[1:]
    start = 1 if segments and segments[0] in _HUB_REPO_TYPES else 0
    for repo_segments in (2, 1):  # "<namespace>/<name>", or an old name without namespace
        marker = start + repo_segments
        if len(segments) < marker + 3 or not segments[marker + 2]:
            continue
        if segments[marker] == "resolve":
            return source
        if segments[marker] == "blob":
            segments[marker] = "resolve"
            path = "/" + "/".join(segments)
            return str(url.with_path(path, encoded=True, keep_query=True, keep_fragment=True))
    return source


def _source_size(source: Path) -> int:
    try:
        return list_source(source).size
    except TransferError as exc:  # removed since it was checked
        raise errors.FailedPreconditionError(
            exc.message, reason="SOURCE_NOT_FOUND", metadata={"path": str(source)}
        ) from None


def _check_folder_possible(folder: Path, field: str) -> None:
    """Refuse a folder that exists as a file, or lies under one: a job there could never
    write its data."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise errors.InvalidArgumentError(
            f"{field}: {existing} is a file, not a folder",
            field=field,
            reason="INVALID_DESTINATION",
            metadata={"path": str(existing)},
        )


def _check_no_folder_at(destination: Path) -> None:
    if destination.is_dir():
        raise errors.FailedPreconditionError(
            f"a folder exists at {destination}",
            reason="DESTINATION_EXISTS",
            metadata={"path": str(destination)},
        )


def _invalid_source(message: str, field: str, source: str) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(
        message, field=field, reason="INVALID_SOURCE", metadata={"source": source}
    )


def _invalid_destination(message: str, field: str) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(message, field=field, reason="INVALID_DESTINATION")
