"""How every Easel process serves: one `grpc.aio` server with the same furniture.

Each server has the health service (NOT_SERVING until its process says it is ready, and
again while it shuts down), server reflection (so `grpcurl` and `buf curl` need no protos),
message limits sized for images, the call interceptor (auth, request ids, logging, error
mapping), optional TLS, and a graceful stop on SIGTERM/SIGINT that gives in-flight calls
the configured grace period.

A server binds its address as soon as it is made, before its process builds anything, and
without SO_REUSEPORT: a second process on a busy address exits with one clear line instead
of sharing the calls, and touches nothing. With port 0 the system picks a free port;
`address` (and the `address_file` setting) then name the port it got.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import errors
from services.common.call_options import message_size_options
from services.common.logs import configure_logging
from services.common.server_interceptor import ServerCallInterceptor
from services.common.settings import CommonSettings

log = structlog.get_logger(__name__)

Step = Callable[[], Awaitable[None]]


class ServiceServer:
    """The gRPC server of one process, bound to its address once made: register services,
    then `serve` until signalled."""

    def __init__(self, process: str, domain: str, address: str, settings: CommonSettings):
        self.process = process
        self._settings = settings
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self._server = aio.server(
            interceptors=[ServerCallInterceptor(domain, token)],
            options=[
                *message_size_options(settings),
                # gRPC's default lets a second server bind a busy port and take half its calls.
                ("grpc.so_reuseport", 0),
                # No grace limit: a generation's stream runs to its end on the old connection.
                ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
            ],
        )
        self.address = self._bind(address)
        if settings.address_file is not None:
            _write_atomically(settings.address_file, self.address)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._service_names: list[str] = []
        self._stopping_hooks: list[Step] = []
        self._shutdown_hooks: list[Step] = []
        self._stop = asyncio.Event()

    def add_service(self, pb2: ModuleType, pb2_grpc: ModuleType, name: str, servicer=None):
        """Serve the service `name` of a generated module pair with `servicer`.

        RPCs the servicer does not implement (all of them when it is None) answer
        UNIMPLEMENTED, saying that a later release implements them.
        """
        if servicer is None:
            servicer = getattr(pb2_grpc, f"{name}Servicer")()
        service = pb2.DESCRIPTOR.services_by_name[name]
        answer_unimplemented_rpcs(servicer, service)
        getattr(pb2_grpc, f"add_{name}Servicer_to_server")(servicer, self._server)
        self._service_names.append(service.full_name)

    def on_stopping(self, hook: Step) -> None:
        """Run `hook` when a stop begins, before in-flight calls get their grace period
        (end endless streams, stop background work)."""
        self._stopping_hooks.append(hook)

    def on_shutdown(self, hook: Step) -> None:
        """Run `hook` after the server stopped taking calls (close stores, channels, ...)."""
        self._shutdown_hooks.append(hook)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self, become_ready: Step | None = None) -> None:
        """Serve until SIGTERM/SIGINT; report SERVING once `become_ready` has finished."""
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        log.info("listening", address=self.address, process=self.process)
        try:
            if become_ready is not None:
                await become_ready()
            if not self._stop.is_set():
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)
                log.info("serving", address=self.address, services=self._service_names)
            await self._stop.wait()
        finally:
            await self._shut_down()

    def _bind(self, address: str) -> str:
        """Bind `address` and return it with the port actually bound."""
        settings = self._settings
        try:
            if settings.tls_cert_file is not None:
                if settings.tls_key_file is None:
                    raise errors.InvalidArgumentError(
                        "tls_cert_file is set but tls_key_file is not", field="tls_key_file"
                    )
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
                )
                port = self._server.add_secure_port(address, credentials)
            else:
                port = self._server.add_insecure_port(address)
        except RuntimeError:  # what grpc raises for any address it cannot bind
            raise errors.UnavailableError(
                f"cannot listen on {address}: the address is in use or not one of this host",
                reason="ADDRESS_UNAVAILABLE",
                metadata={"address": address},
            ) from None
        host = address.rsplit(":", 1)[0]
        return f"{host}:{port}"

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    async def _shut_down(self) -> None:
        log.info("stopping", grace_s=self._settings.shutdown_grace_s)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await self._health.enter_graceful_shutdown()
        for hook in self._stopping_hooks:
            await hook()
        await self._server.stop(self._settings.shutdown_grace_s)
        for hook in reversed(self._shutdown_hooks):
            await hook()
        log.info("stopped")


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the whole text or no file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def answer_unimplemented_rpcs(servicer: Any, service: ServiceDescriptor) -> None:
    """Make every RPC of `service` that `servicer` leaves to its generated base say so.

    The generated base class answers "Method not implemented!"; a v1 RPC that a later
    release implements instead answers UNIMPLEMENTED with a message and an ErrorInfo
    (reason NOT_IMPLEMENTED_YET, the method's full name) that say exactly that.
    """
    generated_base = _generated_servicer_base(type(servicer), service)
    for method in service.methods:
        if getattr(type(servicer), method.name) is getattr(generated_base, method.name):
            setattr(servicer, method.name, _not_implemented_yet(method))


def _generated_servicer_base(cls: type, service: ServiceDescriptor) -> type:
    for base in cls.__mro__:
        if base.__name__ == f"{service.name}Servicer" and base.__module__.endswith("_pb2_grpc"):
            return base
    raise TypeError(f"{cls.__name__} does not derive from the generated {service.name}Servicer")


def _not_implemented_yet(method: MethodDescriptor) -> Callable[..., Awaitable[None]]:
    # A coroutine serves streaming RPCs too: grpc.aio awaits it and ends the stream.
    async def answer(_request: Any, _context: aio.ServicerContext) -> None:
        raise errors.UnimplementedError(
            f"{method.full_name} is part of the v1 API but this server does not implement "
            "it yet; a later release will",
            reason="NOT_IMPLEMENTED_YET",
            metadata={"method": method.full_name},
        )

    return answer


Build = Callable[[ServiceServer], Awaitable[Step | None]]


def run_process(process: str, domain: str, address: str, settings: CommonSettings, build: Build):
    """A process's whole life: log set-up, build its parts onto a server, serve, stop.

    `build` registers the process's services and returns what makes it ready to work
    (run while health says NOT_SERVING), or None when it is ready at once.
    """
    configure_logging(process, settings.log_level, settings.log_format)

    async def serve() -> None:
        server = ServiceServer(process, domain, address, settings)
        become_ready = await build(server)
        await server.serve(become_ready)

    try:
        asyncio.run(serve())
    except errors.EaselError as error:
        log.error("cannot serve", error=error.message, reason=error.reason)
        sys.exit(1)
