"""The model manager's settings: its folders and store file resolve against the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.model_manager.settings import ModelManagerSettings


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("EASEL_MODELS_DIR", "EASEL_MODEL_CONFIG_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EASEL_ROOT", str(tmp_path))
    return tmp_path


def test_defaults_lie_under_the_root(root: Path):
    settings = ModelManagerSettings.load([])
    assert settings.models_dir == root / "models"
    assert settings.model_config_db == root / "databases" / "models.db"


def test_relative_values_are_relative_to_the_root_absolute_ones_kept(
    root: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (root / "easel.yaml").write_text(f"models_dir: {elsewhere}\n")
    monkeypatch.setenv("EASEL_MODEL_CONFIG_DB", "records/models.yaml")
    settings = ModelManagerSettings.load([])
    assert settings.models_dir == elsewhere
    assert settings.model_config_db == root / "records" / "models.yaml"
    flagged = ModelManagerSettings.load(["--model-config-db", "../shared.db"])
    assert flagged.model_config_db == root.parent / "shared.db"
