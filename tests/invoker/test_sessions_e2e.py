"""A session graph through the real invoker, inference and model manager processes with
the tiny models (64x64, 2 steps): txt2img → img2img → upscale → save_image over gRPC, the
saved PNG in ImageService saying how it was made, the session's events in order with the
inference service's progress, previews and model loads relayed; the `easel_node` chunk
holding inputs that came over edges, per run of a fan-out; a graph of the latents building
blocks giving the pixels of a txt2img session; and a session cancelled mid-denoise ending
CANCELLED with its generation cancelled too."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from clients.sdk import EaselClient
from clients.sdk.graphs import edge, node
from easel.inference.v1 import generation_service_pb2 as gen_pb
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.invoker.v1 import session_service_pb2 as pb
from tests.invoker.test_sessions_service import create
from tests.model_fixtures import ModelZoo
from tests.model_records import register_sd1, register_upscaler
from tests.running_suite import running_suite

SIZE = 64
STEPS = 2
WAIT_S = 120


@dataclass
class Suite:
    client: EaselClient
    sd1: str
    x4: str


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo) -> Iterator[Suite]:
    folder = tmp_path_factory.mktemp("sessions_e2e")
    with (
        running_suite(folder, ["model_manager", "inference", "invoker"]) as running,
        EaselClient(running.settings) as client,
    ):
        sd1 = register_sd1(client, model_zoo)
        x4 = register_upscaler(client, "x4", model_zoo.esrgan_x4, 4)
        yield Suite(client, sd1, x4)


def denoising(**inputs: Any) -> dict[str, Any]:
    return {"prompt": "a cat", "steps": STEPS, "seed": 5, **inputs}


def watch_run(client: EaselClient, session_id: str, on_event=None) -> list[pb.SessionEvent]:
    """Every event of one run of the session, from its snapshot to its terminal event;
    the run is invoked once the watch has its snapshot, so no event is missed."""
    request = pb.WatchSessionEventsRequest(session_ids=[session_id], include_previews=True)
    stream = client.sessions.WatchSessionEvents(request, timeout=WAIT_S)
    events = []
    try:
        for response in stream:
            event = response.event
            events.append(event)
            if event.HasField("snapshot"):
                invoke = pb.InvokeSessionRequest(session_id=session_id, all=True)
                client.sessions.InvokeSession(invoke)
            if on_event is not None:
                on_event(event)
            if event.WhichOneof("payload") in TERMINAL:
                break
    finally:
        stream.cancel()
    return events


TERMINAL = {"session_complete", "session_cancelled", "session_error"}
PER_NODE = {
    "invocation_started",
    "invocation_progress",
    "invocation_complete",
    "model_load_started",
    "model_load_completed",
}


def png_bytes(client: EaselClient, name: str) -> bytes:
    request = image_pb.GetImageContentRequest(name=name)
    return b"".join(part.chunk for part in client.images.GetImageContent(request))


def chunks(client: EaselClient, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `easel_graph` and `easel_node` chunks of a stored image, as Pillow reads them."""
    texts = Image.open(io.BytesIO(png_bytes(client, name))).text
    return json.loads(texts["easel_graph"]), json.loads(texts["easel_node"])


def run_to_end(client: EaselClient, session_id: str) -> pb.Session:
    """Invokes every node of the session and returns it once it has COMPLETED."""
    client.sessions.InvokeSession(pb.InvokeSessionRequest(session_id=session_id, all=True))
    request = pb.WaitSessionRequest(session_id=session_id)
    done = client.sessions.WaitSession(request, timeout=WAIT_S).session
    assert done.status == graph_pb2.SESSION_STATUS_COMPLETED, done.state.errors
    return done


def image_of(session: pb.Session, run_id: str) -> str:
    return json_format.MessageToDict(session.state.results[run_id])["image"]["image_name"]


