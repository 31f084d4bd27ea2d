"""The config hierarchy: a dict validates into the one class its type and format name, and
every problem comes back as a field violation in the caller's terms."""

from __future__ import annotations

from typing import Any

import pytest

from services.common import errors
from services.common.model_taxonomy import HashAlgorithm, ModelFormat, ModelType
from services.model_manager.records.configs import (
    CONFIG_CLASSES,
    FORMATS_BY_TYPE,
    LoraLycorisConfig,
    MainDiffusersConfig,
    parse_config,
)

MINIMAL = {"name": "m", "base": "sd-1", "path": "m"}


def violations(data: dict[str, Any], field: str = "config_dict") -> dict[str, str]:
    with pytest.raises(errors.InvalidArgumentError) as caught:
        parse_config(data, field=field)
    assert caught.value.reason == "INVALID_MODEL_CONFIG"
    return {violation.field: violation.description for violation in caught.value.violations}


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_type_and_format_pick_the_class(cls):
    kind = {"type": cls.model_fields["type"].default, "format": cls.model_fields["format"].default}
    assert type(parse_config({**MINIMAL, **kind})) is cls
    assert type(parse_config({**MINIMAL, **{k: str(v) for k, v in kind.items()}})) is cls


def test_every_type_has_a_class_and_every_class_its_own_pair():
    assert set(FORMATS_BY_TYPE) == set(ModelType)
    assert all(FORMATS_BY_TYPE.values())
    pairs = [
        (c.model_fields["type"].default, c.model_fields["format"].default) for c in CONFIG_CLASSES
    ]
    assert len(set(pairs)) == len(pairs) == 14


def test_a_pair_no_class_covers_names_the_formats_of_the_type():
    found = violations({**MINIMAL, "type": "lora", "format": "checkpoint"})
    assert found == {"config_dict.format": "a lora model's format is one of: lycoris, diffusers"}


@pytest.mark.parametrize("kind", [{}, {"type": "checkpoint", "format": "diffusers"}])
def test_a_missing_or_unknown_type_is_named(kind: dict[str, str]):
    assert list(violations({**MINIMAL, **kind})) == ["config_dict.type"]


def test_each_bad_field_is_one_violation():
    found = violations(
        {
            "type": "main",
            "format": "diffusers",
            "base": "sd-3",
            "path": "",
            "variant": "wide",
            "bogus": 1,
            "tags": ["a", ""],
        },
        field="model",
    )
    assert set(found) == {
        "model.name",
        "model.base",
        "model.path",
        "model.variant",
        "model.bogus",
        "model.tags",
    }
    assert found["model.bogus"] == "not a field of main models in diffusers format"
    assert "'sd-1'" in found["model.base"]


def test_settings_of_another_type_or_format_are_refused():
    assert list(violations({**MINIMAL, "type": "vae", "format": "diffusers", "scale": 2})) == [
        "config_dict.scale"
    ]
    diffusers = {**MINIMAL, "type": "main", "format": "diffusers", "config_path": "x.yaml"}
    assert list(violations(diffusers)) == ["config_dict.config_path"]
    checkpoint = {**MINIMAL, "type": "main", "format": "checkpoint", "repo_variant": "fp16"}
    assert list(violations(checkpoint)) == ["config_dict.repo_variant"]


@pytest.mark.parametrize(
    ("hash_", "algorithm"),
    [("", None), ("blake3:" + "0f" * 32, HashAlgorithm.BLAKE3), ("sha256:" + "a" * 64, "sha256")],
)
def test_the_hash_algorithm_is_its_prefix(hash_: str, algorithm: HashAlgorithm | None):
    config = parse_config({**MINIMAL, "type": "lora", "format": "lycoris", "hash": hash_})
    assert config.hash_algorithm == algorithm


@pytest.mark.parametrize(
    "hash_", ["md5:" + "0" * 32, "blake3:" + "0" * 63, "blake3:" + "A" * 64, "0" * 64]
)
def test_a_malformed_hash_is_refused(hash_: str):
    assert list(violations({**MINIMAL, "type": "vae", "format": "checkpoint", "hash": hash_})) == [
        "config_dict.hash"
    ]


@pytest.mark.parametrize("key", ["", "has space", "x" * 65, "slash/key"])
def test_a_malformed_key_is_refused(key: str):
    assert list(violations({**MINIMAL, "type": "vae", "format": "checkpoint", "key": key})) == [
        "config_dict.key"
    ]


def test_keys_are_random_32_hex_characters_unless_chosen():
    made = {parse_config({**MINIMAL, "type": "vae", "format": "checkpoint"}).key for _ in range(50)}
    assert len(made) == 50
    assert all(len(key) == 32 and key == key.lower() and int(key, 16) >= 0 for key in made)
    chosen = parse_config({**MINIMAL, "type": "vae", "format": "checkpoint", "key": "my-vae_1"})
    assert chosen.key == "my-vae_1"


def test_tags_are_a_set_in_first_seen_order():
    config = parse_config({**MINIMAL, "type": "lora", "format": "lycoris", "tags": list("abab")})
    assert isinstance(config, LoraLycorisConfig)
    assert config.tags == ["a", "b"]


def test_the_source_api_response_must_be_json():
    kind = {**MINIMAL, "type": "main", "format": "diffusers"}
    ok = parse_config({**kind, "source_api_response": '{"id": "org/model"}'})
    assert isinstance(ok, MainDiffusersConfig)
    assert list(violations({**kind, "source_api_response": "{not json"})) == [
        "config_dict.source_api_response"
    ]


def test_defaults_of_a_main_model():
    config = parse_config({**MINIMAL, "type": ModelType.MAIN, "format": ModelFormat.DIFFUSERS})
    assert (config.variant, config.prediction_type, config.upcast_attention) == (None, None, False)
    assert (config.default_width, config.default_height, config.repo_variant) == (0, 0, "default")
