"""What a running node may use, and nothing else.

The executor builds one context per node run. Images come through the `ImageAccess`
interface, which the invoker's image store implements; the inference and model manager
services through the invoker's domain-level clients (no wire types reach a node).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.common.errors import OperationCancelledError
from services.common.model_taxonomy import ModelType
from services.invoker.clients.inference import InferenceClient, ModelLoad, Origin, Preview
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.invocations.fields import ImageRef, ModelRef


class ImageAccess(Protocol):
    """The images a node reads and writes (PNG bytes; records and files stay in the store)."""

    async def load_png(self, image: ImageRef) -> bytes:
        """The PNG bytes of a stored image; NotFoundError for an unknown name."""
        ...

    async def exists(self, image: ImageRef) -> bool:
        """Whether the image is still stored (a cached output may name a deleted one)."""
        ...

    async def save_png(
        self, png: bytes, *, is_intermediate: bool = True, metadata: dict[str, Any] | None = None
    ) -> ImageRef:
        """Store a PNG made by the running node, with how it was made, and name it.

        An intermediate image is a step of a graph, hidden from galleries; a node that
        saves for the user passes False.
        """
        ...


class ProgressSink(Protocol):
    """Where a node reports how far it has come, with a preview of its work when it has
    one (relayed as session events)."""

    def __call__(
        self,
        step: int,
        total: int,
        message: str = "",
        preview: Preview | None = None,
        time: datetime | None = None,
    ) -> None:
        """`time`: when the step ended, for a step relayed from the inference service."""
        ...


ModelLoadSink = Callable[[ModelLoad], None]
"""Where the model loads of a node's generations go (relayed as session events)."""


@dataclass
class InvocationContext:
    """One node run: who it is, the services it may use, progress and cancellation."""

    session_id: str
    node_id: str
    images: ImageAccess
    inference: InferenceClient
    models: ModelRecordsClient
    progress: ProgressSink
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the run is cancelled; long nodes check it (or pass it on) between steps."""
    model_loads: ModelLoadSink | None = None

    def raise_if_cancelled(self) -> None:
        """Stop a node at a safe point once its run has been cancelled."""
        if self.cancelled.is_set():
            raise OperationCancelledError(
                f"node {self.node_id} was cancelled", metadata={"node_id": self.node_id}
            )

    def origin(self) -> Origin:
        """How this node's generations are tagged, report progress and get cancelled."""
        return Origin(
            session_id=self.session_id,
            invocation_id=self.node_id,
            on_progress=lambda step, total, preview, time: self.progress(
                step, total, preview=preview, time=time
            ),
            cancelled=self.cancelled,
            on_model_load=self.model_loads,
            previews=True,
        )

    async def model_key(self, field: str, given: ModelRef | None, model_type: ModelType) -> str:
        """The key of the model input `field`: the one given, else its type's default."""
        if given is not None:
            return given.key
        return await self.models.default_key(field, model_type)
