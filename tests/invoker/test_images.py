"""The image library on its own: files, records, thumbnails, provenance chunks, paging, and
bad input that changes nothing."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from PIL import Image

from services.common import errors
from services.invoker.images.files import ImageFiles
from services.invoker.images.library import ImageLibrary, NewImage
from services.invoker.images.png_metadata import (
    Provenance,
    decode_png,
    encode_png,
    read_provenance,
    with_provenance,
)
from services.invoker.images.records import (
    ImageChanges,
    ImageOrigin,
    ImageQuery,
    ImageRecordStore,
)
from services.invoker.images.stores import open_image_records

GRAPH = {"nodes": {"n1": {"type": "txt2img", "prompt": "a café at dawn"}}, "edges": []}
TOO_LARGE = errors.ResourceExhaustedError
NODE = {"prompt": "a café at dawn", "steps": 4, "seed": 7}


def png(width: int = 40, height: int = 30, mode: str = "RGB") -> bytes:
    return encode_png(Image.new(mode, (width, height), "red" if mode == "RGB" else 128))


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def pieces(data: bytes, size: int) -> Iterable[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


class Setup:
    def __init__(self, root: Path, store: ImageRecordStore, **limits: int) -> None:
        self.folder = root / "outputs" / "images"
        self.store = store
        self.files = ImageFiles(self.folder)
        self.library = ImageLibrary(self.store, self.files, **limits)

    @classmethod
    async def open(cls, root: Path, database_url: str = "sqlite:", **limits: int) -> Setup:
        return cls(root, await open_image_records(database_url, images_db(root)), **limits)

    def stored_files(self) -> list[str]:
        return sorted(
            str(path.relative_to(self.folder)) for path in self.folder.rglob("*") if path.is_file()
        )

    async def count(self) -> int:
        return (await self.library.list(ImageQuery(), 0, 1000))[1]


def images_db(root: Path) -> Path:
    return root / "databases" / "images.db"


@pytest.fixture
async def setup(tmp_path: Path, database_url: str):
    """The library with its records on each engine."""
    made = await Setup.open(tmp_path, database_url)
    yield made
    await made.store.close()


async def test_upload_stores_file_thumbnail_and_record(setup: Setup):
    data = png(600, 300)
    new = NewImage(session_id="s1", node_id="n1", metadata={"k": "v"}, declared_bytes=len(data))
    record = await setup.library.upload(new, stream(*pieces(data, 1000)))

    assert (record.width, record.height, record.size_bytes) == (600, 300, len(data))
    assert (record.origin, record.session_id, record.node_id) == (ImageOrigin.UPLOADED, "s1", "n1")
    assert record.metadata == {"k": "v"}
    assert not record.is_intermediate
    assert record.name.endswith(".png")
    assert len(record.name) == 40
    assert setup.stored_files() == [record.name, f"thumbnails/{record.name}"]
    assert (setup.folder / record.name).read_bytes() == data  # stored as sent
    assert await setup.library.get(record.name) == record
    assert await setup.library.load_png(record.name) == data

    content = await setup.library.content(record.name, thumbnail=True)
    thumbnail = b"".join([chunk async for chunk in content.chunks])
    assert content.total_bytes == len(thumbnail)
    assert Image.open(io.BytesIO(thumbnail)).size == (256, 128)


async def test_a_small_image_keeps_its_size_as_thumbnail(setup: Setup):
    record = await setup.library.upload(NewImage(), stream(png(20, 50, "L")))
    content = await setup.library.content(record.name, thumbnail=True)
    thumbnail = b"".join([chunk async for chunk in content.chunks])
    assert Image.open(io.BytesIO(thumbnail)).size == (20, 50)


async def test_content_streams_in_chunks_of_at_most_one_mib(setup: Setup):
    noise = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))
    data = encode_png(noise)
    assert len(data) > 1024 * 1024
    record = await setup.library.upload(NewImage(), stream(*pieces(data, 1024 * 1024)))
    content = await setup.library.content(record.name)
    chunks = [chunk async for chunk in content.chunks]
    assert content.total_bytes == len(data)
    assert all(len(chunk) <= 1024 * 1024 for chunk in chunks)
    assert len(chunks) >= 2
    assert b"".join(chunks) == data


async def test_generated_png_carries_graph_and_node_inputs(setup: Setup):
    record = await setup.library.save_generated(
        png(64, 64), session_id="s1", node_id="save", graph=GRAPH, node=NODE
    )
    assert record.origin == ImageOrigin.GENERATED
    stored = await setup.library.load_png(record.name)
    assert read_provenance(stored) == Provenance(GRAPH, NODE)
    texts = Image.open(io.BytesIO(stored)).text  # what any PNG reader sees
    assert set(texts) == {"easel_graph", "easel_node"}
    assert record.size_bytes == len(stored)


def test_provenance_replaces_earlier_chunks_and_keeps_the_pixels():
    image = Image.new("RGBA", (9, 5), (1, 2, 3, 4))
    first = with_provenance(encode_png(image), Provenance({"old": 1}, {"old": 2}))
    again = with_provenance(first, Provenance(GRAPH, NODE))
    assert read_provenance(again) == Provenance(GRAPH, NODE)
    assert again.count(b"easel_graph") == 1
    assert again.count(b"easel_node") == 1
    assert Image.open(io.BytesIO(again)).tobytes() == image.tobytes()
    assert read_provenance(encode_png(image)) == Provenance(None, None)


async def test_list_is_newest_first_with_filters_and_pages(setup: Setup):
    made = []
    for index in range(5):
        new = NewImage(session_id="a" if index % 2 else "b", is_intermediate=index == 4)
        made.append((await setup.library.upload(new, stream(png()))).name)
    generated = await setup.library.save_generated(
        png(), session_id="a", node_id="n", graph={}, node={}
    )
    library = setup.library

    everything, total = await library.list(ImageQuery(), 0, 100)
    assert [r.name for r in everything] == [generated.name, *reversed(made)]
    assert total == 6
    page, total = await library.list(ImageQuery(), 2, 2)
    assert [r.name for r in page] == [made[3], made[2]]
    assert total == 6
    in_a, _ = await library.list(ImageQuery(session_id="a"), 0, 100)
    assert [r.name for r in in_a] == [generated.name, made[3], made[1]]
    uploaded_a, _ = await library.list(
        ImageQuery(session_id="a", origin=ImageOrigin.UPLOADED), 0, 100
    )
    assert [r.name for r in uploaded_a] == [made[3], made[1]]
    intermediate, _ = await library.list(ImageQuery(is_intermediate=True), 0, 100)
    assert [r.name for r in intermediate] == [made[4]]


async def test_update_changes_only_the_fields_given(setup: Setup):
    record = await setup.library.upload(NewImage(metadata={"a": 1}), stream(png()))
    flagged = await setup.library.update(record.name, ImageChanges(is_intermediate=True))
    assert flagged.is_intermediate
    assert flagged.metadata == {"a": 1}
    assert flagged.update_time > record.update_time
    assert flagged.create_time == record.create_time
    replaced = await setup.library.update(record.name, ImageChanges(metadata={"b": [1, "x"]}))
    assert replaced.metadata == {"b": [1, "x"]}
    assert replaced.is_intermediate
    assert await setup.library.get(record.name) == replaced
    with pytest.raises(errors.NotFoundError) as caught:
        await setup.library.update("nope.png", ImageChanges(is_intermediate=True))
    assert caught.value.reason == "IMAGE_NOT_FOUND"


async def test_delete_removes_file_thumbnail_and_record(setup: Setup):
    kept = await setup.library.upload(NewImage(), stream(png()))
    gone = await setup.library.upload(NewImage(), stream(png()))
    await setup.library.delete(gone.name)
    assert setup.stored_files() == [kept.name, f"thumbnails/{kept.name}"]
    with pytest.raises(errors.NotFoundError):
        await setup.library.get(gone.name)
    with pytest.raises(errors.NotFoundError):
        await setup.library.delete(gone.name)


async def test_delete_of_an_image_whose_files_are_gone_still_removes_the_record(setup: Setup):
    record = await setup.library.upload(NewImage(), stream(png()))
    (setup.folder / record.name).unlink()
    (setup.folder / "thumbnails" / record.name).unlink()
    await setup.library.delete(record.name)
    assert await setup.count() == 0


async def test_missing_file_is_failed_precondition_and_a_missing_thumbnail_is_remade(
    setup: Setup,
):
    record = await setup.library.upload(NewImage(), stream(png(300, 100)))
    (setup.folder / "thumbnails" / record.name).unlink()
    content = await setup.library.content(record.name, thumbnail=True)
    thumbnail = b"".join([chunk async for chunk in content.chunks])
    assert Image.open(io.BytesIO(thumbnail)).size == (256, 85)

    (setup.folder / record.name).unlink()
    with pytest.raises(errors.FailedPreconditionError) as caught:
        await setup.library.content(record.name)
    assert caught.value.reason == "IMAGE_FILE_MISSING"
    with pytest.raises(errors.FailedPreconditionError):
        await setup.library.load_png(record.name)
    with pytest.raises(errors.NotFoundError) as unknown:
        await setup.library.content("3f2b8c1e-5d4a-4e8f-9b7c-1a2d3e4f5a6b.png")
    assert unknown.value.reason == "IMAGE_NOT_FOUND"


@pytest.mark.parametrize(
    ("new", "chunks", "error", "reason", "field"),
    [
        (NewImage(), [], errors.InvalidArgumentError, "EMPTY_IMAGE", "chunk"),
        (NewImage(), [b"not a png at all"], errors.InvalidArgumentError, "INVALID_IMAGE", "chunk"),
        (NewImage(), [png()[:-30]], errors.InvalidArgumentError, "INVALID_IMAGE", "chunk"),
        (
            NewImage(),
            [encode_png(Image.new("RGB", (3, 3)).convert("P")).replace(b"PNG", b"GIF")],
            errors.InvalidArgumentError,
            "INVALID_IMAGE",
            "chunk",
        ),
        (NewImage(declared_bytes=5), [png()], errors.InvalidArgumentError, "SIZE_MISMATCH", None),
        (NewImage(declared_bytes=-1), [png()], errors.InvalidArgumentError, None, None),
        (
            NewImage(declared_bytes=10_001),
            [],
            errors.ResourceExhaustedError,
            "IMAGE_TOO_LARGE",
            None,
        ),
        (
            NewImage(),
            [png(), b"x" * 10_000],
            errors.ResourceExhaustedError,
            "IMAGE_TOO_LARGE",
            None,
        ),
        (NewImage(), [png(101, 100)], errors.ResourceExhaustedError, "IMAGE_TOO_LARGE", None),
    ],
)
async def test_a_refused_upload_changes_nothing(tmp_path, new, chunks, error, reason, field):
    setup = await Setup.open(tmp_path, max_bytes=10_000, max_pixels=100 * 100)
    await setup.library.upload(NewImage(), stream(png()))
    before = setup.stored_files()
    with pytest.raises(error) as caught:
        await setup.library.upload(new, stream(*chunks))
    if reason:
        assert caught.value.reason == reason
    if isinstance(caught.value, errors.InvalidArgumentError):
        assert caught.value.violations[0].field == field or (
            field is None and caught.value.violations[0].field == "metadata.size_bytes"
        )
    assert setup.stored_files() == before
    assert await setup.count() == 1
    await setup.store.close()


async def test_an_unknown_session_is_refused_before_any_byte_is_read(tmp_path):
    async def check(session_id: str) -> None:
        if session_id != "known":
            raise errors.NotFoundError("no such session", reason="SESSION_NOT_FOUND")

    setup = await Setup.open(tmp_path)
    setup.library = ImageLibrary(setup.store, setup.files, check_session=check)
    with pytest.raises(errors.NotFoundError):
        await setup.library.upload(NewImage(session_id="other"), stream(png()))
    assert await setup.count() == 0
    assert setup.stored_files() == []
    assert (await setup.library.upload(NewImage(session_id="known"), stream(png()))).session_id
    await setup.store.close()


async def test_a_record_that_cannot_be_written_leaves_no_file(tmp_path: Path, database_url: str):
    setup = await Setup.open(tmp_path, database_url)
    await setup.store.close()  # every write now fails
    # SQLite: the store's thread is gone; PostgreSQL: its pool is closed.
    with pytest.raises((RuntimeError, errors.UnavailableError)):
        await setup.library.upload(NewImage(), stream(png()))
    assert setup.stored_files() == []


async def test_records_survive_reopening_and_the_database_is_wal(tmp_path):
    first = await Setup.open(tmp_path)
    record = await first.library.upload(NewImage(metadata={"x": 1.5}), stream(png()))
    await first.store.close()
    second = await Setup.open(tmp_path)
    assert await second.library.get(record.name) == record
    mode = sqlite3.connect(images_db(tmp_path)).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    await second.store.close()


def test_decode_refuses_a_pixel_bomb_from_its_header():
    big = encode_png(Image.new("1", (4000, 4000)))
    with pytest.raises(errors.ResourceExhaustedError):
        decode_png(big, max_pixels=1000, field="chunk")


def test_the_image_service_imports_no_torch():
    code = (
        "import sys, services.invoker.image_servicer, services.invoker.images.library; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
