"""One invoker over two inference worker processes (a comma list in `inference_address`)
with the tiny models: whole generations spread over both by gRPC's round robin, a
building-block graph's generations all in the worker that holds its tensors, a worker
killed mid-denoise failing only its node (INFERENCE_WORKER_LOST) while later sessions
complete on the other; a RunGeneration stream holding every event of its generation; and
how the invoker reads `inference_address`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from clients.sdk import EaselClient
from clients.sdk.graphs import edge, graph, node
from easel.inference.v1 import generation_service_pb2 as gen_pb
from easel.inference.v1 import generation_service_pb2_grpc
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import session_service_pb2 as pb
from services.invoker.clients.inference_workers import (
    Worker,
    balanced_target,
    check_inference_address,
    resolve_workers,
)
from services.invoker.settings import InvokerSettings
from tests.model_fixtures import ModelZoo
from tests.model_records import register_sd1
from tests.processes import ServiceProcess
from tests.running_suite import running_suite

SIZE = 64
WAIT_S = 120
TERMINAL = {"session_complete", "session_cancelled", "session_error"}


@dataclass
class Suite:
    client: EaselClient
    workers: list[ServiceProcess]
    sd1: str


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo) -> Iterator[Suite]:
    folder = tmp_path_factory.mktemp("inference_workers")
    names = ["model_manager", "inference", "invoker"]
    with (
        running_suite(folder, names, inference_workers=2) as running,
        EaselClient(running.settings) as client,
    ):
        yield Suite(client, running.started("inference"), register_sd1(client, model_zoo))


def txt2img(model_key: str, steps: int = 2, seed: int = 5) -> graph_pb2.Graph:
    settings = dict(prompt="a cat", steps=steps, seed=seed, width=SIZE, height=SIZE)
    return graph([node("t2i", "txt2img", model={"key": model_key}, **settings)])


def run(client: EaselClient, session_graph, on_event=None) -> tuple[str, list[pb.SessionEvent]]:
    """Run a new session of `session_graph` to its end: its id and its events."""
    events = []
    for event in client.run_graph(session_graph, timeout=WAIT_S):
        events.append(event)
        if on_event is not None:
            on_event(event)
    return events[0].session_id, events


def generations(worker: ServiceProcess, session_id: str = "") -> list[gen_pb.Generation]:
    with worker.sync_channel() as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        request = gen_pb.ListGenerationsRequest(session_id=session_id, page_size=1000)
        return list(stub.ListGenerations(request).generations)


def test_whole_generations_are_spread_over_both_workers(suite):
    sessions = []
    for _ in range(4):
        session_id, events = run(suite.client, txt2img(suite.sd1))
        assert events[-1].HasField("session_complete")
        sessions.append(session_id)
    per_worker = [
        {g.session_id for g in generations(worker) if g.session_id in sessions}
        for worker in suite.workers
    ]
    assert all(per_worker), per_worker
    assert per_worker[0] | per_worker[1] == set(sessions)
    assert not per_worker[0] & per_worker[1]


def test_a_building_block_graph_runs_in_one_worker(suite):
    model = {"key": suite.sd1}
    blocks = graph(
        [
            node("positive", "prompt", prompt="a cat", model=model),
            node("negative", "prompt", prompt="ugly", model=model),
            node("noise", "noise", seed=7, width=SIZE, height=SIZE),
            node("denoise", "denoise_latents", model=model, steps=2),
            node("decode", "l2i", model=model),
        ],
        [
            edge("positive.conditioning", "denoise.positive_conditioning"),
            edge("negative.conditioning", "denoise.negative_conditioning"),
            edge("noise.noise", "denoise.noise"),
            edge("denoise.latents", "decode.latents"),
        ],
    )
    used = set()
    for _ in range(3):
        session_id, events = run(suite.client, blocks)
        assert events[-1].HasField("session_complete")
        counts = [len(generations(worker, session_id)) for worker in suite.workers]
        assert sorted(counts) == [0, 5], counts
        used.add(counts.index(5))
    # Each session's first block went to the next worker in turn.
    assert used == {0, 1}


def test_a_run_generation_stream_holds_every_event_of_its_generation(suite):
    """Events a generation makes as soon as it is queued (its start, its model loads)
    reach the caller: the stream follows the generation from before it exists."""
    operation = gen_pb.TextToImage(
        model_key=suite.sd1, positive_prompt="a cat", width=SIZE, height=SIZE, steps=3, seed=1
    )
    request = gen_pb.RunGenerationRequest(
        generation=gen_pb.CreateGenerationRequest(text_to_image=operation, session_id="s")
    )
    for _ in range(3):
        with suite.workers[0].sync_channel() as channel:
            stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
            events = [response.event for response in stub.RunGeneration(iter([request]))]
        kinds = [event.WhichOneof("payload") for event in events]
        assert kinds[0] == "generation_snapshot"
        assert events[0].generation_snapshot.generation.status == gen_pb.GENERATION_STATUS_QUEUED
        assert kinds[1] == "generation_started"
        assert kinds[-2:] == ["generation_completed", "generation_snapshot"]
        last = events[-1].generation_snapshot.generation
        assert last.status == gen_pb.GENERATION_STATUS_COMPLETED
        assert last.result.image.png.startswith(b"\x89PNG")
        steps = [e.generation_progress.step for e in events if e.HasField("generation_progress")]
        assert steps == [1, 2, 3]
        assert "model_load_started" in kinds
        assert "model_load_completed" in kinds
        times = [event.time.ToNanoseconds() for event in events]
        assert times == sorted(times)
        assert {event.generation_id for event in events} == {last.id}


def test_a_run_generation_call_without_its_generation_is_refused(suite):
    request = gen_pb.RunGenerationRequest(cancel=gen_pb.RunGenerationCancel())
    with suite.workers[0].sync_channel() as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.RunGeneration(iter([request])))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_worker_killed_mid_denoise_fails_only_its_node(suite):
    """Runs last in this module: it leaves one worker."""
    client = suite.client
    slow = client.sessions.CreateSession(pb.CreateSessionRequest(graph=txt2img(suite.sd1, 1000)))
    slow_id = slow.session.id
    behind = client.sessions.CreateSession(pb.CreateSessionRequest(graph=txt2img(suite.sd1)))
    killed: list[ServiceProcess] = []

    def kill_its_worker(event: pb.SessionEvent) -> None:
        if killed or not event.HasField("invocation_progress"):
            return
        running = [w for w in suite.workers if generations(w, slow_id)]
        assert len(running) == 1
        running[0].process.kill()
        running[0].process.wait()
        killed.append(running[0])
        # Queued behind the slow one while its worker dies.
        client.sessions.InvokeSession(
            pb.InvokeSessionRequest(session_id=behind.session.id, all=True)
        )

    events = []
    for event in client.run_session(slow_id, timeout=WAIT_S):
        events.append(event)
        kill_its_worker(event)
    assert killed
    errors = [event.invocation_error for event in events if event.HasField("invocation_error")]
    assert [error.error_type for error in errors] == ["INFERENCE_WORKER_LOST"]
    assert errors[0].error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert events[-1].HasField("session_error")

    survivor = next(worker for worker in suite.workers if worker is not killed[0])
    done = client.sessions.WaitSession(
        pb.WaitSessionRequest(session_id=behind.session.id), timeout=WAIT_S
    ).session
    assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
    later = [run(client, txt2img(suite.sd1)) for _ in range(3)]
    assert all(events[-1].HasField("session_complete") for _, events in later)
    survivor_sessions = {g.session_id for g in generations(survivor)}
    assert {behind.session.id, *(session_id for session_id, _ in later)} <= survivor_sessions


def test_the_invoker_reads_a_list_of_addresses_or_one_name():
    listed = "127.0.0.1:50054, 127.0.0.1:50064"
    assert InvokerSettings(inference_address=listed).inference_address == listed
    assert balanced_target(listed) == "ipv4:127.0.0.1:50054,127.0.0.1:50064"
    assert balanced_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    assert balanced_target("dns:///inference:50054") == "dns:///inference:50054"
    for bad in ("inference-1:50054,inference-2:50054", "127.0.0.1:1,[::1]:2"):
        with pytest.raises(ValueError, match="inference_address"):
            InvokerSettings(inference_address=bad)
    assert check_inference_address("127.0.0.1:50054") == "127.0.0.1:50054"


async def test_workers_are_the_list_entries_or_what_the_name_resolves_to():
    listed = await resolve_workers("127.0.0.1:1,127.0.0.1:2")
    assert listed == [Worker("127.0.0.1:1"), Worker("127.0.0.1:2")]
    assert await resolve_workers("ipv4:127.0.0.1:1,127.0.0.1:2") == listed
    assert await resolve_workers("127.0.0.1:1") == [Worker("127.0.0.1:1")]
    resolved = await resolve_workers("dns:///localhost:7")
    assert Worker("127.0.0.1:7", "localhost") in resolved
    assert await asyncio.wait_for(resolve_workers("dns:///no-such-host.invalid:7"), 30) == []
