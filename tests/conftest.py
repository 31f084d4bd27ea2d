"""Fixtures shared by the suite: real service processes on loopback, each with its own root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ServiceProcess, start_service, suite_env


@pytest.fixture
def easel_env(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "root"
    root.mkdir()
    return suite_env(root)


@pytest.fixture
def run_service(easel_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Start services by name; every one still running is stopped after the test."""
    started: list[ServiceProcess] = []

    def run(name: str, args: list[str] | None = None, env: dict[str, str] | None = None):
        service = start_service(name, env or easel_env, tmp_path, args)
        started.append(service)
        return service

    yield run
    for service in started:
        service.stop()
