"""An in-process gRPC server with Easel's own call interceptor (token check, domain errors
to statuses), running on an event loop of its own thread so that blocking and asyncio
clients can call it alike. Its servicers are the tests' own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self

from grpc import aio

from services.common.server_interceptor import ServerCallInterceptor

Registration = tuple[Callable[[Any, aio.Server], None], Any]
"""A generated `add_<Service>Servicer_to_server` function and the servicer it adds."""


class FakeServer:
    """Serves `services` on a loopback port of the system's choosing, as `address`."""

    def __init__(self, services: list[Registration], token: str | None = None) -> None:
        self._services = services
        self._token = token
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: aio.Server | None = None
        self.address = ""

    def __enter__(self) -> Self:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _start(self) -> None:
        self._server = aio.server(
            interceptors=[ServerCallInterceptor("easel.test.v1", self._token)]
        )
        for add, servicer in self._services:
            add(servicer, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        assert self._server is not None
        await self._server.stop(grace=None)
