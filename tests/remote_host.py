"""A real HTTP server on loopback standing in for the remote hosts downloads come from.

It serves named files with the behaviours a downloader meets in the wild, chosen by path:

- `/files/{name}`          ETag, Last-Modified, Range and If-Range honoured
- `/norange/{name}`        Range ignored: always the whole file (200)
- `/slow/{name}`           like /files, but 64 KiB every `delay` seconds (`?delay=0.05`)
- `/nolength/{name}`       chunked, no Content-Length, slowly (`?delay=`)
- `/named/{name}`          a Content-Disposition name from `?filename=`
- `/drop/{name}`           promises the whole file, closes the connection halfway
- `/status/{code}`         answers with that HTTP status
- `/redirect?to=URL`       302 to URL
- `/huge`                  claims a 10 TB body
- `/token/{name}`          403 unless `Authorization: Bearer secret-token`

Every request is recorded (path, Range, If-Range, Authorization, status) so tests can
check what the downloader really sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass

from aiohttp import web

SLOW_CHUNK = 64 * 1024
TOKEN = "secret-token"


def file_bytes(name: str, size: int) -> bytes:
    """Deterministic content for a test file."""
    return random.Random(name).randbytes(size)


@dataclass
class RecordedRequest:
    path: str
    range: str | None
    if_range: str | None
    authorization: str | None
    status: int = 0


RECORD = web.RequestKey("record", RecordedRequest)


class RemoteHost:
    """The server; `files` maps names to content and may be changed while it runs."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.files: dict[str, bytes] = {}
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def add(self, name: str, size: int) -> bytes:
        self.files[name] = file_bytes(name, size)
        return self.files[name]

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.on_response_prepare.append(self._record_status)
        app.add_routes(
            [
                web.get("/files/{name}", self._files),
                web.get("/token/{name}", self._token),
                web.get("/norange/{name}", self._norange),
                web.get("/slow/{name}", self._slow),
                web.get("/nolength/{name}", self._nolength),
                web.get("/named/{name}", self._named),
                web.get("/drop/{name}", self._drop),
                web.get("/status/{code}", self._status),
                web.get("/redirect", self._redirect),
                web.get("/huge", self._huge),
            ]
        )
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler):
        record = RecordedRequest(
            request.path,
            request.headers.get("Range"),
            request.headers.get("If-Range"),
            request.headers.get("Authorization"),
        )
        self.requests.append(record)
        request[RECORD] = record
        return await handler(request)

    @staticmethod
    async def _record_status(request: web.Request, response: web.StreamResponse) -> None:
        """Record the status as the headers go out, before the body is sent."""
        if RECORD in request:
            request[RECORD].status = response.status

    def _content(self, request: web.Request) -> bytes:
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound(text=f"no file {name}")
        return self.files[name]

    @staticmethod
    def _validators(content: bytes) -> dict[str, str]:
        digest = hashlib.sha256(content).hexdigest()[:16]
        return {"ETag": f'"{digest}"', "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"}

    def _range_start(self, request: web.Request, content: bytes) -> int:
        """Where to start: the Range start if the Range applies (If-Range matches), else 0."""
        requested = request.headers.get("Range", "")
        if not requested.startswith("bytes=") or not requested.endswith("-"):
            return 0
        if_range = request.headers.get("If-Range")
        validators = self._validators(content)
        if if_range is not None and if_range not in validators.values():
            return 0
        return int(requested[len("bytes=") : -1])

    async def _send(
        self, request: web.Request, content: bytes, *, ranges: bool, delay: float = 0.0
    ) -> web.StreamResponse:
        start = self._range_start(request, content) if ranges else 0
        if start >= len(content) and start:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(content)}"})
        headers = self._validators(content) if ranges else {}
        if ranges:
            headers["Accept-Ranges"] = "bytes"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        response.content_length = len(content) - start
        await response.prepare(request)
        body = memoryview(content)[start:]
        chunk = SLOW_CHUNK if delay else 1024 * 1024
        for offset in range(0, len(body), chunk):
            await response.write(body[offset : offset + chunk])
            if delay:
                await asyncio.sleep(delay)
        await response.write_eof()
        return response

    async def _files(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, self._content(request), ranges=True)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPForbidden(text="a valid token is required")
        return await self._send(request, self._content(request), ranges=True)

    async def _norange(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, self._content(request), ranges=False)

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        delay = float(request.query.get("delay", "0.05"))
        return await self._send(request, self._content(request), ranges=True, delay=delay)

    async def _nolength(self, request: web.Request) -> web.StreamResponse:
        content = self._content(request)
        delay = float(request.query.get("delay", "0.05"))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for offset in range(0, len(content), SLOW_CHUNK):
            await response.write(content[offset : offset + SLOW_CHUNK])
            await asyncio.sleep(delay)
        await response.write_eof()
        return response

    async def _named(self, request: web.Request) -> web.Response:
        filename = request.query["filename"]
        return web.Response(
            body=self._content(request),
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        content = self._content(request)
        response = web.StreamResponse()
        response.content_length = len(content)
        await response.prepare(request)
        await response.write(content[: len(content) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10 * 1024**4
        await response.prepare(request)
        await response.write(b"x" * 1024)
        return response
