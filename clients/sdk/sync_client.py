"""The blocking client: the stubs of the four services on `grpc` channels."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Self

import grpc

from clients.sdk.connection import ServiceStubs, channel_options, default_timeout
from clients.sdk.helpers import Helpers
from clients.sdk.settings import ClientSettings, client_settings
from services.common.call_options import channel_credentials, outgoing_metadata
from services.common.error_status import from_rpc_error
from services.common.settings import CommonSettings


class EaselClient(ServiceStubs, Helpers):
    """Stubs for the four services and the one-call helpers; use as a context manager or
    call `close`. `settings` defaults to the ones the services read (file, environment)."""

    def __init__(self, settings: CommonSettings | None = None) -> None:
        self.settings: ClientSettings = client_settings(settings)
        self._channels: list[grpc.Channel] = []
        super().__init__(
            self._channel(self.settings.downloader_address),
            self._channel(self.settings.model_manager_address),
            self._channel(self.settings.inference_address),
            self._channel(self.settings.invoker_address),
        )

    def _channel(self, address: str) -> grpc.Channel:
        credentials = channel_credentials(self.settings)
        options = channel_options(self.settings)
        raw = (
            grpc.insecure_channel(address, options=options)
            if credentials is None
            else grpc.secure_channel(address, credentials, options=options)
        )
        self._channels.append(raw)
        return grpc.intercept_channel(raw, _DomainErrorInterceptor(self.settings))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _DomainErrorInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token, the request id and the default deadline to every call, and raises
    domain errors for failures."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings
        token = settings.auth_token
        self._auth_token = token.get_secret_value() if token else None

    def _details(self, details: grpc.ClientCallDetails, timeout: float | None) -> _CallDetails:
        metadata = [*(details.metadata or ()), *outgoing_metadata(self._auth_token)]
        return _CallDetails(
            details.method,
            details.timeout if details.timeout is not None else timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        timeout = default_timeout(details.method, self._settings)
        return self._unary(continuation(self._details(details, timeout), request))

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return self._unary(continuation(self._details(details, None), request_iterator))

    def intercept_unary_stream(self, continuation, details, request):
        return _DomainErrorStream(continuation(self._details(details, None), request))

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return _DomainErrorStream(continuation(self._details(details, None), request_iterator))

    @staticmethod
    def _unary(outcome: Any) -> Any:
        error = outcome.exception()
        if isinstance(error, grpc.RpcError):
            raise from_rpc_error(error) from None
        return outcome


class _DomainErrorStream:
    """A response stream whose failure surfaces as a domain error; otherwise the call itself."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
