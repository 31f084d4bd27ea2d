"""Fixtures for the model manager: the tiny model zoo, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model_fixtures import ModelZoo


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory: pytest.TempPathFactory) -> ModelZoo:
    """Every fixture model, each built on first use and shared by the whole session."""
    return ModelZoo(Path(tmp_path_factory.mktemp("model_zoo")))
