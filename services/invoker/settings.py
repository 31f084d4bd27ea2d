"""Settings of the invoker process, beside the common ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from services.common.model_taxonomy import ModelType
from services.common.settings import DEFAULT_ROOT, CommonSettings


class InvokerSettings(CommonSettings):
    """What the invoker reads on top of the common settings."""

    custom_nodes_dir: Path = Path("nodes")
    """Folder of custom node types: each `.py` file in it (not starting with `_`) is
    imported at start and its invocation classes registered; relative to the root."""

    sessions_db: Path = Path("databases/sessions.db")
    """SQLite file of the sessions and the queue; relative to the root."""

    node_cache_size: int = Field(default=1024, ge=0)
    """Most node outputs the node-output cache keeps (shared by every session); 0 turns
    it off."""

    default_models: dict[ModelType, str] = Field(default_factory=dict)
    """Model key a model input left empty takes, per model type (`{"main": "<key>",
    "upscaler": "<key>"}`; in the environment as JSON). A default set through
    InvocationService.SetDefaultModel wins over it; a type with neither takes its only
    installed model."""

    @field_validator("custom_nodes_dir", "sessions_db")
    @classmethod
    def _under_root(cls, path: Path, info: ValidationInfo) -> Path:
        """Absolute from here on, so no later use depends on the working directory."""
        root = info.data.get("root", DEFAULT_ROOT.expanduser())
        return (root / path.expanduser()).resolve()
