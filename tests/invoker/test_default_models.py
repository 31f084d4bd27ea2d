"""The model a model input left empty takes, against a real model manager process: the
configured default of its type, else the only installed model of that type, else
MISSING_REQUIRED_INPUT naming the field; and the setting as the environment gives it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from services.common import errors
from services.common.model_taxonomy import ModelType
from services.common.settings import CommonSettings
from services.invoker.clients.model_records import ModelRecordsClient
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
        yield Installed(client_settings(env), mains, upscaler)
    finally:
        manager.stop()


async def test_the_configured_default_wins_over_several_installed(installed: Installed) -> None:
    chosen = installed.mains[1]
    models = ModelRecordsClient(installed.settings, configured={ModelType.MAIN: chosen})
    try:
        assert await models.default_key("model", ModelType.MAIN) == chosen
        assert await models.default_key("upscale_model", ModelType.UPSCALER) == installed.upscaler
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
