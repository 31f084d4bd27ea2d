"""The node contexts of a session's runs: its images, the other services' stubs, progress
and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.errors import NotFoundError
from services.invoker.clients.inference import InferenceClient
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.execution.executor import ContextFactory
from services.invoker.images.library import ImageLibrary
from services.invoker.invocations.base import BaseInvocation
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef
from services.invoker.sessions.manager import GraphJson, NodeReporter


def node_provenance(run_id: str, node: BaseInvocation) -> dict[str, Any]:
    """The `easel_node` chunk of an image saved by the run `run_id` of `node`: the node's
    id, run id, type and every input as the run has it now (direct values, values that came
    over edges, defaults), in JSON form, so references stay names and never pixels or
    tensors."""
    return {
        "id": run_id.split("#", 1)[0],  # node ids cannot hold '#'; run ids add "#<index>"
        "run_id": run_id,
        "type": node.invocation_type,
        "inputs": node.model_dump(mode="json"),
    }


@dataclass(frozen=True)
class NodeImages:
    """The image store as one node run sees it: what it saves carries how it was made."""

    library: ImageLibrary
    session_id: str
    node_id: str
    """The run id."""
    graph: GraphJson
    node: BaseInvocation

    async def load_png(self, image: ImageRef) -> bytes:
        return await self.library.load_png(image.image_name)

    async def exists(self, image: ImageRef) -> bool:
        try:
            await self.library.get(image.image_name)
        except NotFoundError:
            return False
        return True

    async def save_png(
        self, png: bytes, *, is_intermediate: bool = True, metadata: dict[str, Any] | None = None
    ) -> ImageRef:
        record = await self.library.save_generated(
            png,
            session_id=self.session_id,
            node_id=self.node_id,
            graph=self.graph(),
            node=node_provenance(self.node_id, self.node),
            is_intermediate=is_intermediate,
            metadata=metadata,
        )
        return ImageRef(image_name=record.name)


@dataclass(frozen=True)
class ServiceStubs:
    """The clients every node context shares."""

    images: ImageLibrary
    inference: InferenceClient
    models: ModelRecordsClient


def context_factory(
    stubs: ServiceStubs,
    session_id: str,
    graph: GraphJson,
    reporter: Callable[[str], NodeReporter],
) -> ContextFactory:
    """Makes the context of each run of the session's nodes."""

    def make(run_id: str, node: BaseInvocation, cancelled: asyncio.Event) -> InvocationContext:
        images = NodeImages(stubs.images, session_id, run_id, graph, node)
        report = reporter(run_id)
        return InvocationContext(
            session_id,
            run_id,
            images,
            stubs.inference,
            stubs.models,
            report,
            cancelled,
            model_loads=report.model_load,
        )

    return make
