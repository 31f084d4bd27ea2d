"""`easel status` and `easel cache` against the four real services: every service's address
and health, the model cache's use and its models, and clearing it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from clients.sdk import EaselClient
from easel.inference.v1 import model_cache_service_pb2 as cache_pb
from tests.cli.conftest import Easel
from tests.model_fixtures import ModelZoo
from tests.model_records import register_upscaler
from tests.processes import SERVICE_MODULES, client_settings, free_port, wait_serving
from tests.running_suite import running_suite


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The four services of one suite, for the whole module."""
    with running_suite(tmp_path_factory.mktemp("cli_suite"), SERVICE_MODULES) as suite:
        yield suite.env


def test_status_shows_every_service_serving_at_its_address(env: dict[str, str]):
    easel = Easel(env)
    services = easel.json("status")
    assert {entry["service"]: entry["status"] for entry in services} == dict.fromkeys(
        SERVICE_MODULES, "SERVING"
    )
    addresses = {entry["service"]: entry["address"] for entry in services}
    assert addresses == {name: env[f"EASEL_{name.upper()}_ADDRESS"] for name in SERVICE_MODULES}
    table = easel.ok("status").stdout
    assert "model manager" in table
    assert env["EASEL_INFERENCE_ADDRESS"] in table


def test_cache_stats_list_the_loaded_models_and_clear_empties_it(
    env: dict[str, str], model_zoo: ModelZoo
):
    easel = Easel(env)
    with EaselClient(client_settings(env)) as sdk:
        key = register_upscaler(sdk, "x4", model_zoo.esrgan_x4, 4)
        sdk.model_cache.LoadModel(cache_pb.LoadModelRequest(key=key))

    stats = easel.json("cache", "stats")
    assert stats["stats"]["loaded_model_count"] == 1
    assert [model["key"] for model in stats["models"]] == [key]
    assert key in easel.ok("cache", "stats").stdout

    assert "unloaded 1 model" in easel.ok("cache", "clear").stdout
    stats = easel.json("cache", "stats")
    assert (stats["stats"]["loaded_model_count"], stats["models"]) == (0, [])


def test_status_exits_4_naming_the_services_down(run_service, easel_env, easel: Easel):
    wait_serving(run_service("downloader"))
    wait_serving(run_service("model_manager"))
    for name in ("invoker", "inference"):  # never started: nothing listens there
        easel_env[f"EASEL_{name.upper()}_ADDRESS"] = f"127.0.0.1:{free_port()}"

    down = easel("status", "--json")
    assert down.exit_code == 4
    assert {entry["service"]: entry["status"] for entry in json.loads(down.stdout)} == {
        "invoker": "UNREACHABLE",
        "model_manager": "SERVING",
        "downloader": "SERVING",
        "inference": "UNREACHABLE",
    }
    assert "not serving: invoker, inference" in down.stderr


def test_models_default_sets_lists_and_clears_the_default_of_a_type(
    env: dict[str, str], model_zoo: ModelZoo
):
    easel = Easel(env)
    with EaselClient(client_settings(env)) as sdk:
        key = register_upscaler(sdk, "x2", model_zoo.esrgan_x2, 2)
    assert "is the default upscaler model" in easel.ok("models", "default", key).stdout
    [default] = easel.json("models", "defaults")
    assert (default["model_type"], default["model_key"], default["source"]) == (
        "MODEL_TYPE_UPSCALER",
        key,
        "DEFAULT_MODEL_SOURCE_SET",
    )
    assert key in easel.ok("models", "defaults").stdout

    easel.ok("models", "clear-default", "upscaler")
    assert easel.json("models", "defaults") == []
    assert easel("models", "clear-default", "upscaler").exit_code == 3
    assert easel("models", "default", "no-such-key").exit_code == 3
