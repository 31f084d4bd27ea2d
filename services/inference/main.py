"""Entry point of the inference process (`easel-inference`).

The only process that imports torch. It starts serving at once (health NOT_SERVING) and
imports torch in a worker thread; it reports SERVING when torch is ready and the model
load service (loader registry, model cache) is built. Until then RPCs that need them are
UNAVAILABLE (STARTING).

Shared parts, for the services built here: `events` (the process's event bus: model
loads and generations publish on it, WatchInferenceEvents subscribes to it),
`model_loads` (load a model by key into the cache, lock it for work), the tensor store
and the generations (the queue GenerationService runs its work through).
"""

from __future__ import annotations

import asyncio
import gc
import os
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
from services.inference.events import InferenceEvents
from services.inference.generation_servicer import GenerationServicer
from services.inference.generations import Generations
from services.inference.model_cache_servicer import ModelCacheServicer
from services.inference.model_loads import ModelLoadService, build_model_loads
from services.inference.model_records_client import ModelRecordsClient
from services.inference.pending import Pending
from services.inference.settings import InferenceSettings
from services.inference.tensor_store_servicer import TensorStoreServicer
from services.inference.tensors.store import TensorStore
from services.inference.torch_runtime import start_torch

DOMAIN = "easel.inference.v1"


async def build(server: ServiceServer, settings: InferenceSettings) -> Step:
    events = InferenceEvents()
    records = ModelRecordsClient(settings)
    model_loads: Pending[ModelLoadService] = Pending("the model cache")
    server.add_service(
        model_cache_service_pb2,
        model_cache_service_pb2_grpc,
        "ModelCacheService",
        ModelCacheServicer(model_loads),
    )
    tensors: Pending[TensorStore] = Pending("the tensor store")
    generations: Pending[Generations] = Pending("the generation queue")
    server.add_service(
        generation_service_pb2,
        generation_service_pb2_grpc,
        "GenerationService",
        GenerationServicer(generations),
    )
    server.add_service(
        tensor_store_service_pb2,
        tensor_store_service_pb2_grpc,
        "TensorStoreService",
        TensorStoreServicer(tensors),
    )
    server.on_shutdown(records.close)

    async def stop_generations() -> None:
        started = generations.peek()
        if started is not None:
            await started.close()

    async def close_tensors() -> None:
        store = tensors.peek()
        if store is not None:
            store.close()

    server.on_stopping(stop_generations)
    server.on_shutdown(close_tensors)

    async def become_ready() -> None:
        runtime = await asyncio.to_thread(start_torch, settings)
        loads = await asyncio.to_thread(build_model_loads, settings, runtime, records, events)
        model_loads.set(loads)
        store = await asyncio.to_thread(TensorStore, settings.root, settings.tensor_store_bytes)
        tensors.set(store)
        queue = Generations(
            loads,
            store,
            events,
            keep_count=settings.generation_keep_count,
            keep_age_s=settings.generation_keep_s,
        )
        queue.start()
        generations.set(queue)
        # torch, diffusers and transformers leave some 400,000 objects that live as long as
        # the process; every full collection walked them (~250 ms, stalling whatever ran:
        # most often a model load, which allocates the most). Frozen, collections skip them.
        gc.freeze()

    return become_ready


def main(argv: Sequence[str] | None = None) -> None:
    # Models load from local files only: no library may reach out to the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = sys.argv[1:] if argv is None else argv
    settings = InferenceSettings.load(args, prog="easel-inference")
    run_process(
        "inference", DOMAIN, settings.inference_address, settings, partial(build, settings=settings)
    )


if __name__ == "__main__":
    main()
