"""Entry point of the invoker process (`easel-invoker`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

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
from services.common.settings import CommonSettings

DOMAIN = "easel.invoker.v1"


async def build(server: ServiceServer) -> None:
    server.add_service(invocation_service_pb2, invocation_service_pb2_grpc, "InvocationService")
    server.add_service(session_service_pb2, session_service_pb2_grpc, "SessionService")
    server.add_service(queue_service_pb2, queue_service_pb2_grpc, "QueueService")
    server.add_service(image_service_pb2, image_service_pb2_grpc, "ImageService")


def main(argv: Sequence[str] | None = None) -> None:
    settings = CommonSettings.load(sys.argv[1:] if argv is None else argv, prog="easel-invoker")
    run_process("invoker", DOMAIN, settings.invoker_address, settings, build)


if __name__ == "__main__":
    main()
