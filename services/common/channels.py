"""Asyncio channels from one Easel process to another.

Every outgoing call, whatever its kind (unary or streaming, either way), carries the
current request id and the bearer token, and uses the suite's TLS settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from grpc import aio

from services.common.call_options import (
    channel_credentials,
    message_size_options,
    outgoing_metadata,
)
from services.common.settings import CommonSettings

Metadata = Callable[[], list[tuple[str, str]]]


def open_channel(
    address: str,
    settings: CommonSettings,
    reconnect_backoff_ms: int | None = None,
    options: Sequence[tuple[str, str | int]] = (),
) -> aio.Channel:
    """An asyncio channel to another Easel service at `address` (any gRPC target).

    `reconnect_backoff_ms` shortens gRPC's 1 s wait before retrying a refused connection,
    for callers that wait for a service to come up. `options` are further channel
    arguments (a service config choosing load balancing, for instance).
    """
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    interceptors = _interceptors(lambda: outgoing_metadata(token))
    credentials = channel_credentials(settings)
    options = [*message_size_options(settings), *options]
    if reconnect_backoff_ms is not None:
        options += [
            ("grpc.initial_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", reconnect_backoff_ms),
        ]
    if credentials is None:
        return aio.insecure_channel(address, options=options, interceptors=interceptors)
    return aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


def _interceptors(metadata: Metadata) -> list[aio.ClientInterceptor]:
    """One interceptor per call kind, each adding `metadata()` to the calls of its kind.

    One per kind, not one object implementing all four: `grpc.aio` files each interceptor
    under the first kind it implements only, so such an object would miss every stream.
    """
    return [
        _UnaryUnary(metadata),
        _UnaryStream(metadata),
        _StreamUnary(metadata),
        _StreamStream(metadata),
    ]


class _OutgoingMetadata:
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _with_metadata(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(details.metadata or ()))
        for key, value in self._metadata():
            if key not in metadata:
                metadata.add(key, value)
        return aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_OutgoingMetadata, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request) -> Any:
        return await continuation(self._with_metadata(client_call_details), request)


class _UnaryStream(_OutgoingMetadata, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request) -> Any:
        return await continuation(self._with_metadata(client_call_details), request)


class _StreamUnary(_OutgoingMetadata, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation, client_call_details, request_iterator
    ) -> Any:
        return await continuation(self._with_metadata(client_call_details), request_iterator)


class _StreamStream(_OutgoingMetadata, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation, client_call_details, request_iterator
    ) -> Any:
        return await continuation(self._with_metadata(client_call_details), request_iterator)
