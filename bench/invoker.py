"""The invoker's own cost: scheduling overhead per node, the gap between queued sessions, and
a txt2img session against diffusers called in-process. Everything goes over gRPC to a real
invoker process (node-output cache off, so every node runs), with a real model manager and
inference process for txt2img.

- node_us_N: the wall time of CreateSession, InvokeSession (all) and WaitSession for a chain
  of N `add` nodes, less the same for a 1-node graph, per extra node: (wall_N - wall_1) /
  (N - 1), in µs, the median of RUNS pairs (10 times as many for N = 10, whose difference
  of a millisecond is the easiest to drown in noise) after one warm-up; the two sessions
  of a pair run back to back, so both see the same load of the machine. Target: under
  200 and flat.
- queue_gap_ms: two sessions queued back to back while the queue is paused, then the
  queue resumed (so the second is PENDING when the first ends, however fast the first
  runs); the second's first InvocationStarted less the first's SessionComplete, both by
  the server's clock as WatchSessionEvents reports them. Median of GAP_RUNS pairs.
  Target: under 5.
- txt2img_vs_diffusers: a session of one txt2img node (the tiny sd-1 model of the test
  fixtures, model input left empty: the only installed main model) through the invoker /
  `StableDiffusionPipeline` called here, same model, size, steps, scheduler and seed,
  torch on one thread on both sides. Medians of interleaved runs after one warm-up each.
  Nobody watches these sessions, so their generations make no previews. Target: at most
  1.05. `invoker_previews_ms` on the `invoker_txt2img:` line is the same session with a
  watch that asks for previews (from its creation to its SessionComplete event).
Last line: `invoker: node_us_10=X node_us_100=X node_us_500=X queue_gap_ms=X
txt2img_vs_diffusers=R`.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from bench.inference import (
    CFG,
    PROMPT,
    SEED,
    SIZE,
    STEPS,
    TORCH_THREADS,
    elapsed_s,
    generate_diffusers,
    load_pipeline,
    quiet_libraries,
    register,
)
from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as pb
from tests.model_fixtures import ModelZoo
from tests.processes import client_settings, start_service, suite_env, wait_serving

SIZES = (10, 100, 500)
RUNS = 11
GAP_RUNS = 9
GAP_NODES = 10
TXT2IMG_RUNS = 7
WAIT_S = 300


def node(node_id: str, type_name: str, **inputs: object) -> graph_pb2.Node:
    message = graph_pb2.Node(id=node_id, type=type_name)
    message.inputs.update(inputs)
    return message


def add_chain(length: int) -> graph_pb2.Graph:
    """n0 = 0 + 1, then each node adds 1 to the one before."""
    nodes = [node(f"n{i}", "add", b=1) for i in range(length)]
    edges = [
        graph_pb2.Edge(
            source=graph_pb2.EdgeConnection(node_id=f"n{i - 1}", field="value"),
            destination=graph_pb2.EdgeConnection(node_id=f"n{i}", field="a"),
        )
        for i in range(1, length)
    ]
    return graph_pb2.Graph(nodes=nodes, edges=edges)


def run_session(client: EaselClient, graph: graph_pb2.Graph) -> pb.Session:
    session = client.sessions.CreateSession(pb.CreateSessionRequest(graph=graph)).session
    client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session.id, all=True))
    wait = pb.WaitSessionRequest(session_id=session.id)
    done = client.sessions.WaitSession(wait, timeout=WAIT_S).session
    if done.status != graph_pb2.SESSION_STATUS_COMPLETED:
        raise RuntimeError(f"session ended {graph_pb2.SessionStatus.Name(done.status)}")
    return done


def measure_nodes(client: EaselClient) -> dict[str, float]:
    single = add_chain(1)
    run_session(client, single)
    figures = {}
    for length in SIZES:
        chain = add_chain(length)
        last = run_session(client, chain).state.results[f"n{length - 1}"]
        if last.fields["value"].number_value != length:
            raise RuntimeError(f"the chain of {length} gave {last}")
        pairs = RUNS * max(1, 100 // length)
        extra_s = statistics.median(paired_extra_s(client, chain, single) for _ in range(pairs))
        figures[f"node_us_{length}"] = round(extra_s / (length - 1) * 1e6, 1)
    return figures


def paired_extra_s(client: EaselClient, graph: graph_pb2.Graph, single: graph_pb2.Graph) -> float:
    """How much longer a session of `graph` takes than one of `single`, run right after."""
    return elapsed_s(lambda: run_session(client, graph)) - elapsed_s(
        lambda: run_session(client, single)
    )


def queue_gap_ms(client: EaselClient) -> float:
    """Median ms between one session's end and the next queued session's first node."""
    gaps = []
    for _ in range(GAP_RUNS):
        create = pb.CreateSessionRequest(graph=add_chain(GAP_NODES))
        first, second = (client.sessions.CreateSession(create).session.id for _ in range(2))
        stream = client.sessions.WatchSessionEvents(
            pb.WatchSessionEventsRequest(session_ids=[first, second])
        )
        try:
            next(stream), next(stream)  # both snapshots: the watch is live
            client.queue.PauseQueue(queue_pb.PauseQueueRequest())
            try:
                for session_id in (first, second):
                    invoke = pb.InvokeSessionRequest(session_id=session_id, all=True)
                    client.sessions.InvokeSession(invoke)
            finally:
                client.queue.ResumeQueue(queue_pb.ResumeQueueRequest())
            ended = started = None
            for response in stream:
                event = response.event
                kind = event.WhichOneof("payload")
                if kind in ("session_cancelled", "session_error", "invocation_error"):
                    raise RuntimeError(f"session {event.session_id}: {kind}")
                if event.session_id == first and kind == "session_complete":
                    ended = event.time.ToNanoseconds()
                elif event.session_id == second and kind == "invocation_started":
                    started = event.time.ToNanoseconds()
                    break
        finally:
            stream.cancel()
        if ended is None or started is None:
            raise RuntimeError("the watch ended before both sessions ran")
        gaps.append((started - ended) / 1e6)
        client.sessions.WaitSession(pb.WaitSessionRequest(session_id=second), timeout=WAIT_S)
    return round(statistics.median(gaps), 3)


def txt2img_graph() -> graph_pb2.Graph:
    return graph_pb2.Graph(
        nodes=[
            node(
                "t2i",
                "txt2img",
                prompt=PROMPT,
                width=SIZE,
                height=SIZE,
                steps=STEPS,
                cfg_scale=CFG,
                scheduler="euler",
                seed=SEED,
            )
        ]
    )


def run_watched(client: EaselClient, graph: graph_pb2.Graph) -> None:
    """A session run under a watch that asks for previews, until its SessionComplete."""
    session = client.sessions.CreateSession(pb.CreateSessionRequest(graph=graph)).session
    watch = pb.WatchSessionEventsRequest(session_ids=[session.id], include_previews=True)
    stream = client.sessions.WatchSessionEvents(watch, timeout=WAIT_S)
    previews = 0
    try:
        next(stream)  # the snapshot: the watch is live before the run starts
        invoke = pb.InvokeSessionRequest(session_id=session.id, all=True)
        client.sessions.InvokeSession(invoke)
        for response in stream:
            event = response.event
            kind = event.WhichOneof("payload")
            previews += event.invocation_progress.HasField("preview")
            if kind == "session_complete":
                break
            if kind in ("session_cancelled", "session_error", "invocation_error"):
                raise RuntimeError(f"session {session.id}: {kind}")
    finally:
        stream.cancel()
    if not previews:
        raise RuntimeError("a watch that asked for previews got none")


def measure_txt2img(client: EaselClient, folder: Path) -> dict[str, float]:
    pipe = load_pipeline(folder)
    graph = txt2img_graph()
    run_session(client, graph)
    run_watched(client, graph)
    generate_diffusers(pipe)
    invoker_s, previews_s, diffusers_s = [], [], []
    for _ in range(TXT2IMG_RUNS):
        invoker_s.append(elapsed_s(lambda: run_session(client, graph)))
        previews_s.append(elapsed_s(lambda: run_watched(client, graph)))
        diffusers_s.append(elapsed_s(lambda: generate_diffusers(pipe)))
    invoker_ms = statistics.median(invoker_s) * 1000
    diffusers_ms = statistics.median(diffusers_s) * 1000
    return {
        "invoker_ms": round(invoker_ms, 1),
        "invoker_previews_ms": round(statistics.median(previews_s) * 1000, 1),
        "diffusers_ms": round(diffusers_ms, 1),
        "txt2img_vs_diffusers": round(invoker_ms / diffusers_ms, 3),
    }


def main() -> None:
    torch.set_num_threads(TORCH_THREADS)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        folder = ModelZoo(root / "zoo").sd1_diffusers
        env = suite_env(root, EASEL_TORCH_THREADS=str(TORCH_THREADS), EASEL_NODE_CACHE_SIZE="0")
        started = []
        try:
            for name in ("model_manager", "inference", "invoker"):
                started.append(start_service(name, env, root))
                wait_serving(started[-1])
            with EaselClient(client_settings(env)) as client:
                register(client, folder)
                nodes = measure_nodes(client)
                gap_ms = queue_gap_ms(client)
                txt2img = measure_txt2img(client, folder)
        finally:
            for service in reversed(started):
                service.stop()
    print("invoker_txt2img: " + " ".join(f"{k}={v}" for k, v in txt2img.items()))
    print(
        "invoker: "
        + " ".join(f"{k}={v}" for k, v in nodes.items())
        + f" queue_gap_ms={gap_ms} txt2img_vs_diffusers={txt2img['txt2img_vs_diffusers']}"
    )


if __name__ == "__main__":
    main()
