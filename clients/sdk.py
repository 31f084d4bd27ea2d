"""The Python SDK: typed stubs of every Easel service, raising domain errors.

`EaselClient` opens one channel per process from the same settings the services read
(addresses, bearer token, TLS) and exposes the generated stubs. A failed call raises the
`services.common.errors` class its status code stands for, with the server's reason,
metadata and field violations, so callers catch `NotFoundError`, not `grpc.RpcError`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Self

import grpc

from easel.downloader.v1 import download_service_pb2_grpc
from easel.inference.v1 import (
    generation_service_pb2_grpc,
    model_cache_service_pb2_grpc,
    tensor_store_service_pb2_grpc,
)
from easel.invoker.v1 import (
    image_service_pb2_grpc,
    invocation_service_pb2_grpc,
    queue_service_pb2_grpc,
    session_service_pb2_grpc,
)
from easel.model_manager.v1 import (
    model_install_service_pb2_grpc,
    model_record_service_pb2_grpc,
)
from services.common.call_options import (
    channel_credentials,
    message_size_options,
    outgoing_metadata,
)
from services.common.error_status import from_rpc_error
from services.common.settings import CommonSettings


class EaselClient:
    """Stubs for the four services; use as a context manager or call `close`."""

    def __init__(self, settings: CommonSettings | None = None) -> None:
        settings = settings or CommonSettings.load()
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        interceptor = _DomainErrorInterceptor(token)
        credentials = channel_credentials(settings)
        options = message_size_options(settings)

        def channel(address: str) -> grpc.Channel:
            raw = (
                grpc.insecure_channel(address, options=options)
                if credentials is None
                else grpc.secure_channel(address, credentials, options=options)
            )
            self._channels.append(raw)
            return grpc.intercept_channel(raw, interceptor)

        self._channels: list[grpc.Channel] = []
        downloader = channel(settings.downloader_address)
        model_manager = channel(settings.model_manager_address)
        inference = channel(settings.inference_address)
        invoker = channel(settings.invoker_address)

        self.downloads = download_service_pb2_grpc.DownloadServiceStub(downloader)
        self.model_records = model_record_service_pb2_grpc.ModelRecordServiceStub(model_manager)
        self.model_install = model_install_service_pb2_grpc.ModelInstallServiceStub(model_manager)
        self.model_cache = model_cache_service_pb2_grpc.ModelCacheServiceStub(inference)
        self.generation = generation_service_pb2_grpc.GenerationServiceStub(inference)
        self.tensors = tensor_store_service_pb2_grpc.TensorStoreServiceStub(inference)
        self.invocations = invocation_service_pb2_grpc.InvocationServiceStub(invoker)
        self.sessions = session_service_pb2_grpc.SessionServiceStub(invoker)
        self.queue = queue_service_pb2_grpc.QueueServiceStub(invoker)
        self.images = image_service_pb2_grpc.ImageServiceStub(invoker)

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
    """Adds the token and request id to every call and raises domain errors for failures."""

    def __init__(self, auth_token: str | None) -> None:
        self._auth_token = auth_token

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), *outgoing_metadata(self._auth_token)]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _unary(self, continuation, details, request):
        outcome = continuation(self._details(details), request)
        error = outcome.exception()
        if isinstance(error, grpc.RpcError):
            raise from_rpc_error(error) from None
        return outcome

    def _stream(self, continuation, details, request):
        return _DomainErrorStream(continuation(self._details(details), request))

    intercept_unary_unary = _unary
    intercept_stream_unary = _unary
    intercept_unary_stream = _stream
    intercept_stream_stream = _stream


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
