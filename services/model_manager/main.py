"""Entry point of the model manager process (`easel-model-manager`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from easel.model_manager.v1 import (
    model_install_service_pb2,
    model_install_service_pb2_grpc,
    model_record_service_pb2,
    model_record_service_pb2_grpc,
)
from services.common.server import ServiceServer, run_process
from services.common.settings import CommonSettings

DOMAIN = "easel.model_manager.v1"


async def build(server: ServiceServer) -> None:
    server.add_service(
        model_record_service_pb2, model_record_service_pb2_grpc, "ModelRecordService"
    )
    server.add_service(
        model_install_service_pb2, model_install_service_pb2_grpc, "ModelInstallService"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = CommonSettings.load(args, prog="easel-model-manager")
    run_process("model_manager", DOMAIN, settings.model_manager_address, settings, build)


if __name__ == "__main__":
    main()
