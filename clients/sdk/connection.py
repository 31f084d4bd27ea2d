"""How the SDK's channels are set up, for the sync and asyncio clients alike: the retry
policy, the default deadline, and the stubs of the four services."""

from __future__ import annotations

import json
from typing import Any

from clients.sdk.settings import ClientSettings
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
from services.common.call_options import message_size_options

RECONNECT_BACKOFF_MS = (100, 5000)
"""First and longest wait before reconnecting to a service that refused or dropped the
connection. gRPC's own (1 s, growing to 2 min) would make every retry of a call to a
restarting service fail at once, and a long-lived client notice it is back minutes late."""


def retry_service_config(attempts: int) -> dict[str, Any]:
    """A gRPC service config that retries every method of the channel on UNAVAILABLE."""
    if attempts < 2:
        return {}
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return {"methodConfig": [{"name": [{}], "retryPolicy": policy}]}


def channel_options(settings: ClientSettings) -> list[tuple[str, Any]]:
    """Options of every SDK channel: message limits, the retry policy, quick reconnects."""
    first, longest = RECONNECT_BACKOFF_MS
    return [
        *message_size_options(settings),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(retry_service_config(settings.retry_attempts))),
        ("grpc.initial_reconnect_backoff_ms", first),
        ("grpc.max_reconnect_backoff_ms", longest),
    ]


def default_timeout(method: str | bytes, settings: ClientSettings) -> float | None:
    """The deadline a unary call without its own timeout gets: none for `Wait…` calls,
    whose deadline is by convention how long the caller will wait."""
    name = method.decode() if isinstance(method, bytes) else method
    if name.rsplit("/", 1)[-1].startswith("Wait"):
        return None
    return settings.call_timeout_s


class ServiceStubs:
    """The generated stubs of the four services, one channel per service.

    The same attributes on the sync and the asyncio client; on the asyncio one each
    method returns an awaitable call (unary) or an async iterator (streams).
    """

    def __init__(self, downloader: Any, model_manager: Any, inference: Any, invoker: Any):
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