def test_a_generation_graph_runs_and_its_events_arrive_in_order(suite):
    client = suite.client
    session = create(
        client,
        [
            node("t2i", "txt2img", **denoising(width=SIZE, height=SIZE)),
            node("i2i", "img2img", **denoising(strength=0.5)),
            node("up", "upscale"),
            node("save", "save_image"),
        ],
        [
            edge("t2i.image", "i2i.image"),
            edge("i2i.image", "up.image"),
            edge("up.image", "save.image"),
        ],
    )
    events = watch_run(client, session.id)
    assert all(event.dropped_count == 0 for event in events)

    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds[:3] == ["snapshot", "session_queued", "session_started"]
    assert kinds[-1] == "session_complete"
    assert all(kind in PER_NODE for kind in kinds[3:-1])
    # Each node's events lie between its start and its completion, the nodes in order.
    per_node = [(event.node_id, event.WhichOneof("payload")) for event in events[3:-1]]
    order = [node_id for node_id, kind in per_node if kind == "invocation_started"]
    assert order == ["t2i", "i2i", "up", "save"]
    for node_id in order:
        mine = [kind for owner, kind in per_node if owner == node_id]
        assert mine[0] == "invocation_started"
        assert mine[-1] == "invocation_complete"
        start = per_node.index((node_id, "invocation_started"))
        end = per_node.index((node_id, "invocation_complete"))
        assert all(owner == node_id for owner, _ in per_node[start : end + 1])

    for node_id in ("t2i", "i2i"):
        steps = [
            event.invocation_progress
            for event in events
            if event.node_id == node_id and event.HasField("invocation_progress")
        ]
        assert steps
        assert steps[-1].step == steps[-1].total_steps
        assert [p.step for p in steps] == list(range(1, steps[-1].total_steps + 1))
        assert all(p.preview.png.startswith(b"\x89PNG") for p in steps)
        assert all(p.preview.width > 0 and p.preview.height > 0 for p in steps)
    # Model loads are relayed for the generation nodes, each a start then its completion.
    loads = [
        (event.node_id, kind, getattr(event, kind).model_key, getattr(event, kind).submodel_type)
        for event, kind in zip(events, kinds, strict=True)
        if kind in ("model_load_started", "model_load_completed")
    ]
    assert {node_id for node_id, *_ in loads} == {"t2i", "i2i", "up"}
    assert {key for _, _, key, _ in loads} == {suite.sd1, suite.x4}
    assert [kind for _, kind, _, _ in loads] == ["model_load_started", "model_load_completed"] * (
        len(loads) // 2
    )
    assert all(a[::2] == b[::2] for a, b in zip(loads[::2], loads[1::2], strict=True))

    done = client.sessions.GetSession(pb.GetSessionRequest(session_id=session.id)).session
    assert done.status == graph_pb2.SESSION_STATUS_COMPLETED
    saved = json_format.MessageToDict(done.state.results["save"])
    assert (saved["width"], saved["height"]) == (SIZE * 4, SIZE * 4)
    name = saved["image"]["image_name"]
    record = client.images.GetImage(image_pb.GetImageRequest(name=name)).image
    assert not record.is_intermediate
    png = Image.open(io.BytesIO(png_bytes(client, name)))
    assert png.size == (SIZE * 4, SIZE * 4)
    graph, saver = chunks(client, name)
    assert [n["id"] for n in graph["nodes"]] == ["t2i", "i2i", "up", "save"]
    upscaled = image_of(done, "up")
    assert saver == {
        "id": "save",
        "run_id": "save",
        "type": "save_image",
        "inputs": {"image": {"image_name": upscaled}},  # over an edge
    }
    made_graph, maker = chunks(client, image_of(done, "t2i"))
    assert made_graph == graph
    assert maker == {
        "id": "t2i",
        "run_id": "t2i",
        "type": "txt2img",
        "inputs": {
            "prompt": "a cat",
            "negative_prompt": "",
            "model": {"key": suite.sd1},  # left empty: the default it took
            "steps": STEPS,
            "cfg_scale": 7.5,
            "scheduler": "euler",
            "seed": 5,
            "loras": [],
            "width": SIZE,
            "height": SIZE,
        },
    }
    _, upscaler = chunks(client, upscaled)
    assert upscaler["inputs"] == {
        "image": {"image_name": image_of(done, "i2i")},
        "model": {"key": suite.x4},
        "scale": None,
    }


