"""What happens around every RPC a server handles, in one place.

For each call: check the bearer token (when one is configured), bind the caller's request
id, log the call's method, status and duration, and turn a domain error into its status
code with details (an unexpected exception becomes INTERNAL with its traceback logged).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from grpc import aio

from services.common import errors
from services.common.call_options import REQUEST_ID_METADATA_KEY
from services.common.error_status import code_for, to_status
from services.common.logs import bind_request_id

log = structlog.get_logger(__name__)

# Health checks answer without a token so that supervisors and load balancers can probe.
# Reflection is not exempt: a server that wants a token shows its API only to callers
# that have it.
UNAUTHENTICATED_METHODS = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}
)


class ServerCallInterceptor(aio.ServerInterceptor):
    """Authentication, request ids, logging and error mapping for every handler."""

    def __init__(self, domain: str, auth_token: str | None) -> None:
        self.domain = domain
        self._expected_authorization = (
            f"Bearer {auth_token}".encode() if auth_token is not None else None
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = dict(handler_call_details.invocation_metadata or ())  # type: ignore[attr-defined]
        call = _Call(self, method, metadata)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.stream(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.stream(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def check_token(self, method: str, metadata: dict[str, Any]) -> None:
        if self._expected_authorization is None or method in UNAUTHENTICATED_METHODS:
            return
        given = str(metadata.get("authorization", "")).encode()
        if not hmac.compare_digest(given, self._expected_authorization):
            raise errors.UnauthenticatedError(
                "this server requires a valid bearer token in the authorization metadata",
                reason="INVALID_TOKEN" if given else "MISSING_TOKEN",
            )


class _Call:
    """One RPC in flight: wraps its handler with the interceptor's duties."""

    def __init__(self, owner: ServerCallInterceptor, method: str, metadata: dict[str, Any]):
        self._owner = owner
        self._method = method
        self._metadata = metadata

    def unary(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: aio.ServicerContext) -> Any:
            started = self._start()
            try:
                self._owner.check_token(self._method, self._metadata)
                result = behavior(request, context)
                response = await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                await self._fail(exc, context, started)
                raise
            self._finish(context, started)
            return response

        return handle

    def stream(self, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            started = self._start()
            try:
                self._owner.check_token(self._method, self._metadata)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                elif inspect.isawaitable(result):
                    await result
                else:
                    for response in result:
                        yield response
            except BaseException as exc:
                await self._fail(exc, context, started)
                raise
            self._finish(context, started)

        return handle

    def _start(self) -> float:
        structlog.contextvars.clear_contextvars()
        bind_request_id(self._metadata.get(REQUEST_ID_METADATA_KEY))
        structlog.contextvars.bind_contextvars(rpc=self._method)
        return time.perf_counter()

    def _finish(self, context: aio.ServicerContext, started: float) -> None:
        # Health is polled constantly by supervisors: keep it out of the info log.
        level = logging.DEBUG if self._method in UNAUTHENTICATED_METHODS else logging.INFO
        log.log(level, "rpc", code=_code_name(context.code()), ms=_elapsed_ms(started))

    async def _fail(self, exc: BaseException, context: aio.ServicerContext, started: float):
        """Log the failure and, for a domain or unexpected error, abort with its status."""
        if isinstance(exc, aio.AbortError):
            log.info("rpc", code=_code_name(context.code()), ms=_elapsed_ms(started))
            return
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            log.info("rpc", code="CANCELLED", ms=_elapsed_ms(started))
            return
        if isinstance(exc, errors.EaselError):
            error = exc
            log.info("rpc", code=code_for(error).name, reason=error.reason, ms=_elapsed_ms(started))
        else:
            error = errors.InternalError(f"internal error: {type(exc).__name__}: {exc}")
            log.exception("rpc", code="INTERNAL", ms=_elapsed_ms(started))
        await context.abort_with_status(to_status(error, self._owner.domain))


def _code_name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code or "OK")


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
