"""The four services as real processes, shared by the SDK suites that need them, with the
tiny SD-1 model registered as the only main model (so txt2img takes it by default)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from services.common.settings import CommonSettings
from tests.conftest import SUITE_TOKEN
from tests.model_fixtures import ModelZoo
from tests.model_records import register_model
from tests.processes import SERVICE_MODULES, client_settings, start_service, suite_env, wait_serving


@dataclass
class Services:
    env: dict[str, str]
    root: Path
    sd1: str
    """Key of the tiny SD-1 main model."""

    @property
    def settings(self) -> CommonSettings:
        return client_settings(self.env)


@pytest.fixture(scope="package")
def services(tmp_path_factory: pytest.TempPathFactory, model_zoo: ModelZoo) -> Iterator[Services]:
    folder = tmp_path_factory.mktemp("sdk")
    root = folder / "root"
    root.mkdir()
    env = suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)
    started = []
    try:
        for name in SERVICE_MODULES:
            started.append(start_service(name, env, folder))
        for service in started:
            wait_serving(service)
        with EaselClient(client_settings(env)) as client:
            sd1 = register_model(
                client,
                "sd1",
                model_zoo.sd1_diffusers,
                base=m.BASE_MODEL_TYPE_SD_1,
                type=m.MODEL_TYPE_MAIN,
                format=m.MODEL_FORMAT_DIFFUSERS,
                repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
            )
        yield Services(env, root, sd1)
    finally:
        for service in reversed(started):
            service.stop()
