"""The four services as real processes, shared by the SDK suites that need them, with the
tiny SD-1 model registered as the only main model (so txt2img takes it by default)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.sdk import EaselClient
from services.common.settings import CommonSettings
from tests.model_fixtures import ModelZoo
from tests.model_records import register_sd1
from tests.processes import SERVICE_MODULES, client_settings
from tests.running_suite import running_suite


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
    with running_suite(tmp_path_factory.mktemp("sdk"), SERVICE_MODULES) as suite:
        with EaselClient(suite.settings) as client:
            sd1 = register_sd1(client, model_zoo)
        yield Services(suite.env, suite.root, sd1)
