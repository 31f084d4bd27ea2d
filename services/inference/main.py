"""Entry point of the inference process (`easel-inference`).

The only process that imports torch. It starts serving at once (health NOT_SERVING) and
imports torch in a worker thread; it reports SERVING when torch is ready.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from functools import partial

from easel.inference.v1 import (
    generation_service_pb2,
    generation_service_pb2_grpc,
    model_cache_service_pb2,
    model_cache_service_pb2_grpc,
    tensor_store_service_pb2,
    tensor_store_service_pb2_grpc,
)
from services.common.server import ServiceServer, Step, run_process
from services.inference.settings import InferenceSettings
from services.inference.torch_runtime import start_torch

DOMAIN = "easel.inference.v1"


async def build(server: ServiceServer, settings: InferenceSettings) -> Step:
    server.add_service(model_cache_service_pb2, model_cache_service_pb2_grpc, "ModelCacheService")
    server.add_service(generation_service_pb2, generation_service_pb2_grpc, "GenerationService")
    server.add_service(
        tensor_store_service_pb2, tensor_store_service_pb2_grpc, "TensorStoreService"
    )

    async def become_ready() -> None:
        await asyncio.to_thread(start_torch, settings)

    return become_ready


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = InferenceSettings.load(args, prog="easel-inference")
    run_process(
        "inference", DOMAIN, settings.inference_address, settings, partial(build, settings=settings)
    )


if __name__ == "__main__":
    main()
