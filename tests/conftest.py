"""Fixtures shared by the suite: real service processes on loopback, each with its own root.

Every suite of processes requires a bearer token, so every call a test makes and every
call one service makes to another goes through authentication.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.model_fixtures import ModelZoo
from tests.postgres import TestPostgres
from tests.processes import STARTED, ServiceProcess, address_key, start_service, suite_env

SUITE_TOKEN = "easel-suite-token"


@pytest.fixture(autouse=True)
def _stop_services_left_running() -> Iterator[None]:
    """Stop every service a test or its fixtures started and left running, a fixture whose
    set-up failed half way included."""
    first = len(STARTED)
    yield
    for service in STARTED[first:]:
        service.stop()
    del STARTED[first:]


@pytest.fixture
def easel_env(tmp_path: Path) -> dict[str, str]:
    """The suite's environment; each service started from it records its address here."""
    root = tmp_path / "root"
    root.mkdir()
    return suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)


@pytest.fixture
def run_service(easel_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Start services by name; every one still running is stopped after the test.

    A service that bound its address, even one started with an `env` of its own, is
    recorded in `easel_env`, so clients made from `easel_env` find it.
    """
    started: list[ServiceProcess] = []

    def run(name: str, args: list[str] | None = None, env: dict[str, str] | None = None):
        service = start_service(name, easel_env if env is None else env, tmp_path, args)
        started.append(service)
        if service.bound:
            easel_env[address_key(name)] = service.address
        return service

    yield run
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory: pytest.TempPathFactory) -> ModelZoo:
    """Every fixture model, each built on first use and shared by the whole session."""
    return ModelZoo(Path(tmp_path_factory.mktemp("model_zoo")))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TestPostgres]:
    """The run's PostgreSQL server, started when a test first asks for a database."""
    server = TestPostgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: TestPostgres) -> str:
    """The URL of an empty PostgreSQL database of this test's own."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The `database_url` setting, once for each engine: a test asking for it runs twice."""
    if request.param == "sqlite":
        return "sqlite:"
    return request.getfixturevalue("postgres_url")
