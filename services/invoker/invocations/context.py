"""What a running node may use, and nothing else.

The executor builds one context per node run. Images come through the `ImageAccess`
interface, which the invoker's image store implements; the inference and model manager
services through their asyncio gRPC stubs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from easel.inference.v1 import generation_service_pb2_grpc, tensor_store_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2_grpc
from services.common.errors import OperationCancelledError
from services.invoker.invocations.fields import ImageRef


class ImageAccess(Protocol):
    """The images a node reads and writes (PNG bytes; records and files stay in the store)."""

    async def load_png(self, image: ImageRef) -> bytes:
        """The PNG bytes of a stored image; NotFoundError for an unknown name."""
        ...

    async def save_png(self, png: bytes) -> ImageRef:
        """Store a PNG made by the running node, with how it was made, and name it."""
        ...


class ProgressSink(Protocol):
    """Where a node reports how far it has come (relayed as session events)."""

    def __call__(self, step: int, total: int, message: str = "") -> None: ...


@dataclass(frozen=True)
class InferenceClients:
    """The inference service's APIs a node may call."""

    generations: generation_service_pb2_grpc.GenerationServiceStub
    tensors: tensor_store_service_pb2_grpc.TensorStoreServiceStub


@dataclass
class InvocationContext:
    """One node run: who it is, the services it may use, progress and cancellation."""

    session_id: str
    node_id: str
    images: ImageAccess
    inference: InferenceClients
    models: model_record_service_pb2_grpc.ModelRecordServiceStub
    progress: ProgressSink
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the run is cancelled; long nodes check it (or pass it on) between steps."""

    def raise_if_cancelled(self) -> None:
        """Stop a node at a safe point once its run has been cancelled."""
        if self.cancelled.is_set():
            raise OperationCancelledError(
                f"node {self.node_id} was cancelled", metadata={"node_id": self.node_id}
            )
