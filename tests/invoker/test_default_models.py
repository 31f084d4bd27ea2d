"""The model a model input left empty takes, against a real model manager process: the
default set through InvocationService, else the `default_models` setting, else the only
installed model of that type, else MISSING_REQUIRED_INPUT naming the field; the setting as
the environment gives it; and SetDefaultModel / DeleteDefaultModel / ListDefaultModels
through a real invoker, kept across its restart."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from easel.invoker.v1 import invocation_service_pb2 as pb
from easel.model_manager.v1 import model_pb2 as m
from services.common import errors
from services.common.model_taxonomy import ModelType
from services.common.settings import CommonSettings
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.invocations.model_defaults import DefaultModels, open_default_model_store
from services.invoker.sessions.writer import database_writer
from services.invoker.settings import InvokerSettings
from tests.conftest import SUITE_TOKEN
from tests.model_fixtures import ModelZoo
from tests.model_records import register_model
from tests.processes import client_settings, start_service, suite_env, wait_serving


@dataclass
class Installed:
    settings: CommonSettings
    mains: list[str]
    upscaler: str
    env: dict[str, str]
    folder: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo) -> Iterator[Installed]:
    """Two main models and one upscaler registered in a model manager."""
    folder = tmp_path_factory.mktemp("default_models")
    root = folder / "root"
    root.mkdir()
    env = suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)
    manager = start_service("model_manager", env, folder)
    try:
        wait_serving(manager)
        with EaselClient(client_settings(env)) as client:
            diffusers = {
                "type": m.MODEL_TYPE_MAIN,
                "format": m.MODEL_FORMAT_DIFFUSERS,
                "base": m.BASE_MODEL_TYPE_SD_1,
            }
            mains = [
                register_model(
                    client,
                    "sd1",
                    model_zoo.sd1_diffusers,
                    repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
                    **diffusers,
                ),
                register_model(
                    client,
                    "sd1-fp16",
                    model_zoo.sd1_diffusers_fp16,
                    repo_variant=m.MODEL_REPO_VARIANT_FP16,
                    **diffusers,
                ),
            ]
            upscaler = register_model(
                client,
                "x4",
                model_zoo.esrgan_x4,
                type=m.MODEL_TYPE_UPSCALER,
                base=m.BASE_MODEL_TYPE_ANY,
                format=m.MODEL_FORMAT_CHECKPOINT,
                upscaler=m.UpscalerSettings(scale=4),
            )
        yield Installed(client_settings(env), mains, upscaler, env, folder)
    finally:
        manager.stop()


WRITER = database_writer()
"""The writer thread of the tests' SQLite files."""


async def defaults(path: Path, configured: dict[ModelType, str] | None = None) -> DefaultModels:
    store = await open_default_model_store("sqlite:", path, WRITER)
    return await DefaultModels.open(store, configured or {})


async def test_the_configured_default_wins_over_several_installed(
    installed: Installed, tmp_path: Path
) -> None:
    chosen = installed.mains[1]
    models = ModelRecordsClient(
        installed.settings, await defaults(tmp_path / "s.db", {ModelType.MAIN: chosen})
    )
    try:
        assert await models.default_key("model", ModelType.MAIN) == chosen
        assert await models.default_key("upscale_model", ModelType.UPSCALER) == installed.upscaler
    finally:
        await models.close()


async def test_a_set_default_wins_over_the_setting_at_once_and_clearing_it_restores_it(
    installed: Installed, tmp_path: Path
) -> None:
    configured, chosen = installed.mains
    chosen_defaults = await defaults(tmp_path / "s.db", {ModelType.MAIN: configured})
    models = ModelRecordsClient(installed.settings, chosen_defaults)
    try:
        await chosen_defaults.set(ModelType.MAIN, chosen, ModelType.MAIN)
        assert await models.default_key("model", ModelType.MAIN) == chosen
        await chosen_defaults.delete(ModelType.MAIN)
        assert await models.default_key("model", ModelType.MAIN) == configured
    finally:
        await models.close()


async def test_without_a_configured_default_the_only_installed_model_is_taken(
    installed: Installed,
) -> None:
    models = ModelRecordsClient(installed.settings)
    try:
        assert await models.default_key("upscale_model", ModelType.UPSCALER) == installed.upscaler
    finally:
        await models.close()


@pytest.mark.parametrize(
    ("field", "model_type", "found"),
    [("model", ModelType.MAIN, "2 are installed"), ("vae", ModelType.VAE, "none is installed")],
)
async def test_several_or_no_installed_models_without_a_default_are_refused(
    installed: Installed, field: str, model_type: ModelType, found: str
) -> None:
    models = ModelRecordsClient(installed.settings)
    try:
        with pytest.raises(errors.InvalidArgumentError) as caught:
            await models.default_key(field, model_type)
    finally:
        await models.close()
    assert caught.value.reason == "MISSING_REQUIRED_INPUT"
    assert caught.value.violations[0].field == field
    assert found in caught.value.message


