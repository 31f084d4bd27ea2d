"""The invoker's inference client against a stand-in GenerationService: a generation asks
for previews only when its origin takes them and someone wants them for its session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio

from easel.inference.v1 import generation_service_pb2 as pb
from easel.inference.v1 import generation_service_pb2_grpc
from services.common.settings import CommonSettings
from services.invoker.clients.inference import InferenceClient, Origin, Sampling


class Generations(generation_service_pb2_grpc.GenerationServiceServicer):
    """Completes every generation at once with a 1x1 image; keeps each request."""

    def __init__(self) -> None:
        self.requests: list[pb.CreateGenerationRequest] = []

    async def RunGeneration(self, request_iterator, context):
        request = await anext(aiter(request_iterator))
        self.requests.append(request.generation)
        generation_id = str(len(self.requests))
        queued = pb.Generation(id=generation_id, status=pb.GENERATION_STATUS_QUEUED)
        yield _snapshot(queued)
        image = pb.GeneratedImage(png=b"png", width=1, height=1)
        done = pb.Generation(
            id=generation_id,
            status=pb.GENERATION_STATUS_COMPLETED,
            result=pb.GenerationResult(image=image),
        )
        yield _snapshot(done)


def _snapshot(generation: pb.Generation) -> pb.RunGenerationResponse:
    snapshot = pb.GenerationSnapshot(generation=generation)
    return pb.RunGenerationResponse(event=pb.InferenceEvent(generation_snapshot=snapshot))


@pytest.fixture
async def service() -> AsyncIterator[tuple[Generations, str]]:
    generations = Generations()
    server = aio.server()
    generation_service_pb2_grpc.add_GenerationServiceServicer_to_server(generations, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield generations, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_previews_are_asked_for_only_while_someone_wants_them(service, tmp_path: Path):
    generations, address = service
    watched = {"watched"}
    settings = CommonSettings(root=tmp_path, inference_address=address)
    client = InferenceClient(settings, previews_wanted=lambda session_id: session_id in watched)
    progress = lambda step, total, preview, time: None  # noqa: E731
    try:
        for session_id, previews in (("watched", True), ("other", True), ("watched", False)):
            origin = Origin(session_id=session_id, on_progress=progress, previews=previews)
            generate = client.text_to_image("m", "cat", "", 8, 8, Sampling(), 1, origin=origin)
            await asyncio.wait_for(generate, timeout=10)
    finally:
        await client.close()
    assert [request.preview for request in generations.requests] == [
        pb.PREVIEW_MODE_EVERY_STEP,
        pb.PREVIEW_MODE_NONE,
        pb.PREVIEW_MODE_NONE,
    ]
