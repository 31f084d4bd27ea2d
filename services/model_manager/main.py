"""Entry point of the model manager process (`easel-model-manager`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial

from easel.model_manager.v1 import (
    model_install_service_pb2,
    model_install_service_pb2_grpc,
    model_record_service_pb2,
    model_record_service_pb2_grpc,
)
from services.common.server import ServiceServer, run_process
from services.model_manager.record_servicer import ModelRecordServicer
from services.model_manager.record_store import open_record_store
from services.model_manager.settings import ModelManagerSettings

DOMAIN = "easel.model_manager.v1"


async def build(server: ServiceServer, settings: ModelManagerSettings) -> None:
    store = open_record_store(settings.model_config_db)
    server.add_service(
        model_record_service_pb2,
        model_record_service_pb2_grpc,
        "ModelRecordService",
        ModelRecordServicer(store, settings.models_dir),
    )
    server.add_service(
        model_install_service_pb2, model_install_service_pb2_grpc, "ModelInstallService"
    )

    async def close_store() -> None:
        store.close()

    server.on_shutdown(close_store)


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = ModelManagerSettings.load(args, prog="easel-model-manager")
    run_process(
        "model_manager",
        DOMAIN,
        settings.model_manager_address,
        settings,
        partial(build, settings=settings),
    )


if __name__ == "__main__":
    main()
