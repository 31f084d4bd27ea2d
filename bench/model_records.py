"""What gRPC costs on top of the record store: 10,000 records, added, fetched and searched
through a real model_manager process and through the same SQLite store called directly.

Each figure is the median of per-call times in milliseconds. Searches are by name (10 hits
each) and by two tags (about 14 hits each), the two lookups a client makes most. The
baseline line adds the direct store's searches and a health check through the same server
(the floor any unary call pays: loopback, HTTP/2, the server's interceptor).
Last line: `model_records: add_grpc_ms=X add_store_ms=X get_grpc_ms=X get_store_ms=X
search_name_ms=X search_tag_ms=X grpc_vs_store_get=R`.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common.settings import CommonSettings
from services.model_manager.configs import MainCheckpointConfig
from services.model_manager.record_store import ModelQuery, open_record_store
from services.model_manager.taxonomy import BaseModelType
from tests.processes import start_service, suite_env, wait_serving

RECORDS = 10_000
LOOKUPS = 500


def fields(index: int) -> dict:
    return {
        "name": f"model-{index % 1000}",
        "path": f"sd-1/main/model-{index}.safetensors",
        "tags": ["sd", f"group-{index % 100}", f"style-{index % 7}"],
    }


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def median(samples: list[float]) -> float:
    return round(statistics.median(samples), 4)


def main() -> None:
    rng = random.Random(4)
    names = [f"model-{rng.randrange(1000)}" for _ in range(LOOKUPS)]
    tag_pairs = [(f"group-{rng.randrange(100)}", f"style-{rng.randrange(7)}") for _ in names]
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        env = suite_env(root)
        service = start_service("model_manager", env, root)
        store = open_record_store(root / "direct" / "models.db")
        try:
            wait_serving(service)
            settings = CommonSettings(root=root, model_manager_address=service.address)
            with EaselClient(settings) as client:
                records = client.model_records

                def add_grpc(index: int) -> Callable[[], object]:
                    model = m.ModelConfig(
                        base=m.BASE_MODEL_TYPE_SD_1,
                        type=m.MODEL_TYPE_MAIN,
                        format=m.MODEL_FORMAT_CHECKPOINT,
                        **fields(index),
                    )
                    return lambda: records.CreateModel(pb.CreateModelRequest(model=model))

                def add_store(index: int) -> Callable[[], object]:
                    config = MainCheckpointConfig(base=BaseModelType.SD_1, **fields(index))
                    return lambda: store.add(config)

                add_grpc_ms = [timed(add_grpc(index)) for index in range(RECORDS)]
                add_store_ms = [timed(add_store(index)) for index in range(RECORDS)]

                keys = [model.key for model in _all(records)]
                picks = [rng.choice(keys) for _ in range(LOOKUPS)]
                direct_keys = [config.key for config in store.search()]
                direct_picks = [rng.choice(direct_keys) for _ in range(LOOKUPS)]

                get_grpc = [
                    timed(lambda k=k: records.GetModel(pb.GetModelRequest(key=k))) for k in picks
                ]
                get_store = [timed(lambda k=k: store.get(k)) for k in direct_picks]
                by_name_grpc = [
                    timed(lambda n=n: records.ListModels(pb.ListModelsRequest(name=n)))
                    for n in names
                ]
                by_name_store = [
                    timed(lambda n=n: store.search_page(ModelQuery(name=n), 0, 100)) for n in names
                ]
                by_tag_grpc = [
                    timed(lambda t=t: records.ListModels(pb.ListModelsRequest(tags=t)))
                    for t in tag_pairs
                ]
                by_tag_store = [
                    timed(lambda t=t: store.search_page(ModelQuery(tags=t), 0, 100))
                    for t in tag_pairs
                ]
            with grpc.insecure_channel(service.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                check = health_pb2.HealthCheckRequest()
                floor = [timed(lambda: health.Check(check)) for _ in range(LOOKUPS)]
        finally:
            store.close()
            service.stop()
    print(
        f"baseline: search_name_store_ms={median(by_name_store)} "
        f"search_tag_store_ms={median(by_tag_store)} grpc_health_check_ms={median(floor)}"
    )
    print(
        f"model_records: add_grpc_ms={median(add_grpc_ms)} add_store_ms={median(add_store_ms)} "
        f"get_grpc_ms={median(get_grpc)} get_store_ms={median(get_store)} "
        f"search_name_ms={median(by_name_grpc)} search_tag_ms={median(by_tag_grpc)} "
        f"grpc_vs_store_get={round(median(get_grpc) / median(get_store), 2)}"
    )


def _all(records) -> list[m.ModelConfig]:
    """Every record, page by page at the largest page size."""
    models, token = [], ""
    while True:
        page = records.ListModels(pb.ListModelsRequest(page_size=1000, page_token=token))
        models += page.models
        token = page.next_page_token
        if not token:
            return models


if __name__ == "__main__":
    main()
