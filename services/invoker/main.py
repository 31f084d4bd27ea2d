"""Entry point of the invoker process (`easel-invoker`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from functools import partial

from easel.invoker.v1 import (
    image_service_pb2,
    image_service_pb2_grpc,
    invocation_service_pb2,
    invocation_service_pb2_grpc,
    queue_service_pb2,
    queue_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)
from services.common.server import ServiceServer, run_process
from services.invoker.image_servicer import ImageServicer
from services.invoker.images.library import open_image_library
from services.invoker.invocation_servicer import InvocationServicer
from services.invoker.invocations.registry import load_registry
from services.invoker.settings import InvokerSettings

DOMAIN = "easel.invoker.v1"


async def build(server: ServiceServer, settings: InvokerSettings) -> None:
    registry = load_registry(settings.custom_nodes_dir)
    server.add_service(
        invocation_service_pb2,
        invocation_service_pb2_grpc,
        "InvocationService",
        InvocationServicer(registry),
    )
    server.add_service(session_service_pb2, session_service_pb2_grpc, "SessionService")
    server.add_service(queue_service_pb2, queue_service_pb2_grpc, "QueueService")
    images = await asyncio.to_thread(open_image_library, settings.root)
    server.add_service(
        image_service_pb2, image_service_pb2_grpc, "ImageService", ImageServicer(images)
    )

    async def close_images() -> None:
        images.close()

    server.on_shutdown(close_images)


def main(argv: Sequence[str] | None = None) -> None:
    settings = InvokerSettings.load(sys.argv[1:] if argv is None else argv, prog="easel-invoker")
    run_process(
        "invoker", DOMAIN, settings.invoker_address, settings, partial(build, settings=settings)
    )


if __name__ == "__main__":
    main()
