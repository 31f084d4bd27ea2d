"""What every gRPC call from an Easel process or the SDK carries, and how its channel is set.

A call carries the request id being served (so one client request can be followed through
every service's log) and the bearer token; its channel uses the suite's TLS roots and
message limits. This module knows nothing of servers, logging set-up or asyncio, so the
SDK can import it without pulling in server code.
"""

from __future__ import annotations

from contextvars import ContextVar

import grpc

from services.common.settings import CommonSettings

REQUEST_ID_METADATA_KEY = "x-request-id"

_request_id: ContextVar[str | None] = ContextVar("easel_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request this task is serving, if any."""
    return _request_id.get()


def set_request_id(request_id: str) -> None:
    _request_id.set(request_id)


def outgoing_metadata(auth_token: str | None) -> list[tuple[str, str]]:
    """Metadata every call sends: the request id being served (or none) and the token."""
    metadata = []
    request_id = current_request_id()
    if request_id:
        metadata.append((REQUEST_ID_METADATA_KEY, request_id))
    if auth_token:
        metadata.append(("authorization", f"Bearer {auth_token}"))
    return metadata


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
