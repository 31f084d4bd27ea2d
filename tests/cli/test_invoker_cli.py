"""`easel queue` and `easel images` against a real invoker: the queue listed, paused,
cancelled, cleared and resumed; images listed, saved and deleted; and the exit codes of
what goes wrong."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from clients.sdk import EaselClient
from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.invoker.v1 import session_service_pb2 as session_pb
from tests.cli.conftest import Easel
from tests.processes import client_settings, wait_serving


@pytest.fixture
def sdk(run_service, easel_env) -> Iterator[EaselClient]:
    wait_serving(run_service("invoker"))
    with EaselClient(client_settings(easel_env)) as client:
        yield client


def queue_a_run(sdk: EaselClient) -> tuple[str, int]:
    """A session adding two numbers, queued; its id and its queue item's id."""
    node = graph_pb2.Node(id="sum", type="add")
    node.inputs.update({"a": 2, "b": 3})
    request = session_pb.CreateSessionRequest(graph=graph_pb2.Graph(nodes=[node]))
    session = sdk.sessions.CreateSession(request).session
    invoke = session_pb.InvokeSessionRequest(session_id=session.id, all=True)
    return session.id, sdk.sessions.InvokeSession(invoke).queue_item.id


def item_ids(easel: Easel, *args: str) -> list[int]:
    return [int(item["id"]) for item in easel.json("queue", "list", *args)]


def test_the_queue_is_listed_paused_cancelled_cleared_and_resumed(sdk: EaselClient, easel: Easel):
    assert "queue paused" in easel.ok("queue", "pause").stdout
    _, first = queue_a_run(sdk)
    _, second = queue_a_run(sdk)

    assert item_ids(easel, "--status", "pending") == [first, second]
    table = easel.ok("queue", "list").stdout
    assert "queue paused: 2 pending" in table
    assert "pending" in table

    assert f"item {first}: cancelled" in easel.ok("queue", "cancel", str(first)).stdout
    assert "cancelled 1 pending item" in easel.ok("queue", "clear").stdout
    assert item_ids(easel, "--status", "cancelled") == [first, second]

    finished = easel("queue", "cancel", str(first))
    assert finished.exit_code == 6
    assert "QUEUE_ITEM_FINISHED" in finished.stderr
    unknown = easel("queue", "cancel", "999")
    assert unknown.exit_code == 3
    assert "easel queue list" in unknown.stderr

    assert "queue running" in easel.ok("queue", "resume").stdout
    session_id, third = queue_a_run(sdk)
    sdk.sessions.WaitSession(session_pb.WaitSessionRequest(session_id=session_id), timeout=60)
    assert item_ids(easel, "--status", "completed") == [third]
    assert item_ids(easel, "--session", session_id) == [third]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


def upload(sdk: EaselClient, data: bytes, session_id: str) -> str:
    requests = [
        image_pb.UploadImageRequest(metadata=image_pb.UploadImageMetadata(session_id=session_id)),
        image_pb.UploadImageRequest(chunk=data),
    ]
    return sdk.images.UploadImage(iter(requests)).image.name


def test_images_are_listed_saved_and_deleted(sdk: EaselClient, easel: Easel, tmp_path: Path):
    data = png(600, 300)
    create = session_pb.CreateSessionRequest(graph=graph_pb2.Graph())
    session_id = sdk.sessions.CreateSession(create).session.id
    name = upload(sdk, data, session_id)

    [listed] = easel.json("images", "list")
    assert (listed["name"], listed["width"], listed["session_id"]) == (name, 600, session_id)
    assert name in easel.ok("images", "list", "--origin", "uploaded").stdout
    assert easel.json("images", "list", "--origin", "generated") == []

    saved = easel.ok("images", "get", name, "--output", str(tmp_path)).stdout.strip()
    assert Path(saved) == tmp_path / name
    assert Path(saved).read_bytes() == data
    thumbnail = easel.json("images", "get", name, "--thumbnail", "-o", str(tmp_path / "t.png"))
    assert thumbnail["path"] == str(tmp_path / "t.png")
    assert max(Image.open(tmp_path / "t.png").size) <= 256

    assert f"deleted {name}" in easel.ok("images", "delete", name).stdout
    gone = easel("images", "get", name, "-o", str(tmp_path / "again.png"))
    assert gone.exit_code == 3
    assert "easel images list" in gone.stderr
    assert not (tmp_path / "again.png").exists()
    assert easel.json("images", "list") == []
