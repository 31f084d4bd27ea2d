"""The asyncio client: the stubs of the four services on `grpc.aio` channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any, Self

import grpc
from grpc import aio

from clients.sdk.connection import ServiceStubs, channel_options, default_timeout
from clients.sdk.helpers import AsyncHelpers
from clients.sdk.settings import ClientSettings, client_settings
from services.common.call_options import channel_credentials, outgoing_metadata
from services.common.error_status import from_rpc_error
from services.common.settings import CommonSettings


class AsyncEaselClient(ServiceStubs, AsyncHelpers):
    """The stubs of `EaselClient`, awaitable, and its helpers as coroutines; make it
    inside a running event loop, use as `async with` or `await close()`."""

    def __init__(self, settings: CommonSettings | None = None) -> None:
        self.settings: ClientSettings = client_settings(settings)
        self._channels: list[aio.Channel] = []
        super().__init__(
            self._channel(self.settings.downloader_address),
            self._channel(self.settings.model_manager_address),
            self._channel(self.settings.inference_address),
            self._channel(self.settings.invoker_address),
        )

    def _channel(self, address: str) -> aio.Channel:
        credentials = channel_credentials(self.settings)
        options = channel_options(self.settings)
        # grpc.aio files an interceptor under the first call kind it implements only.
        interceptors: list[aio.ClientInterceptor] = [
            _UnaryUnary(self.settings),
            _UnaryStream(self.settings),
            _StreamUnary(self.settings),
            _StreamStream(self.settings),
        ]
        if credentials is None:
            channel = aio.insecure_channel(address, options=options, interceptors=interceptors)
        else:
            channel = aio.secure_channel(
                address, credentials, options=options, interceptors=interceptors
            )
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Calls:
    """Adds the token, the request id and (for unary calls) the default deadline."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings
        token = settings.auth_token
        self._auth_token = token.get_secret_value() if token else None

    def _details(self, details: aio.ClientCallDetails, timeout: float | None):
        metadata = aio.Metadata(*(details.metadata or ()))
        for key, value in outgoing_metadata(self._auth_token):
            if key not in metadata:
                metadata.add(key, value)
        return aio.ClientCallDetails(
            details.method,
            details.timeout if details.timeout is not None else timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnary(_Calls, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request) -> Any:
        timeout = default_timeout(client_call_details.method, self._settings)
        call = await continuation(self._details(client_call_details, timeout), request)
        try:
            return await call
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


class _UnaryStream(_Calls, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request) -> Any:
        return _responses(await continuation(self._details(client_call_details, None), request))


class _StreamUnary(_Calls, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation, client_call_details, request_iterator
    ) -> Any:
        details = self._details(client_call_details, None)
        return _DomainErrorCall(await continuation(details, request_iterator))


class _StreamStream(_Calls, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation, client_call_details, request_iterator
    ) -> Any:
        details = self._details(client_call_details, None)
        return _responses(await continuation(details, request_iterator))


async def _responses(call: Any) -> AsyncIterator[Any]:
    """A call's responses; its failure raised as the domain error."""
    try:
        async for response in call:
            yield response
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


class _DomainErrorCall:
    """A call with a streamed request whose awaited response raises the domain error of a
    failure; otherwise the call itself (so `write` and `done_writing` still work)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
