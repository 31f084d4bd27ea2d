"""Channels from one Easel process to another.

Every outgoing call carries the current request id (so one client request can be followed
through every service's log) and the bearer token, and uses the suite's TLS settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio

from services.common.logs import REQUEST_ID_METADATA_KEY, current_request_id
from services.common.settings import CommonSettings


def message_size_options(settings: CommonSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
    ]


def channel_credentials(settings: CommonSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials when the suite serves TLS (or a CA is configured), else None."""
    if settings.tls_cert_file is None and settings.tls_ca_file is None:
        return None
    roots = settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def outgoing_metadata(auth_token: str | None) -> list[tuple[str, str]]:
    """Metadata every call sends: the request id being served (or none) and the token."""
    metadata = []
    request_id = current_request_id()
    if request_id:
        metadata.append((REQUEST_ID_METADATA_KEY, request_id))
    if auth_token:
        metadata.append(("authorization", f"Bearer {auth_token}"))
    return metadata


def open_channel(
    address: str, settings: CommonSettings, reconnect_backoff_ms: int | None = None
) -> aio.Channel:
    """An asyncio channel to another Easel service at `address`.

    `reconnect_backoff_ms` shortens gRPC's 1 s wait before retrying a refused connection,
    for callers that wait for a service to come up.
    """
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    interceptors = [_OutgoingMetadata(lambda: outgoing_metadata(token))]
    credentials = channel_credentials(settings)
    options = message_size_options(settings)
    if reconnect_backoff_ms is not None:
        options += [
            ("grpc.initial_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", reconnect_backoff_ms),
        ]
    if credentials is None:
        return aio.insecure_channel(address, options=options, interceptors=interceptors)
    return aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


class _OutgoingMetadata(
    aio.UnaryUnaryClientInterceptor,
    aio.UnaryStreamClientInterceptor,
    aio.StreamUnaryClientInterceptor,
    aio.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: Callable[[], list[tuple[str, str]]]) -> None:
        self._metadata = metadata

    def _with_metadata(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(details.metadata or ()))
        for key, value in self._metadata():
            if key not in metadata:
                metadata.add(key, value)
        return aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request) -> Any:
        return await continuation(self._with_metadata(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request) -> Any:
        return await continuation(self._with_metadata(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation, client_call_details, request_iterator
    ) -> Any:
        return await continuation(self._with_metadata(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation, client_call_details, request_iterator
    ) -> Any:
        return await continuation(self._with_metadata(client_call_details), request_iterator)