def test_the_setting_reads_a_json_mapping_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EASEL_ROOT", str(tmp_path))
    monkeypatch.setenv("EASEL_DEFAULT_MODELS", '{"main": "k1", "upscaler": "k2"}')
    settings = InvokerSettings.load([])
    assert settings.default_models == {ModelType.MAIN: "k1", ModelType.UPSCALER: "k2"}

    monkeypatch.setenv("EASEL_DEFAULT_MODELS", '{"checkpoint": "k1"}')
    with pytest.raises(errors.InvalidArgumentError) as caught:
        InvokerSettings.load([])
    assert caught.value.violations[0].field == "default_models"


@pytest.fixture
def invoker_env(installed: Installed, tmp_path: Path) -> dict[str, str]:
    """An invoker of its own (its own sessions file) beside the module's model manager,
    whose `default_models` setting names the first main model."""
    return {
        **installed.env,
        "EASEL_SESSIONS_DB": str(tmp_path / "sessions.db"),
        "EASEL_DEFAULT_MODELS": f'{{"main": "{installed.mains[0]}"}}',
    }


@contextmanager
def running_invoker(env: dict[str, str], log_dir: Path) -> Iterator[EaselClient]:
    service = start_service("invoker", {**env, "EASEL_INVOKER_ADDRESS": "127.0.0.1:0"}, log_dir)
    try:
        wait_serving(service)
        with EaselClient(client_settings(service.env)) as client:
            yield client
    finally:
        service.stop()


def listed(client: EaselClient) -> dict[int, tuple[str, int]]:
    reply = client.invocations.ListDefaultModels(pb.ListDefaultModelsRequest())
    return {d.model_type: (d.model_key, d.source) for d in reply.default_models}


def test_set_defaults_win_over_the_setting_and_are_kept_across_a_restart(
    installed: Installed, invoker_env: dict[str, str], tmp_path: Path
) -> None:
    configured, chosen = installed.mains
    with running_invoker(invoker_env, tmp_path) as client:
        assert listed(client) == {m.MODEL_TYPE_MAIN: (configured, pb.DEFAULT_MODEL_SOURCE_SETTING)}
        for model_type, key in (
            (m.MODEL_TYPE_MAIN, chosen),
            (m.MODEL_TYPE_UPSCALER, installed.upscaler),
        ):
            request = pb.SetDefaultModelRequest(model_type=model_type, model_key=key)
            default = client.invocations.SetDefaultModel(request).default_model
            assert (default.model_key, default.source) == (key, pb.DEFAULT_MODEL_SOURCE_SET)
            assert default.HasField("update_time")
        expected = {
            m.MODEL_TYPE_MAIN: (chosen, pb.DEFAULT_MODEL_SOURCE_SET),
            m.MODEL_TYPE_UPSCALER: (installed.upscaler, pb.DEFAULT_MODEL_SOURCE_SET),
        }
        assert listed(client) == expected

    with running_invoker(invoker_env, tmp_path) as client:
        assert listed(client) == expected
        request = pb.DeleteDefaultModelRequest(model_type=m.MODEL_TYPE_MAIN)
        now = client.invocations.DeleteDefaultModel(request).default_model
        assert (now.model_key, now.source) == (configured, pb.DEFAULT_MODEL_SOURCE_SETTING)
        request = pb.DeleteDefaultModelRequest(model_type=m.MODEL_TYPE_UPSCALER)
        assert not client.invocations.DeleteDefaultModel(request).HasField("default_model")
        assert listed(client) == {m.MODEL_TYPE_MAIN: (configured, pb.DEFAULT_MODEL_SOURCE_SETTING)}


def test_bad_default_model_requests_are_refused_and_change_nothing(
    installed: Installed, invoker_env: dict[str, str], tmp_path: Path
) -> None:
    with running_invoker(invoker_env, tmp_path) as client:
        before = listed(client)
        set_default = client.invocations.SetDefaultModel

        with pytest.raises(errors.InvalidArgumentError) as caught:
            set_default(
                pb.SetDefaultModelRequest(
                    model_type=m.MODEL_TYPE_UPSCALER, model_key=installed.mains[1]
                )
            )
        assert caught.value.reason == "MODEL_TYPE_MISMATCH"
        assert caught.value.violations[0].field == "model_key"
        assert caught.value.metadata == {"model_type": "upscaler", "actual_type": "main"}

        with pytest.raises(errors.NotFoundError) as caught:
            set_default(pb.SetDefaultModelRequest(model_type=m.MODEL_TYPE_MAIN, model_key="nope"))
        assert caught.value.reason == "MODEL_NOT_FOUND"

        for request, field in (
            (pb.SetDefaultModelRequest(model_key=installed.upscaler), "model_type"),
            (pb.SetDefaultModelRequest(model_type=m.MODEL_TYPE_MAIN), "model_key"),
        ):
            with pytest.raises(errors.InvalidArgumentError) as caught:
                set_default(request)
            assert caught.value.violations[0].field == field

        with pytest.raises(errors.NotFoundError) as caught:
            client.invocations.DeleteDefaultModel(
                pb.DeleteDefaultModelRequest(model_type=m.MODEL_TYPE_MAIN)
            )
        assert caught.value.reason == "DEFAULT_MODEL_NOT_SET"
        assert caught.value.metadata == {"model_type": "main"}
        assert listed(client) == before
