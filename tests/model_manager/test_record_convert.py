"""The one place where protobuf meets the domain: every enum value crosses, every config
class survives message -> domain -> message, and typed configs, dicts and masks become the
same sparse changes."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as pb
from services.common import errors
from services.common.model_taxonomy import ModelType
from services.model_manager import record_convert as convert
from services.model_manager.records.configs import CONFIG_CLASSES, parse_config


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


@pytest.mark.parametrize(
    "enum", list(convert.ENUMS.values()), ids=lambda e: e.proto.DESCRIPTOR.name
)
def test_every_enum_value_crosses_both_ways(enum: convert.EnumMap):
    numbers = [value.number for value in enum.proto.DESCRIPTOR.values if value.number != 0]
    assert sorted(enum.to_pb(enum.from_pb(number)) for number in numbers) == sorted(numbers)
    assert enum.from_pb(0) is None
    assert enum.to_pb(None) == 0
    for value in enum.proto.DESCRIPTOR.values[1:]:
        assert enum.string_form(value.name) == enum.from_pb(value.number).value
    assert enum.string_form(enum.proto.DESCRIPTOR.values[0].name) is None


def test_every_type_has_its_settings_case():
    oneof = m.ModelConfig.DESCRIPTOR.oneofs_by_name["settings"]
    assert sorted(convert.SETTINGS_CASE.values()) == sorted(f.name for f in oneof.fields)
    assert convert.SETTINGS_CASE[ModelType.TEXTUAL_INVERSION] == "textual_inversion"


def full_dict(cls: type) -> dict[str, Any]:
    """A config dict of `cls` with every settings field set to something not default."""
    data: dict[str, Any] = {
        "type": cls.model_fields["type"].default,
        "format": cls.model_fields["format"].default,
        "key": "k1",
        "name": "name",
        "description": "about",
        "base": "sdxl",
        "path": "some/path",
        "hash": "blake3:" + "1" * 64,
        "source": "org/repo",
        "source_type": "hf_repo_id",
        "source_api_response": '{"id": "org/repo"}',
        "tags": ["b", "a"],
    }
    settings = {
        "repo_variant": "fp16",
        "variant": "depth",
        "prediction_type": "sample",
        "upcast_attention": True,
        "config_path": "configs/x.yaml",
        "vae_path": "vae.safetensors",
        "default_width": 1024,
        "default_height": 768,
        "image_encoder_model_id": "org/encoder",
        "scale": 4,
    }
    data.update((name, value) for name, value in settings.items() if name in cls.model_fields)
    return data


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_config_survives_the_message_and_back(cls: type):
    config = parse_config(full_dict(cls))
    message = convert.config_to_pb(config)
    assert message.WhichOneof("settings") == convert.SETTINGS_CASE[config.type]
    assert message.hash_algorithm == m.HASH_ALGORITHM_BLAKE3
    assert message.create_time.ToDatetime().replace(tzinfo=None) == config.create_time.replace(
        tzinfo=None
    )
    created = convert.new_config(pb.CreateModelRequest(model=message))
    assert created.model_dump(exclude={"create_time", "update_time"}) == config.model_dump(
        exclude={"create_time", "update_time"}
    )


def test_a_config_dict_takes_enum_names_and_ignores_output_only_keys():
    created = convert.new_config(
        pb.CreateModelRequest(
            key="chosen",
            config_dict=struct(
                name="x",
                base="BASE_MODEL_TYPE_SDXL",
                type="MODEL_TYPE_MAIN",
                format="checkpoint",
                path="x.safetensors",
                variant="MODEL_VARIANT_TYPE_UNSPECIFIED",
                prediction_type="SCHEDULER_PREDICTION_TYPE_V_PREDICTION",
                default_width=512,
                hash_algorithm="HASH_ALGORITHM_SHA256",
                create_time="2001-01-01T00:00:00Z",
                description=None,
            ),
        )
    )
    assert (created.key, created.base, created.variant) == ("chosen", "sdxl", None)
    assert (created.prediction_type, created.default_width) == ("v_prediction", 512)
    assert created.create_time.year > 2001


def violation_fields(call, request) -> list[str]:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        call(request)
    assert caught.value.reason == "INVALID_MODEL_CONFIG"
    return [violation.field for violation in caught.value.violations]


MAIN = m.ModelConfig(
    name="x", base=m.BASE_MODEL_TYPE_SD_1, type=m.MODEL_TYPE_MAIN, format=m.MODEL_FORMAT_DIFFUSERS
)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.CreateModelRequest(), ["config"]),
        (pb.CreateModelRequest(key="bad key", model=MAIN), ["key"]),
        (pb.CreateModelRequest(key="a", config_dict=struct(key="b")), ["config_dict.key"]),
        (pb.CreateModelRequest(model=MAIN), ["model.path"]),
        (pb.CreateModelRequest(model=m.ModelConfig(path="p")), ["model.type"]),
        (
            pb.CreateModelRequest(model=m.ModelConfig(type=m.MODEL_TYPE_VAE, main={})),
            ["model.main"],
        ),
        (
            pb.CreateModelRequest(
                model=m.ModelConfig(
                    name="x",
                    base=99,
                    path="p",
                    type=m.MODEL_TYPE_MAIN,
                    format=m.MODEL_FORMAT_DIFFUSERS,
                    main=m.MainModelSettings(config_path="c.yaml", variant=7),
                )
            ),
            ["model.base", "model.main.variant", "model.main.config_path"],
        ),
    ],
)
def test_create_violations_name_the_request_fields(request_, fields: list[str]):
    assert violation_fields(convert.new_config, request_) == fields


def update(**fields: Any) -> pb.UpdateModelRequest:
    return pb.UpdateModelRequest(key="k1", **fields)


def test_a_mask_picks_fields_and_resets_those_left_at_the_proto_default():
    model = m.ModelConfig(
        name="new",
        tags=["t"],
        main=m.MainModelSettings(prediction_type=m.SCHEDULER_PREDICTION_TYPE_EPSILON),
    )
    paths = ["name", "tags", "description", "main.prediction_type", "main.variant", "create_time"]
    changes, field = convert.update_changes(
        update(model=model, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )
    assert field == "model"
    assert changes == {
        "name": "new",
        "tags": ["t"],
        "description": None,
        "prediction_type": "epsilon",
        "variant": None,
    }


def test_a_settings_case_in_a_mask_means_all_its_fields():
    mask = field_mask_pb2.FieldMask(paths=["upscaler"])
    changes, _ = convert.update_changes(
        update(model=m.ModelConfig(upscaler=m.UpscalerSettings(scale=2)), update_mask=mask)
    )
    assert changes == {"scale": 2}


def test_a_typed_config_without_a_mask_replaces_every_field():
    changes, _ = convert.update_changes(update(model=m.ModelConfig(key="k1", name="only")))
    assert changes["name"] == "only"
    assert "key" not in changes
    assert {name for name, value in changes.items() if value is not None} == {"name"}
    assert {"variant", "scale", "tags", "path", "type"} <= set(changes)


def test_a_config_dict_is_a_sparse_change():
    changes, field = convert.update_changes(
        update(config_dict=struct(name="x", variant=None, base="BASE_MODEL_TYPE_SD_2"))
    )
    assert (changes, field) == ({"name": "x", "variant": None, "base": "sd-2"}, "config_dict")


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (update(), ["config"]),
        (update(model=m.ModelConfig(key="other")), ["model.key"]),
        (
            update(
                config_dict=struct(name="x"), update_mask=field_mask_pb2.FieldMask(paths=["name"])
            ),
            ["update_mask"],
        ),
        (
            update(model=MAIN, update_mask=field_mask_pb2.FieldMask(paths=["nmae", "main.scale"])),
            ["update_mask", "update_mask"],
        ),
    ],
)
def test_update_violations_name_the_request_fields(request_, fields: list[str]):
    assert violation_fields(convert.update_changes, request_) == fields


def test_list_filters_and_their_fingerprint():
    query = convert.model_query(
        pb.ListModelsRequest(name="n", base=m.BASE_MODEL_TYPE_SDXL, tags=["b", "a", "b"])
    )
    assert (query.name, query.base, query.type, query.tags) == ("n", "sdxl", None, ("a", "b"))
    same = convert.model_query(
        pb.ListModelsRequest(name="n", base=m.BASE_MODEL_TYPE_SDXL, tags=["a", "b"], page_size=5)
    )
    assert convert.query_fingerprint(query) == convert.query_fingerprint(same)
