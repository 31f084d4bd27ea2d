"""ModelRecordService over the wire: a real model_manager process on loopback, called
through the SDK, which raises the domain error each status (and its details) stands for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common import errors
from tests.processes import client_settings, wait_serving

SHA = "sha256:" + "e3" * 32


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=paths)


def main_model(**fields: Any) -> m.ModelConfig:
    values = {
        "name": "sd15",
        "base": m.BASE_MODEL_TYPE_SD_1,
        "type": m.MODEL_TYPE_MAIN,
        "format": m.MODEL_FORMAT_CHECKPOINT,
        "path": "sd-1/main/sd15.safetensors",
        **fields,
    }
    return m.ModelConfig(**values)


def connect(easel_env: dict[str, str]) -> EaselClient:
    return EaselClient(client_settings(easel_env))  # the suite's addresses and token


@pytest.fixture
def records(run_service, easel_env: dict[str, str]) -> Iterator[Any]:
    """The ModelRecordService stub of a fresh model_manager process."""
    wait_serving(run_service("model_manager"))
    with connect(easel_env) as client:
        yield client.model_records


def create(records, **fields: Any) -> m.ModelConfig:
    return records.CreateModel(pb.CreateModelRequest(model=main_model(**fields))).model


def list_keys(records, **filters: Any) -> list[str]:
    return [model.key for model in records.ListModels(pb.ListModelsRequest(**filters)).models]


def raised(error_type: type[errors.EaselError], call, request) -> Any:
    with pytest.raises(error_type) as caught:
        call(request)
    return caught.value


def test_create_get_check_and_delete(records):
    settings = m.MainModelSettings(
        variant=m.MODEL_VARIANT_TYPE_INPAINT,
        prediction_type=m.SCHEDULER_PREDICTION_TYPE_V_PREDICTION,
        upcast_attention=True,
        config_path="configs/v2-inference-v.yaml",
        default_width=768,
    )
    created = create(records, hash=SHA, tags=["sfw", "sfw", "v2"], main=settings)
    assert len(created.key) == 32
    assert (created.hash, created.hash_algorithm) == (SHA, m.HASH_ALGORITHM_SHA256)
    assert list(created.tags) == ["sfw", "v2"]
    assert created.main == settings
    assert created.create_time == created.update_time
    assert created.create_time.seconds > 0

    assert records.GetModel(pb.GetModelRequest(key=created.key)).model == created
    assert records.CheckModelExists(pb.CheckModelExistsRequest(key=created.key)).exists
    deleted = records.DeleteModel(pb.DeleteModelRequest(key=created.key)).model
    assert deleted == created

    missing = raised(errors.NotFoundError, records.GetModel, pb.GetModelRequest(key=created.key))
    assert (missing.reason, missing.metadata) == ("MODEL_NOT_FOUND", {"key": created.key})
    assert not records.CheckModelExists(pb.CheckModelExistsRequest(key=created.key)).exists
    raised(errors.NotFoundError, records.DeleteModel, pb.DeleteModelRequest(key=created.key))
    for call, request in [
        (records.GetModel, pb.GetModelRequest()),
        (records.CheckModelExists, pb.CheckModelExistsRequest()),
        (records.DeleteModel, pb.DeleteModelRequest()),
    ]:
        assert [v.field for v in raised(errors.InvalidArgumentError, call, request).violations] == [
            "key"
        ]


def test_create_from_a_config_dict_with_a_chosen_key(records):
    config = struct(
        name="encoder",
        base="any",
        type="MODEL_TYPE_CLIP_VISION",
        format="diffusers",
        path="/abs/encoder",
        source="InvokeAI/ip_adapter_sd_image_encoder",
        source_type="hf_repo_id",
        repo_variant="fp16",
    )
    created = records.CreateModel(pb.CreateModelRequest(key="encoder-1", config_dict=config)).model
    assert created.key == "encoder-1"
    assert created.type == m.MODEL_TYPE_CLIP_VISION
    assert created.repo_variant == m.MODEL_REPO_VARIANT_FP16
    assert created.source_type == m.SOURCE_TYPE_HF_REPO_ID
    assert created.WhichOneof("settings") == "clip_vision"


def test_rejected_creates_say_why_and_leave_nothing(records):
    first = create(records, key="taken")
    duplicate_key = raised(
        errors.AlreadyExistsError,
        records.CreateModel,
        pb.CreateModelRequest(key="taken", model=main_model(path="other.safetensors")),
    )
    assert (duplicate_key.reason, duplicate_key.metadata) == (
        "MODEL_ALREADY_EXISTS",
        {"key": "taken"},
    )
    duplicate_path = raised(
        errors.AlreadyExistsError, records.CreateModel, pb.CreateModelRequest(model=main_model())
    )
    assert duplicate_path.reason == "MODEL_PATH_ALREADY_REGISTERED"
    assert duplicate_path.metadata == {"path": first.path, "key": "taken"}

    invalid = raised(
        errors.InvalidArgumentError,
        records.CreateModel,
        pb.CreateModelRequest(config_dict=struct(type="lora", format="lycoris", base="sd-3", x=1)),
    )
    assert invalid.reason == "INVALID_MODEL_CONFIG"
    assert {v.field for v in invalid.violations} == {
        "config_dict.name",
        "config_dict.base",
        "config_dict.path",
        "config_dict.x",
    }
    typed = raised(
        errors.InvalidArgumentError,
        records.CreateModel,
        pb.CreateModelRequest(
            model=main_model(path="new", hash="md5:0", main=m.MainModelSettings(variant=9))
        ),
    )
    assert [v.field for v in typed.violations] == ["model.hash", "model.main.variant"]
    mismatch = raised(
        errors.InvalidArgumentError,
        records.CreateModel,
        pb.CreateModelRequest(model=main_model(path="new", vae=m.VaeSettings())),
    )
    assert [v.field for v in mismatch.violations] == ["model.vae"]

    listed = records.ListModels(pb.ListModelsRequest())
    assert [model.key for model in listed.models] == ["taken"]
    assert listed.total_size == 1


def test_list_filters_pages_and_tokens(records):
    for index in range(7):
        create(records, key=f"k{index}", name=f"n{index % 3}", path=f"{index}", tags=["all"])
    lora = {"type": m.MODEL_TYPE_LORA, "format": m.MODEL_FORMAT_LYCORIS, "source": "org/lora"}
    create(records, key="lora", name="n0", path="lora", tags=["all", "style"], hash=SHA, **lora)
    xl = {"base": m.BASE_MODEL_TYPE_SDXL, "format": m.MODEL_FORMAT_DIFFUSERS}
    create(records, key="xl", name="n9", path="xl", tags=["style"], **xl)

    assert list_keys(records, name="n0") == ["k0", "k3", "k6", "lora"]
    assert list_keys(records, base=m.BASE_MODEL_TYPE_SDXL) == ["xl"]
    assert list_keys(records, type=m.MODEL_TYPE_LORA) == ["lora"]
    assert list_keys(records, format=m.MODEL_FORMAT_DIFFUSERS) == ["xl"]
    assert list_keys(records, path="4") == ["k4"]
    assert list_keys(records, tags=["style"]) == ["lora", "xl"]
    assert list_keys(records, tags=["style", "all"]) == ["lora"]
    assert list_keys(records, hash=SHA) == ["lora"]
    assert list_keys(records, source="org/lora") == ["lora"]
    assert list_keys(records, name="n0", type=m.MODEL_TYPE_MAIN) == ["k0", "k3", "k6"]

    pages, token = [], ""
    while True:
        page = records.ListModels(pb.ListModelsRequest(tags=["all"], page_size=3, page_token=token))
        assert page.total_size == 8
        pages.append([model.key for model in page.models])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["k0", "k3", "k6"], ["lora", "k1", "k4"], ["k2", "k5"]]
    assert len(records.ListModels(pb.ListModelsRequest()).models) == 9  # page_size 0: 100

    second = records.ListModels(pb.ListModelsRequest(tags=["all"], page_size=3)).next_page_token
    for request in [
        pb.ListModelsRequest(tags=["style"], page_size=3, page_token=second),
        pb.ListModelsRequest(page_token="not-a-token"),
    ]:
        bad = raised(errors.InvalidArgumentError, records.ListModels, request)
        assert bad.reason == "INVALID_PAGE_TOKEN"
        assert [v.field for v in bad.violations] == ["page_token"]
    negative = raised(
        errors.InvalidArgumentError, records.ListModels, pb.ListModelsRequest(page_size=-1)
    )
    assert [v.field for v in negative.violations] == ["page_size"]


def test_find_model(records):
    only = create(records, name="unique")
    create(records, key="twin-a", name="twin", path="a")
    create(records, key="twin-b", name="twin", path="b")
    find = records.FindModel
    request = pb.FindModelRequest(
        name="unique", base=m.BASE_MODEL_TYPE_SD_1, type=m.MODEL_TYPE_MAIN
    )
    assert find(request).model == only

    request.base = m.BASE_MODEL_TYPE_SDXL
    missing = raised(errors.NotFoundError, find, request)
    assert missing.reason == "MODEL_NOT_FOUND"
    assert missing.metadata == {"name": "unique", "base": "sdxl", "type": "main"}

    twin = pb.FindModelRequest(name="twin", base=m.BASE_MODEL_TYPE_SD_1, type=m.MODEL_TYPE_MAIN)
    ambiguous = raised(errors.FailedPreconditionError, find, twin)
    assert ambiguous.reason == "MODEL_AMBIGUOUS"
    assert ambiguous.metadata["keys"] == "twin-a,twin-b"

    incomplete = raised(errors.InvalidArgumentError, find, pb.FindModelRequest(name="twin"))
    assert [v.field for v in incomplete.violations] == ["base", "type"]


def test_update_with_a_mask_a_dict_or_in_full(records):
    created = create(records, tags=["a"], description="first")
    create(records, key="other", path="other.safetensors")
    key = created.key

    masked = records.UpdateModel(
        pb.UpdateModelRequest(
            key=key,
            model=m.ModelConfig(
                name="renamed",
                tags=["b", "c"],
                main=m.MainModelSettings(prediction_type=m.SCHEDULER_PREDICTION_TYPE_EPSILON),
            ),
            update_mask=mask("name", "tags", "main.prediction_type"),
        )
    ).model
    assert (masked.name, list(masked.tags), masked.description) == ("renamed", ["b", "c"], "first")
    assert masked.main.prediction_type == m.SCHEDULER_PREDICTION_TYPE_EPSILON
    assert masked.create_time == created.create_time
    assert masked.update_time.ToNanoseconds() > created.update_time.ToNanoseconds()
    assert list_keys(records, tags=["c"]) == [key]

    sparse = records.UpdateModel(
        pb.UpdateModelRequest(
            key=key, config_dict=struct(description=None, variant="MODEL_VARIANT_TYPE_DEPTH")
        )
    ).model
    assert (sparse.name, sparse.description, sparse.main.variant) == (
        "renamed",
        "",
        m.MODEL_VARIANT_TYPE_DEPTH,
    )

    replaced = records.UpdateModel(
        pb.UpdateModelRequest(key=key, model=main_model(name="whole", path="moved.safetensors"))
    ).model
    assert (replaced.name, replaced.path, list(replaced.tags)) == ("whole", "moved.safetensors", [])
    assert replaced.main == m.MainModelSettings()
    assert records.GetModel(pb.GetModelRequest(key=key)).model == replaced


def test_rejected_updates_say_why_and_change_nothing(records):
    created = create(records, tags=["a"], main=m.MainModelSettings(variant=2))
    other = create(records, key="other", path="other.safetensors")
    update = records.UpdateModel
    failures = [
        (
            errors.NotFoundError,
            pb.UpdateModelRequest(key="nope", config_dict=struct(name="x")),
            "MODEL_NOT_FOUND",
            None,
        ),
        (
            errors.AlreadyExistsError,
            pb.UpdateModelRequest(key=created.key, config_dict=struct(path=other.path)),
            "MODEL_PATH_ALREADY_REGISTERED",
            None,
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(key=created.key, config_dict=struct(base="sd-9", bogus=1)),
            "INVALID_MODEL_CONFIG",
            ["config_dict.bogus", "config_dict.base"],
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(key=created.key, config_dict=struct(key="changed")),
            "INVALID_MODEL_CONFIG",
            ["config_dict.key"],
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(
                key=created.key,
                model=m.ModelConfig(main=m.MainModelSettings(default_width=1), name=""),
                update_mask=mask("name", "main.default_width", "main.nope"),
            ),
            "INVALID_MODEL_CONFIG",
            ["update_mask"],
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(key=created.key, model=m.ModelConfig(), update_mask=mask("name")),
            "INVALID_MODEL_CONFIG",
            ["model.name"],
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(
                key=created.key,
                model=m.ModelConfig(type=m.MODEL_TYPE_VAE, main=m.MainModelSettings(variant=1)),
                update_mask=mask("type", "main.variant"),
            ),
            "INVALID_MODEL_CONFIG",
            ["model.main"],
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(
                key=created.key,
                model=m.ModelConfig(type=m.MODEL_TYPE_VAE),
                update_mask=mask("type"),
            ),
            "INVALID_MODEL_CONFIG",
            ["model.main.variant"],  # a vae has no variant, and the record's stays
        ),
        (
            errors.InvalidArgumentError,
            pb.UpdateModelRequest(
                key=created.key, config_dict=struct(name="x"), update_mask=mask("name")
            ),
            "INVALID_MODEL_CONFIG",
            ["update_mask"],
        ),
    ]
    for error_type, request, reason, fields in failures:
        error = raised(error_type, update, request)
        assert error.reason == reason, request
        if fields is not None:
            assert [v.field for v in error.violations] == fields, request
    assert records.GetModel(pb.GetModelRequest(key=created.key)).model == created
    assert records.GetModel(pb.GetModelRequest(key="other")).model == other


def test_store_info_and_persistence_across_restarts(run_service, easel_env: dict[str, str]):
    root = Path(easel_env["EASEL_ROOT"])
    env = {**easel_env, "EASEL_MODEL_CONFIG_DB": "records/models.yaml"}
    service = run_service("model_manager", env=env)
    wait_serving(service)
    with connect(easel_env) as client:
        created = create(client.model_records)
        info = client.model_records.GetStoreInfo(pb.GetStoreInfoRequest())
    assert info == pb.GetStoreInfoResponse(
        backend=pb.STORE_BACKEND_YAML,
        schema_version="3.2",
        location=str(root / "records" / "models.yaml"),
        model_count=1,
        models_dir=str(root / "models"),
    )
    assert service.stop() == 0

    wait_serving(run_service("model_manager", env=env))
    with connect(easel_env) as client:
        assert client.model_records.GetModel(pb.GetModelRequest(key=created.key)).model == created


def test_the_default_store_is_sqlite_under_the_root(records, easel_env: dict[str, str]):
    info = records.GetStoreInfo(pb.GetStoreInfoRequest())
    assert info.backend == pb.STORE_BACKEND_SQLITE
    assert info.location == str(Path(easel_env["EASEL_ROOT"]) / "databases" / "models.db")
    assert info.model_count == 0


def test_a_store_file_of_the_wrong_kind_stops_the_server(run_service, easel_env: dict[str, str]):
    database = Path(easel_env["EASEL_ROOT"]) / "databases" / "models.db"
    database.parent.mkdir()
    database.write_text("not a database\n" * 100)
    service = run_service("model_manager")
    assert service.process.wait(timeout=30) == 1
    assert "is not a model record store" in service.log()
    assert "INVALID_RECORD_STORE" in service.log()
    assert database.read_text() == "not a database\n" * 100
