"""The SDK's one-call helpers against the real services, each through both clients:
generating and saving an image, installing a model while following its progress, running
a graph and iterating its events, uploading and downloading an image."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from clients.sdk import AsyncEaselClient, EaselClient, JobFailedError
from clients.sdk.graphs import edge, graph, node
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.model_manager.v1 import model_install_service_pb2 as install_pb
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as record_pb
from services.common import errors
from tests.model_fixtures import ModelZoo

TINY = {"width": 64, "height": 64, "steps": 2, "seed": 5}


def pixels(path: Path) -> tuple[tuple[int, int], bytes]:
    with Image.open(path) as image:
        return image.size, image.convert("RGB").tobytes()


def kinds(events) -> list[str]:
    return [event.WhichOneof("payload") for event in events]


def ends_completed(events) -> bool:
    """Whether install progress ends with the job completed: its `completed` event, or
    only the first snapshot when the job was over before the watch began."""
    last = events[-1]
    if last.WhichOneof("payload") == "snapshot":
        return len(events) == 1 and last.snapshot.job.status == install_pb.INSTALL_STATUS_COMPLETED
    return last.WhichOneof("payload") == "completed"


async def test_generate_image_saves_the_png_and_reports_progress(services, tmp_path):
    seen = []
    with EaselClient(services.settings) as client:
        saved = client.generate_image("a cat", tmp_path / "sync", on_event=seen.append, **TINY)
    awaited_seen = []

    async def record(event):
        awaited_seen.append(event)

    async with AsyncEaselClient(services.settings) as client:
        awaited = await client.generate_image("a cat", tmp_path / "async", on_event=record, **TINY)

    assert saved.parent == tmp_path / "sync"
    assert saved.suffix == ".png"
    size, data = pixels(saved)
    assert size == (64, 64)
    assert pixels(awaited) == (size, data)  # the same seed through either client
    for events in (seen, awaited_seen):
        assert kinds(events)[0] == "snapshot"
        assert kinds(events)[-1] == "session_complete"
        steps = [e.invocation_progress.step for e in events if e.HasField("invocation_progress")]
        assert steps == [1, 2]


async def test_a_failed_generation_raises_job_failed_naming_the_node(services, tmp_path):
    with EaselClient(services.settings) as client, pytest.raises(JobFailedError) as failed:
        client.generate_image("a cat", tmp_path, model="no-such-model", **TINY)
    async with AsyncEaselClient(services.settings) as client:
        with pytest.raises(JobFailedError) as awaited:
            await client.generate_image("a cat", tmp_path, model="no-such-model", **TINY)
    assert failed.value.reason == awaited.value.reason == "MODEL_NOT_FOUND"
    assert failed.value.metadata["node_id"] == "txt2img"
    assert list(tmp_path.iterdir()) == []


async def test_generate_image_refuses_an_unknown_input(services, tmp_path):
    with (
        EaselClient(services.settings) as client,
        pytest.raises(errors.InvalidArgumentError) as bad,
    ):
        client.generate_image("a cat", tmp_path, stepz=2)
    assert bad.value.reason == "UNKNOWN_FIELD"


async def test_install_model_follows_the_job_to_the_installed_record(services, model_zoo: ModelZoo):
    incoming = services.root / "incoming"
    incoming.mkdir(exist_ok=True)
    lora = Path(shutil.copy(model_zoo.sd1_lora, incoming / "detail.safetensors"))
    embedding = Path(shutil.copy(model_zoo.sd1_embedding_pt, incoming / "style.pt"))

    progress = []
    with EaselClient(services.settings) as client:
        installed = client.install_model(str(lora), on_progress=progress.append)
        recorded = client.model_records.GetModel(record_pb.GetModelRequest(key=installed.key))
    assert installed == recorded.model
    assert (installed.base, installed.type) == (m.BASE_MODEL_TYPE_SD_1, m.MODEL_TYPE_LORA)
    assert kinds(progress)[0] == "snapshot"
    assert ends_completed(progress)

    awaited_progress = []

    async def record(event):
        awaited_progress.append(event)

    async with AsyncEaselClient(services.settings) as client:
        awaited = await client.install_model(
            str(embedding), config={"name": "style"}, on_progress=record
        )
    assert awaited.name == "style"
    assert awaited.type == m.MODEL_TYPE_TEXTUAL_INVERSION
    assert kinds(awaited_progress)[0] == "snapshot"
    assert ends_completed(awaited_progress)


async def test_install_model_raises_the_jobs_failure(services, model_zoo: ModelZoo):
    incoming = services.root / "incoming"
    incoming.mkdir(exist_ok=True)
    noise = Path(shutil.copy(model_zoo.random_bytes, incoming / "noise.safetensors"))
    with EaselClient(services.settings) as client, pytest.raises(JobFailedError) as failed:
        client.install_model(str(noise))
    async with AsyncEaselClient(services.settings) as client:
        with pytest.raises(JobFailedError) as awaited:
            await client.install_model(str(noise))
    assert failed.value.reason == awaited.value.reason == "MODEL_FILE_CORRUPT"
    assert failed.value.metadata["source"] == str(noise)


def arithmetic() -> graph_pb2.Graph:
    return graph(
        [node("two", "add", a=1, b=1), node("four", "mul", b=2), node("bad", "div", b=0)],
        [edge("two.value", "four.a"), edge("two.value", "bad.a")],
    )


async def test_run_graph_yields_the_runs_events_to_its_end(services):
    with EaselClient(services.settings) as client:
        events = list(client.run_graph(arithmetic()))
    async with AsyncEaselClient(services.settings) as client:
        awaited = [event async for event in client.run_graph(arithmetic())]

    for run in (events, awaited):
        assert kinds(run)[:3] == ["snapshot", "session_queued", "session_started"]
        assert kinds(run)[-1] == "session_error"  # div by zero fails; the others still ran
        assert run[-1].session_error.error_type == "DIVISION_BY_ZERO"
        done = {
            e.node_id: e.invocation_complete.outputs
            for e in run
            if e.HasField("invocation_complete")
        }
        assert done["four"]["value"] == 4
        assert len({event.session_id for event in run}) == 1
    assert events[0].session_id != awaited[0].session_id


def noise_png(side: int) -> bytes:
    """A PNG that does not compress, so it is several upload chunks long."""
    noise = random.Random(side).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), noise).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_upload_then_download_an_image(services, tmp_path):
    data = noise_png(700)
    assert len(data) > 1024 * 1024  # more than one chunk
    source = tmp_path / "photo.png"
    source.write_bytes(data)
    with EaselClient(services.settings) as client:
        record = client.upload_image(source, metadata={"from": "sync"})
        downloaded = client.download_image(record.name, tmp_path / "sync")
    async with AsyncEaselClient(services.settings) as client:
        awaited = await client.upload_image(data, metadata={"from": "async"})
        awaited_download = await client.download_image(awaited.name, tmp_path / "async")

    for image, origin in ((record, "sync"), (awaited, "async")):
        assert (image.width, image.height) == (700, 700)
        assert image.origin == image_pb.IMAGE_ORIGIN_UPLOADED
        assert image.size_bytes == len(data)
        assert image.metadata["from"] == origin
    assert downloaded == tmp_path / "sync" / record.name
    assert pixels(downloaded) == pixels(awaited_download) == pixels(source)
