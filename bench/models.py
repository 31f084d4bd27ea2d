"""The model manager's costs: probing, hashing, and records through gRPC.

- Probing reads a safetensors header only, so probing a 2 GiB (sparse) checkpoint must
  cost what probing a 1 MiB one does (`probe_growth` near 1).
- Hashing a 512 MiB file is compared, in the same run and from the same warm page cache,
  with the way InvokeAI hashes a model: BLAKE3 on one thread over 1 MiB reads
  (`hash_vs_invokeai` = its time / ours; the target is at least 1.5).
- 10,000 records are added, fetched and searched (by name, by two tags) through a real
  model_manager process and through the same SQLite store called directly; each figure
  is the median per-call time in ms, and a health check through the same server is the
  floor any unary call pays.
Last line: `models: probe_2g_ms=X probe_growth=R get_grpc_ms=X search_tag_ms=X
hash_vs_invokeai=R`.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from blake3 import blake3
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common.model_taxonomy import BaseModelType
from services.common.settings import CommonSettings
from services.model_manager.probe.hashing import hash_model
from services.model_manager.probe.model_probe import probe_model
from services.model_manager.records.configs import MainCheckpointConfig
from services.model_manager.records.open_store import open_record_store
from services.model_manager.records.record_store import ModelQuery
from tests.model_fixtures import write_sparse_checkpoint
from tests.processes import start_service, suite_env, wait_serving

PROBES = 200
HASH_RUNS = 3
HASH_FILE_MIB = 512
CHUNK = 16 * 1024**2
INVOKEAI_READ = 1024**2


def median_s(action: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def hash_as_invokeai(path: Path) -> str:
    """BLAKE3 as InvokeAI's model hasher runs it: one thread, the file read 1 MiB at a time."""
    hasher = blake3()
    with path.open("rb") as file:
        while chunk := file.read(INVOKEAI_READ):
            hasher.update(chunk)
    return hasher.hexdigest()


def measure_probe() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        small = write_sparse_checkpoint(root / "small.safetensors", 1024**2)
        large = write_sparse_checkpoint(root / "large.safetensors", 2 * 1024**3)
        probe_1m = median_s(lambda: probe_model(small), PROBES) * 1000
        probe_2g = median_s(lambda: probe_model(large), PROBES) * 1000

        data = root / "weights.safetensors"
        block = random.Random(0).randbytes(CHUNK)
        with data.open("wb") as file:
            for _ in range(HASH_FILE_MIB * 1024**2 // CHUNK):
                file.write(block)
        hash_as_invokeai(data)  # warm the page cache
        invokeai_s = median_s(lambda: hash_as_invokeai(data), HASH_RUNS)
        hash_s = median_s(lambda: hash_model(data), HASH_RUNS)

    invokeai_mib_s = HASH_FILE_MIB / invokeai_s
    hash_mib_s = HASH_FILE_MIB / hash_s
    return {
        "probe_1m_ms": round(probe_1m, 3),
        "probe_2g_ms": round(probe_2g, 3),
        "probe_growth": round(probe_2g / probe_1m, 2),
        "hash_mib_s": round(hash_mib_s),
        "invokeai_hash_mib_s": round(invokeai_mib_s),
        "hash_vs_invokeai": round(hash_mib_s / invokeai_mib_s, 2),
    }


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


def measure_records() -> dict[str, float]:
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
    return {
        "add_grpc_ms": median(add_grpc_ms),
        "add_store_ms": median(add_store_ms),
        "get_grpc_ms": median(get_grpc),
        "get_store_ms": median(get_store),
        "search_name_ms": median(by_name_grpc),
        "search_name_store_ms": median(by_name_store),
        "search_tag_ms": median(by_tag_grpc),
        "search_tag_store_ms": median(by_tag_store),
        "grpc_health_check_ms": median(floor),
    }


def _all(records) -> list[m.ModelConfig]:
    """Every record, page by page at the largest page size."""
    models, token = [], ""
    while True:
        page = records.ListModels(pb.ListModelsRequest(page_size=1000, page_token=token))
        models += page.models
        token = page.next_page_token
        if not token:
            return models


def main() -> None:
    probe = measure_probe()
    records = measure_records()
    print("model_probe: " + " ".join(f"{key}={value}" for key, value in probe.items()))
    print("model_records: " + " ".join(f"{key}={value}" for key, value in records.items()))
    print(
        f"models: probe_2g_ms={probe['probe_2g_ms']} probe_growth={probe['probe_growth']} "
        f"get_grpc_ms={records['get_grpc_ms']} search_tag_ms={records['search_tag_ms']} "
        f"hash_vs_invokeai={probe['hash_vs_invokeai']}"
    )


if __name__ == "__main__":
    main()