def upload_png(client: EaselClient, image: Image.Image) -> str:
    data = io.BytesIO()
    image.save(data, format="PNG")

    def requests() -> Iterable[image_pb.UploadImageRequest]:
        yield image_pb.UploadImageRequest(metadata=image_pb.UploadImageMetadata())
        yield image_pb.UploadImageRequest(chunk=data.getvalue())

    return client.images.UploadImage(requests()).image.name


def test_each_saved_png_names_its_run_and_the_inputs_that_came_over_edges(suite):
    client = suite.client
    source = upload_png(client, Image.new("RGB", (8, 4), (200, 10, 10)))
    session = create(
        client,
        [
            node("widths", "iterate", collection=[4, 6]),
            node("resize", "resize", image={"image_name": source}, height=2),
            node("save", "save_image"),
        ],
        [edge("widths.item", "resize.width"), edge("resize.image", "save.image")],
    )
    done = run_to_end(client, session.id)

    for index, width in enumerate([4, 6]):
        resized = image_of(done, f"resize#{index}")
        graph, resizer = chunks(client, resized)
        assert resizer == {
            "id": "resize",
            "run_id": f"resize#{index}",
            "type": "resize",
            "inputs": {
                "image": {"image_name": source},  # direct
                "width": width,  # over an edge, per item
                "height": 2,  # direct
                "resample": "bicubic",  # the default
            },
        }
        saved_graph, saver = chunks(client, image_of(done, f"save#{index}"))
        assert saver == {
            "id": "save",
            "run_id": f"save#{index}",
            "type": "save_image",
            "inputs": {"image": {"image_name": resized}},
        }
        assert saved_graph == graph
        assert [n["id"] for n in graph["nodes"]] == ["widths", "resize", "save"]


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_the_building_block_graph_gives_the_pixels_of_a_txt2img_session(suite, scheduler):
    client = suite.client
    model = {"key": suite.sd1}
    settings = dict(model=model, steps=STEPS, cfg_scale=5.5, scheduler=scheduler)
    whole = create(
        client,
        [
            node(
                "t2i",
                "txt2img",
                prompt="a cat",
                negative_prompt="ugly",
                width=SIZE,
                height=SIZE,
                seed=7,
                **settings,
            )
        ],
    )
    blocks = create(
        client,
        [
            node("positive", "prompt", prompt="a cat", model=model),
            node("negative", "prompt", prompt="ugly", model=model),
            node("noise", "noise", seed=7, width=SIZE, height=SIZE),
            node("denoise", "denoise_latents", **settings),
            node("decode", "l2i", model=model),
        ],
        [
            edge("positive.conditioning", "denoise.positive_conditioning"),
            edge("negative.conditioning", "denoise.negative_conditioning"),
            edge("noise.noise", "denoise.noise"),
            edge("denoise.latents", "decode.latents"),
        ],
    )

    def pixels(session: pb.Session, run_id: str) -> np.ndarray:
        done = run_to_end(client, session.id)
        return np.asarray(Image.open(io.BytesIO(png_bytes(client, image_of(done, run_id)))))

    expected = pixels(whole, "t2i")
    assert expected.shape == (SIZE, SIZE, 3)
    assert np.array_equal(pixels(blocks, "decode"), expected)


def test_a_session_cancelled_mid_denoise_ends_cancelled_with_its_generation(suite):
    client = suite.client
    session = create(
        client, [node("t2i", "txt2img", **denoising(width=SIZE, height=SIZE, steps=1000))]
    )

    def cancel_at_first_step(event: pb.SessionEvent) -> None:
        if event.HasField("invocation_progress") and event.invocation_progress.step == 1:
            client.sessions.CancelSession(pb.CancelSessionRequest(session_id=session.id))

    events = watch_run(client, session.id, cancel_at_first_step)
    assert events[-1].HasField("session_cancelled")
    done = client.sessions.WaitSession(
        pb.WaitSessionRequest(session_id=session.id), timeout=WAIT_S
    ).session
    assert done.status == graph_pb2.SESSION_STATUS_CANCELLED
    listed = client.generation.ListGenerations(
        gen_pb.ListGenerationsRequest(session_id=session.id)
    ).generations
    assert [generation.status for generation in listed] == [gen_pb.GENERATION_STATUS_CANCELLED]
    assert listed[0].step < 1000
