"""One http(s) file onto disk: redirects, the token policy, resume, and failure reasons.

Redirects are followed here rather than by aiohttp so that every hop is checked (scheme,
SSRF guard) and the access token goes only to the host it was given for. A partial file
resumes with `Range` + `If-Range`; the server's answer decides whether the bytes on disk
are kept (206 with a Content-Range starting at our offset), are the whole file already
(416 with `Content-Range: bytes */<partial size>`: the range starts at the end) or the
file starts over (anything else).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import aiohttp
from yarl import URL

from services.downloader.address_guard import AddressGuard, AddressNotAllowedError, GuardedResolver
from services.downloader.file_names import FALLBACK_NAME, sanitise_remote_name
from services.downloader.file_writer import BackgroundFileWriter
from services.downloader.jobs import DownloadJob, DownloadPart, TransferError
from services.downloader.local_transfer import make_folder
from services.downloader.transfer_threads import TransferThreads

READ_BUFFER_BYTES = 4 * 1024 * 1024
RECEIVE_BYTES = 4 * 1024 * 1024
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


class TransferObserver(Protocol):
    """What the queue learns while a file transfers."""

    def headers_received(self, part: DownloadPart) -> None:
        """Sizes, validators and (for a new name) the destination are known."""

    def bytes_received(self, part: DownloadPart) -> None:
        """`part.bytes` grew."""


class UrlDownloader:
    """Downloads URL parts of jobs on the transfer threads, each with a guarded session."""

    def __init__(self, guard: AddressGuard, check_free_space: Callable[[Path, int], None]):
        self._guard = guard
        self._check_free_space = check_free_space
        self._threads = TransferThreads(self._new_session)

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self._guard), limit=0),
            timeout=TIMEOUT,
            read_bufsize=READ_BUFFER_BYTES,
            auto_decompress=False,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._threads.start)

    async def close(self) -> None:
        await asyncio.to_thread(self._threads.stop)

    async def download(
        self,
        job: DownloadJob,
        part: DownloadPart,
        name_destination: Callable[[str], Path],
        observer: TransferObserver,
    ) -> None:
        """Fetch `part` into its partial file; `name_destination` turns a remote name into
        the final path when the job has none yet."""
        reporter = _FromTransferThread(observer, asyncio.get_running_loop())

        async def transfer(session: aiohttp.ClientSession) -> None:
            try:
                await self._fetch(session, job, part, name_destination, reporter)
            except _StartOver:
                partial = job.partial_path(part)
                if partial is not None:
                    partial.unlink(missing_ok=True)
                await self._fetch(session, job, part, name_destination, reporter)

        await self._threads.run(transfer)

    async def _fetch(
        self,
        session: aiohttp.ClientSession,
        job: DownloadJob,
        part: DownloadPart,
        name_destination: Callable[[str], Path],
        observer: TransferObserver,
    ) -> None:
        """`_download` with every network and disk failure turned into a TransferError."""
        try:
            await self._download(session, job, part, name_destination, observer)
        except (TransferError, _StartOver):
            raise
        except AddressNotAllowedError as exc:
            raise TransferError("ADDRESS_NOT_ALLOWED", str(exc)) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressNotAllowedError):
                raise TransferError("ADDRESS_NOT_ALLOWED", str(exc.os_error)) from None
            raise TransferError("CONNECTION_ERROR", f"cannot connect: {exc}") from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransferError("TIMEOUT", f"the server stopped answering: {exc}") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise TransferError("CONNECTION_ERROR", f"connection lost: {exc}") from None
        except aiohttp.ClientError as exc:
            raise TransferError("CONNECTION_ERROR", f"unusable answer: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise TransferError("DISK_FULL", f"no space left on device: {exc}") from None
            raise

    async def _download(
        self,
        session: aiohttp.ClientSession,
        job: DownloadJob,
        part: DownloadPart,
        name_destination: Callable[[str], Path],
        observer: TransferObserver,
    ) -> None:
        partial = job.partial_path(part)
        offset = partial.stat().st_size if partial is not None and partial.is_file() else 0
        validator = part.etag or part.last_modified
        headers = {}
        if offset and validator:
            headers = {"Range": f"bytes={offset}-", "If-Range": validator}
        async with self._open(session, part.source, job, headers) as response:
            if response.status == 416:
                if _unsatisfied_range_size(response) != offset:
                    raise _StartOver
                self._take_complete(part, offset)
                observer.headers_received(part)
                return
            resumed = bool(headers) and _content_range_start(response) == offset
            offset = offset if resumed else 0
            self._take_headers(part, response, offset, name_destination)
            observer.headers_received(part)
            partial = job.partial_path(part)
            assert partial is not None
            make_folder(partial.parent)
            self._check_free_space(partial.parent, max(part.total_bytes - offset, 0))
            part.bytes = offset
            _receive_in_large_reads(response)
            async with BackgroundFileWriter(partial, append=resumed) as writer:
                async for chunk in response.content.iter_any():
                    await writer.write(chunk)
                    part.bytes += len(chunk)
                    observer.bytes_received(part)
        if part.total_bytes and part.bytes != part.total_bytes:
            raise TransferError(
                "SIZE_MISMATCH",
                f"{part.source}: received {part.bytes} bytes, expected {part.total_bytes}",
            )
        if not part.total_bytes:
            part.total_bytes = part.bytes

    @asynccontextmanager
    async def _open(
        self, session: aiohttp.ClientSession, url: str, job: DownloadJob, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The final response for `url` after redirects; an error status fails the part."""
        origin = URL(url)
        current = origin
        token = job.access_token.get_secret_value() if job.access_token else None
        for _ in range(MAX_REDIRECTS + 1):
            self._guard.check_literal(current.host or "")
            request_headers = dict(headers)
            if token and (current.host, current.port) == (origin.host, origin.port):
                request_headers["Authorization"] = f"Bearer {token}"
            response = await session.get(current, headers=request_headers, allow_redirects=False)
            try:
                if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                    current = current.join(URL(response.headers["Location"]))
                    if current.scheme not in ("http", "https"):
                        raise TransferError(
                            "UNSUPPORTED_SCHEME", f"redirected to a {current.scheme} URL"
                        )
                    continue
                if response.status == 416 and "Range" in headers:
                    yield response  # the resume's answer: the caller decides
                    return
                if response.status >= 400:
                    raise TransferError(
                        f"HTTP_{response.status}",
                        f"{url}: HTTP {response.status} {response.reason or ''}".rstrip(),
                    )
                yield response
                return
            finally:
                response.release()
        raise TransferError("TOO_MANY_REDIRECTS", f"{url}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _take_complete(part: DownloadPart, size: int) -> None:
        """The partial file holds the whole file: the server's size is the partial's."""
        if part.expected_size and size != part.expected_size:
            raise _StartOver
        part.total_bytes = part.bytes = size

    @staticmethod
    def _take_headers(
        part: DownloadPart,
        response: aiohttp.ClientResponse,
        offset: int,
        name_destination: Callable[[str], Path],
    ) -> None:
        part.etag = response.headers.get("ETag", "")
        part.last_modified = response.headers.get("Last-Modified", "")
        part.content_type = response.headers.get("Content-Type", "")
        length = response.content_length
        size = offset + length if length is not None else 0
        if part.expected_size and size and size != part.expected_size:
            raise TransferError(
                "SIZE_MISMATCH",
                f"{part.source}: the server sends {size} bytes, expected {part.expected_size}",
            )
        part.total_bytes = part.expected_size or size
        if part.destination is None:
            part.destination = name_destination(_remote_name(response, part.source))


class _FromTransferThread:
    """Passes a transfer thread's reports to the queue: headers on the queue's own loop
    (they change the job), bytes directly (progress publishing is thread-safe)."""

    def __init__(self, observer: TransferObserver, loop: asyncio.AbstractEventLoop) -> None:
        self._observer = observer
        self._loop = loop

    def headers_received(self, part: DownloadPart) -> None:
        self._loop.call_soon_threadsafe(self._observer.headers_received, part)

    def bytes_received(self, part: DownloadPart) -> None:
        self._observer.bytes_received(part)


def _receive_in_large_reads(response: aiohttp.ClientResponse) -> None:
    """asyncio's socket transport takes at most 256 KiB per recv() (its `max_size`); at
    gigabytes a second the per-read cost is what bounds a download, so a download's
    connection reads up to RECEIVE_BYTES at once. Measured with `bench/downloads.py`: 8
    parallel downloads go from 0.7x to 1.05x the throughput of 8 curls."""
    transport = response.connection.transport if response.connection is not None else None
    if transport is not None and hasattr(transport, "max_size"):
        transport.max_size = RECEIVE_BYTES


class _StartOver(Exception):
    """The server refused our range (416) and the partial file is not the whole file."""


def _content_range_start(response: aiohttp.ClientResponse) -> int | None:
    """The first byte of a 206 answer's Content-Range, None for anything else."""
    if response.status != 206:
        return None
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    first, _, _ = spec.partition("-")
    return int(first) if unit == "bytes" and first.isdigit() else None


def _unsatisfied_range_size(response: aiohttp.ClientResponse) -> int | None:
    """The full size a 416 answer states (`Content-Range: bytes */<size>`), else None."""
    unit, _, spec = response.headers.get("Content-Range", "").partition(" ")
    star, _, size = spec.partition("/")
    return int(size) if unit == "bytes" and star == "*" and size.isdigit() else None


def _remote_name(response: aiohttp.ClientResponse, url: str) -> str:
    disposition = response.content_disposition
    from_header = sanitise_remote_name(disposition.filename if disposition else None)
    from_url = sanitise_remote_name(URL(url).name)
    return from_header or from_url or FALLBACK_NAME
