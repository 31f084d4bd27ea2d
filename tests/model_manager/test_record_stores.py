"""One suite for every record store (SQLite, YAML and PostgreSQL): every operation, every
filter, duplicates, rejected writes that leave nothing behind, persistence across a reopen,
schema versions and migrations, and files that are not a store of ours."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from easel.model_manager.v1 import model_pb2, model_record_service_pb2_grpc
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from services.common import errors
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType
from services.model_manager.records import record_store
from services.model_manager.records.configs import (
    CONFIG_CLASSES,
    AnyModelConfig,
    MainCheckpointConfig,
    VaeCheckpointConfig,
    parse_config,
)
from services.model_manager.records.open_store import open_record_store
from services.model_manager.records.record_store import (
    SCHEMA_VERSION,
    ModelQuery,
    ModelRecordStore,
    StoreBackend,
)
from tests.processes import wait_serving

BLAKE3 = "blake3:" + "ab" * 32
SHA256 = "sha256:" + "cd" * 32
FILE_NAMES = {StoreBackend.SQLITE: "models.db", StoreBackend.YAML: "models.yaml"}
POSTGRES_URLS: dict[str, str] = {}
"""The URL of each PostgreSQL store a test opened, by its location (which hides the
password), so `reopen` can open it again."""


def config(**fields: Any) -> AnyModelConfig:
    data = {"type": "main", "format": "checkpoint", "base": "sd-1", **fields}
    data.setdefault("name", "model")
    data.setdefault("path", f"{data['name']}-{data['type']}-{data['base']}.safetensors")
    return parse_config(data)


@pytest.fixture(params=list(FILE_NAMES))
def store_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / "databases" / FILE_NAMES[request.param]


@pytest.fixture
def file_store(store_path: Path) -> Iterator[ModelRecordStore]:
    opened = open_record_store(store_path)
    yield opened
    opened.close()


@pytest.fixture(params=list(StoreBackend))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModelRecordStore]:
    if request.param is StoreBackend.POSTGRESQL:
        url = request.getfixturevalue("postgres_url")
        opened = open_record_store(tmp_path / "unused.db", url)
        POSTGRES_URLS[str(opened.location)] = url
    else:
        opened = open_record_store(tmp_path / "databases" / FILE_NAMES[request.param])
    yield opened
    opened.close()


def reopen(store: ModelRecordStore) -> ModelRecordStore:
    store.close()
    if store.backend is StoreBackend.POSTGRESQL:
        return open_record_store(Path("unused.db"), POSTGRES_URLS[str(store.location)])
    assert isinstance(store.location, Path)
    return open_record_store(store.location)


def snapshot(store: ModelRecordStore) -> list[AnyModelConfig]:
    return store.search()


COLLECTION = {
    "sd1-main": dict(name="alpha", base="sd-1", tags=["sfw", "scenery", "rare"], hash=BLAKE3),
    "sd1-main-2": dict(name="alpha", base="sd-1", path="other/alpha.safetensors", tags=["sfw"]),
    "sdxl-main": dict(name="alpha", base="sdxl", format="diffusers", source="org/alpha"),
    "sd1-lora": dict(name="beta", type="lora", format="lycoris", tags=["scenery", "sfw", "x"]),
    "sdxl-vae": dict(
        name="gamma", type="vae", base="sdxl", hash=SHA256, source="org/vae", tags=["rare"]
    ),
    "encoder": dict(name="encoder", type="clip_vision", format="diffusers", base="any"),
}


@pytest.fixture
def collection(store: ModelRecordStore) -> dict[str, str]:
    """The records of COLLECTION, added to the store; their keys by COLLECTION name."""
    return {label: store.add(config(**fields)).key for label, fields in COLLECTION.items()}


def test_add_stores_the_record_with_its_times(store: ModelRecordStore):
    given = config(name="sd15", tags=["a", "b"], description="a model")
    added = store.add(given)
    assert len(added.key) == 32
    assert int(added.key, 16) >= 0
    assert added.create_time == added.update_time >= given.create_time
    assert added.model_dump(exclude={"create_time", "update_time"}) == given.model_dump(
        exclude={"create_time", "update_time"}
    )
    assert store.get(added.key) == added
    assert store.exists(added.key)
    assert store.count() == 1


def test_every_type_and_format_survives_a_reopen(store: ModelRecordStore):
    added = []
    for cls in CONFIG_CLASSES:
        kind = {
            "type": cls.model_fields["type"].default,
            "format": cls.model_fields["format"].default,
        }
        added.append(store.add(config(**kind, name=f"{kind['type']}-{kind['format']}")))
    reopened = reopen(store)
    try:
        for record in added:
            assert type(reopened.get(record.key)) is type(record)
            assert reopened.get(record.key) == record
        assert reopened.count() == len(CONFIG_CLASSES)
    finally:
        reopened.close()


def test_type_specific_settings_are_kept(store: ModelRecordStore):
    main = store.add(
        config(
            variant="inpaint",
            prediction_type="v_prediction",
            upcast_attention=True,
            config_path="configs/v2-inference-v.yaml",
            vae_path="vae/sd2.safetensors",
            default_width=768,
            default_height=640,
            source_type="url",
            source="https://host/model.safetensors",
            source_api_response='{"id": 1}',
            hash=SHA256,
        )
    )
    upscaler = store.add(config(type="upscaler", name="esrgan", scale=4))
    adapter = store.add(
        config(type="ip_adapter", format="invokeai", image_encoder_model_id="org/encoder")
    )
    reopened = reopen(store)
    try:
        assert reopened.get(main.key) == main
        assert reopened.get(upscaler.key).scale == 4
        assert reopened.get(adapter.key).image_encoder_model_id == "org/encoder"
    finally:
        reopened.close()


def test_unknown_key_is_not_found(store: ModelRecordStore):
    with pytest.raises(errors.NotFoundError) as caught:
        store.get("nope")
    assert caught.value.reason == "MODEL_NOT_FOUND"
    assert caught.value.metadata == {"key": "nope"}
    assert not store.exists("nope")
    for operation in (store.delete, lambda key: store.update(key, {"name": "x"})):
        with pytest.raises(errors.NotFoundError):
            operation("nope")


def test_a_taken_key_is_refused_and_nothing_changes(store: ModelRecordStore):
    first = store.add(config(key="mine", name="first"))
    before = snapshot(store)
    with pytest.raises(errors.AlreadyExistsError) as caught:
        store.add(config(key="mine", name="second", path="elsewhere.safetensors"))
    assert caught.value.reason == "MODEL_ALREADY_EXISTS"
    assert caught.value.metadata == {"key": "mine"}
    assert snapshot(store) == before
    assert store.get("mine") == first


def test_a_taken_path_is_refused_and_nothing_changes(store: ModelRecordStore):
    first = store.add(config(name="first", path="shared.safetensors"))
    before = snapshot(store)
    with pytest.raises(errors.AlreadyExistsError) as caught:
        store.add(config(name="second", type="vae", path="shared.safetensors"))
    assert caught.value.reason == "MODEL_PATH_ALREADY_REGISTERED"
    assert caught.value.metadata == {"path": "shared.safetensors", "key": first.key}
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (ModelQuery(), list(COLLECTION)),
        (ModelQuery(name="alpha"), ["sd1-main", "sd1-main-2", "sdxl-main"]),
        (ModelQuery(name="Alpha"), []),
        (ModelQuery(base=BaseModelType.SDXL), ["sdxl-main", "sdxl-vae"]),
        (ModelQuery(type=ModelType.LORA), ["sd1-lora"]),
        (ModelQuery(format=ModelFormat.DIFFUSERS), ["sdxl-main", "encoder"]),
        (ModelQuery(path="other/alpha.safetensors"), ["sd1-main-2"]),
        (ModelQuery(path="./other/alpha.safetensors"), []),
        (ModelQuery(hash=BLAKE3), ["sd1-main"]),
        (ModelQuery(hash=SHA256), ["sdxl-vae"]),
        (ModelQuery(source="org/alpha"), ["sdxl-main"]),
        (ModelQuery(tags=("sfw",)), ["sd1-main", "sd1-main-2", "sd1-lora"]),
        (ModelQuery(tags=("scenery", "sfw")), ["sd1-main", "sd1-lora"]),
        (ModelQuery(tags=("scenery", "sfw", "x")), ["sd1-lora"]),
        (ModelQuery(tags=("sfw", "unknown")), []),
        (ModelQuery(tags=("sfw", "rare")), ["sd1-main"]),
        (ModelQuery(name="alpha", base=BaseModelType.SD_1, tags=("scenery",)), ["sd1-main"]),
        (
            ModelQuery(type=ModelType.MAIN, format=ModelFormat.CHECKPOINT),
            ["sd1-main", "sd1-main-2"],
        ),
    ],
)
def test_search_matches_every_given_filter(
    store: ModelRecordStore, collection: dict[str, str], query: ModelQuery, expected: list[str]
):
    found = store.search(query)
    assert sorted(config.key for config in found) == sorted(collection[e] for e in expected)
    assert store.count(query) == len(expected)
    assert [(c.name, c.key) for c in found] == sorted((c.name, c.key) for c in found)


def test_search_orders_by_name_then_key_and_pages_by_offset(store: ModelRecordStore):
    for index, name in enumerate(["b", "a", "c", "a", "b", "a"]):
        store.add(config(key=f"k{5 - index}", name=name, path=f"{index}.safetensors"))
    everything = [(c.name, c.key) for c in store.search()]
    assert everything == [
        ("a", "k0"), ("a", "k2"), ("a", "k4"), ("b", "k1"), ("b", "k5"), ("c", "k3")
    ]  # fmt: skip
    pages = [store.search(offset=offset, limit=4) for offset in (0, 4, 8)]
    assert [[c.key for c in page] for page in pages] == [["k0", "k2", "k4", "k1"], ["k5", "k3"], []]
    page, total = store.search_page(ModelQuery(name="a"), 1, 1)
    assert [c.key for c in page] == ["k2"]
    assert total == 3


def test_find_returns_the_only_match(store: ModelRecordStore, collection: dict[str, str]):
    found = store.find("alpha", BaseModelType.SDXL, ModelType.MAIN)
    assert found.key == collection["sdxl-main"]


def test_find_without_a_match_is_not_found(store: ModelRecordStore, collection: dict[str, str]):
    with pytest.raises(errors.NotFoundError) as caught:
        store.find("alpha", BaseModelType.SD_2, ModelType.MAIN)
    assert caught.value.reason == "MODEL_NOT_FOUND"
    assert caught.value.metadata == {"name": "alpha", "base": "sd-2", "type": "main"}


def test_find_with_several_matches_names_them(store: ModelRecordStore, collection: dict[str, str]):
    with pytest.raises(errors.FailedPreconditionError) as caught:
        store.find("alpha", BaseModelType.SD_1, ModelType.MAIN)
    assert caught.value.reason == "MODEL_AMBIGUOUS"
    keys = sorted([collection["sd1-main"], collection["sd1-main-2"]])
    assert caught.value.metadata == {
        "name": "alpha",
        "base": "sd-1",
        "type": "main",
        "keys": ",".join(keys),
    }


def test_update_changes_only_the_given_fields(store: ModelRecordStore):
    added = store.add(config(name="old", tags=["a", "b"], variant="normal", description="d"))
    updated = store.update(added.key, {"name": "new", "tags": ["b", "c"], "default_width": 768})
    assert (updated.name, updated.tags, updated.default_width) == ("new", ["b", "c"], 768)
    assert (updated.description, updated.variant, updated.path) == ("d", "normal", added.path)
    assert updated.create_time == added.create_time
    assert updated.update_time > added.update_time
    assert store.get(added.key) == updated
    assert [c.key for c in store.search(ModelQuery(tags=("c",)))] == [added.key]
    assert store.search(ModelQuery(tags=("a",))) == []
    assert store.search(ModelQuery(name="old")) == []


def test_update_with_none_resets_a_field_to_its_default(store: ModelRecordStore):
    added = store.add(config(variant="inpaint", description="d", tags=["t"], hash=BLAKE3))
    updated = store.update(added.key, {"variant": None, "description": None, "tags": None})
    assert (updated.variant, updated.description, updated.tags) == (None, "", [])
    assert updated.hash == BLAKE3


def test_update_may_change_the_type_when_the_old_settings_are_defaults(store: ModelRecordStore):
    added = store.add(config(name="misfiled"))
    updated = store.update(added.key, {"type": "vae"})
    assert isinstance(updated, VaeCheckpointConfig)
    assert store.search(ModelQuery(type=ModelType.VAE)) == [updated]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"base": "sd-3"}, "changes.base"),
        ({"bogus": 1}, "changes.bogus"),
        ({"key": "other"}, "changes.key"),
        ({"name": None}, "changes.name"),
        ({"hash": "md5:00"}, "changes.hash"),
        ({"type": "vae"}, "changes.variant"),  # a vae has no variant
        ({"format": "lycoris"}, "changes.format"),
        ({"default_width": -1}, "changes.default_width"),
    ],
)
def test_an_invalid_update_is_refused_and_nothing_changes(
    store: ModelRecordStore, changes: dict[str, Any], field: str
):
    added = store.add(config(variant="inpaint", tags=["t"]))
    with pytest.raises(errors.InvalidArgumentError) as caught:
        store.update(added.key, changes)
    assert caught.value.reason == "INVALID_MODEL_CONFIG"
    assert field in [violation.field for violation in caught.value.violations]
    assert caught.value.metadata == {"key": added.key}
    assert snapshot(store) == [added]


def test_an_update_to_a_taken_path_is_refused(store: ModelRecordStore):
    first = store.add(config(name="first", path="first.safetensors"))
    second = store.add(config(name="second", path="second.safetensors"))
    with pytest.raises(errors.AlreadyExistsError) as caught:
        store.update(second.key, {"path": "first.safetensors"})
    assert caught.value.reason == "MODEL_PATH_ALREADY_REGISTERED"
    assert caught.value.metadata == {"path": "first.safetensors", "key": first.key}
    assert snapshot(store) == [first, second]
    assert store.update(first.key, {"path": "first.safetensors", "name": "same"}).name == "same"


def test_delete_returns_the_record_and_forgets_it(store: ModelRecordStore):
    kept = store.add(config(name="kept", tags=["t"]))
    gone = store.add(config(name="gone", tags=["t", "u"]))
    assert store.delete(gone.key) == gone
    assert not store.exists(gone.key)
    assert store.search(ModelQuery(tags=("t",))) == [kept]
    assert store.search(ModelQuery(tags=("u",))) == []
    with pytest.raises(errors.NotFoundError):
        store.delete(gone.key)
    again = store.add(config(name="gone", path=gone.path))  # its path is free again
    assert store.count() == 2
    assert store.get(again.key) == again


def test_changes_persist_across_a_reopen(store: ModelRecordStore):
    kept = store.add(config(name="kept", tags=["a"]))
    changed = store.update(store.add(config(name="changed")).key, {"tags": ["b"]})
    store.delete(store.add(config(name="deleted")).key)
    reopened = reopen(store)
    try:
        assert snapshot(reopened) == [changed, kept]
        assert reopened.search(ModelQuery(tags=("b",))) == [changed]
        assert reopened.schema_version == SCHEMA_VERSION
    finally:
        reopened.close()


def test_the_store_reports_its_version_backend_and_location(
    file_store: ModelRecordStore, store_path: Path
):
    assert file_store.schema_version == "3.2"
    assert file_store.location == store_path
    suffixes = {".db": StoreBackend.SQLITE, ".yaml": StoreBackend.YAML}
    assert file_store.backend is suffixes[store_path.suffix]


def test_a_postgres_store_reports_its_database_without_the_password(postgres_url: str):
    url = postgres_url.replace("postgres:@", "postgres:not-needed@")  # trust authentication
    store = open_record_store(Path("unused.db"), url)
    try:
        assert (store.backend, store.schema_version) == (StoreBackend.POSTGRESQL, "3.2")
        assert store.location == url.replace("not-needed", "***")
    finally:
        store.close()


def test_concurrent_writers_lose_nothing(store: ModelRecordStore):
    def add_many(worker: int) -> None:
        for index in range(20):
            store.add(config(name=f"w{worker}", path=f"{worker}/{index}.safetensors"))

    threads = [threading.Thread(target=add_many, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 120
    assert store.count(ModelQuery(name="w3")) == 20


def test_an_empty_file_starts_an_empty_store(store_path: Path):
    store_path.parent.mkdir(parents=True)
    store_path.write_bytes(b"")
    store = open_record_store(store_path)
    try:
        store.add(config())
    finally:
        store.close()
    reopened = open_record_store(store_path)
    assert reopened.count() == 1
    reopened.close()


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE images (id INTEGER)")


def _sqlite_store(path: Path) -> None:
    open_record_store(path.with_suffix(".db")).close()
    path.with_suffix(".db").rename(path)


WRONG_FILES = {
    "text named .db": ("models.db", lambda path: path.write_text("just some text\n" * 20)),
    "foreign sqlite db": ("models.db", _foreign_sqlite),
    "yaml without metadata": ("models.yaml", lambda path: path.write_text("a: {name: x}\n")),
    "yaml list": ("models.yaml", lambda path: path.write_text("- 1\n- 2\n")),
    "broken yaml": ("models.yaml", lambda path: path.write_text("a: [unclosed\n")),
    "sqlite db named .yaml": ("models.yaml", _sqlite_store),
    "yaml with a bad record": (
        "models.yaml",
        lambda path: path.write_text("__metadata__: {version: '3.2'}\nk1: {name: x}\n"),
    ),
    "unknown extension": ("models.json", lambda path: path.write_text("{}")),
}


@pytest.mark.parametrize("case", list(WRONG_FILES))
def test_a_file_that_is_not_a_store_is_refused_untouched(tmp_path: Path, case: str):
    name, make = WRONG_FILES[case]
    path = tmp_path / name
    make(path)
    before = path.read_bytes()
    with pytest.raises(errors.FailedPreconditionError) as caught:
        open_record_store(path)
    assert caught.value.reason == "INVALID_RECORD_STORE"
    assert caught.value.metadata == {"path": str(path)}
    assert "is not a model record store" in caught.value.message
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [path]


def _set_version(path: Path, version: str) -> None:
    if path.suffix == ".db":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE model_records_schema SET version = ?", (version,))
        return
    document = yaml.safe_load(path.read_text())
    document["__metadata__"]["version"] = version
    path.write_text(yaml.safe_dump(document))


def test_a_newer_schema_is_refused(file_store: ModelRecordStore, store_path: Path):
    file_store.add(config())
    file_store.close()
    _set_version(store_path, "9.0")
    with pytest.raises(errors.FailedPreconditionError) as caught:
        open_record_store(store_path)
    assert caught.value.reason == "UNSUPPORTED_SCHEMA_VERSION"
    assert caught.value.metadata["schema_version"] == "9.0"


def test_an_older_schema_is_migrated_at_open(
    file_store: ModelRecordStore, store_path: Path, monkeypatch: pytest.MonkeyPatch
):
    added = file_store.add(config(name="old", tags=["a"]))
    file_store.close()
    _set_version(store_path, "3.0")

    def rename(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "name": record["name"] + "-migrated", "tags": ["migrated"]}

    def tag(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "tags": [*record["tags"], "twice"]}

    monkeypatch.setattr(record_store, "MIGRATIONS", {"3.0": ("3.1", rename), "3.1": ("3.2", tag)})
    migrated = open_record_store(store_path)
    try:
        assert migrated.schema_version == SCHEMA_VERSION
        record = migrated.get(added.key)
        assert (record.name, record.tags) == ("old-migrated", ["migrated", "twice"])
        assert migrated.search(ModelQuery(tags=("migrated", "twice"))) == [record]
        assert migrated.search(ModelQuery(tags=("a",))) == []
    finally:
        migrated.close()
    monkeypatch.setattr(record_store, "MIGRATIONS", {})
    reopened = open_record_store(store_path)  # the file itself is at 3.2 now
    try:
        assert reopened.get(added.key).name == "old-migrated"
    finally:
        reopened.close()


def test_a_yaml_store_is_readable_and_written_atomically(tmp_path: Path):
    path = tmp_path / "models.yaml"
    store = open_record_store(path)
    added = store.add(config(name="sd15", tags=["t"]))
    document = yaml.safe_load(path.read_text())
    assert document["__metadata__"] == {"version": "3.2"}
    assert document[added.key]["name"] == "sd15"
    assert list(document[added.key])[:5] == ["name", "type", "format", "base", "path"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.yaml"]  # no temp file left


def test_a_yaml_write_that_fails_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = open_record_store(tmp_path / "models.yaml")
    kept = store.add(config(name="kept"))
    before = (tmp_path / "models.yaml").read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.add(config(name="lost"))
    assert store.search() == [kept]
    assert (tmp_path / "models.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.yaml"]


def test_a_yaml_store_has_one_writer(tmp_path: Path):
    path = tmp_path / "models.yaml"
    first = open_record_store(path)
    kept = first.add(config(name="kept"))  # the file is replaced: the lock goes with it
    for attempt in range(2):
        with pytest.raises(errors.FailedPreconditionError) as caught:
            open_record_store(path)
        assert caught.value.reason == "RECORD_STORE_LOCKED"
        assert caught.value.metadata == {"path": str(path)}
        first.add(config(name=f"more-{attempt}"))
    assert first.count() == 3
    first.close()
    second = open_record_store(path)
    try:
        assert second.get(kept.key) == kept
        assert second.count() == 3
    finally:
        second.close()


def test_a_second_model_manager_on_a_yaml_store_is_refused(run_service, easel_env: dict[str, str]):
    env = {**easel_env, "EASEL_MODEL_CONFIG_DB": "records/models.yaml"}
    first = run_service("model_manager", env=env)
    wait_serving(first)
    second = run_service("model_manager", env={**env, "EASEL_MODEL_MANAGER_ADDRESS": "127.0.0.1:0"})
    assert second.process.wait(timeout=60) == 1
    lines = second.log().splitlines()
    assert [line for line in lines if "RECORD_STORE_LOCKED" in line] == lines[-1:]
    assert "Traceback" not in second.log()
    with first.sync_channel() as channel:
        records = model_record_service_pb2_grpc.ModelRecordServiceStub(channel)
        model = model_pb2.ModelConfig(
            name="still here",
            base=model_pb2.BASE_MODEL_TYPE_SD_1,
            type=model_pb2.MODEL_TYPE_MAIN,
            format=model_pb2.MODEL_FORMAT_CHECKPOINT,
            path="sd-1/main/a.safetensors",
        )
        records.CreateModel(records_pb.CreateModelRequest(model=model), timeout=30)
        listed = records.ListModels(records_pb.ListModelsRequest(), timeout=30)
    assert [m.name for m in listed.models] == ["still here"]
    assert first.process.poll() is None


def test_a_config_class_is_picked_by_type_and_format(store: ModelRecordStore):
    added = store.add(config(type="main", format="checkpoint"))
    assert isinstance(store.get(added.key), MainCheckpointConfig)


def test_two_postgres_stores_on_one_database_never_register_a_path_twice(postgres_url: str):
    """Replicas of the model manager share one database: a path one of them takes while the
    other checks it is still refused, with the same error as one taken before."""
    stores = [open_record_store(Path("unused.db"), postgres_url) for _ in range(2)]
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def add(index: int) -> None:
        start.wait()
        try:
            stores[index % 2].add(config(name=f"n{index}", path="same.safetensors"))
            outcomes.append("added")
        except errors.AlreadyExistsError as error:
            outcomes.append(error.reason)

    threads = [threading.Thread(target=add, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(outcomes) == ["MODEL_PATH_ALREADY_REGISTERED"] * 7 + ["added"]
        assert [store.count() for store in stores] == [1, 1]
    finally:
        for store in stores:
            store.close()
