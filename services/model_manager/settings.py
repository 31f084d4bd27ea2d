"""Settings of the model manager process, beside the common ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationInfo, field_validator

from services.common.settings import DEFAULT_ROOT, CommonSettings


class ModelManagerSettings(CommonSettings):
    """What the model manager reads on top of the common settings."""

    models_dir: Path = Path("models")
    """Folder models are installed into, against which relative record paths resolve;
    relative to the root."""

    model_config_db: Path = Path("databases/models.db")
    """The model record store: a SQLite file (.db, .sqlite) or a YAML file (.yaml, .yml),
    chosen by its extension; relative to the root."""

    @field_validator("models_dir", "model_config_db")
    @classmethod
    def _under_root(cls, path: Path, info: ValidationInfo) -> Path:
        """Absolute from here on, so no later use depends on the working directory."""
        root = info.data.get("root", DEFAULT_ROOT.expanduser())
        return (root / path.expanduser()).resolve()
