"""Settings of the invoker process, beside the common ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from services.common.model_taxonomy import ModelType
from services.common.settings import DEFAULT_ROOT, CommonSettings
from services.invoker.clients.inference_workers import check_inference_address


class InvokerSettings(CommonSettings):
    """What the invoker reads on top of the common settings."""

    custom_nodes_dir: Path = Path("nodes")
    """Folder of custom node types: each `.py` file in it (not starting with `_`) is
    imported at start and its invocation classes registered; relative to the root."""

    sessions_db: Path = Path("databases/sessions.db")
    """SQLite file of the sessions and the queue (with `database_url` sqlite:); relative
    to the root."""

    queue_lease_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    """With a PostgreSQL `database_url`: how long a claimed queue item stays its invoker's
    without a heartbeat (renewed every third of it). An invoker that dies has its item
    FAILED with INVOKER_LOST within about this long plus a third; a shorter lease notices
    sooner but fails an item whose invoker cannot reach the database for that long."""

    node_cache_size: int = Field(default=1024, ge=0)
    """Most node outputs the node-output cache keeps (shared by every session); 0 turns
    it off."""

    default_models: dict[ModelType, str] = Field(default_factory=dict)
    """Model key a model input left empty takes, per model type (`{"main": "<key>",
    "upscaler": "<key>"}`; in the environment as JSON). A default set through
    InvocationService.SetDefaultModel wins over it; a type with neither takes its only
    installed model."""

    @field_validator("inference_address")
    @classmethod
    def _inference_workers(cls, address: str) -> str:
        """The invoker calls one inference worker, a comma-separated list of IP addresses
        (`127.0.0.1:50054,127.0.0.1:50064`) or a DNS name resolving to every worker
        (`dns:///inference:50054`), balancing over them (see clients.inference_workers)."""
        return check_inference_address(address)

    @field_validator("custom_nodes_dir", "sessions_db")
    @classmethod
    def _under_root(cls, path: Path, info: ValidationInfo) -> Path:
        """Absolute from here on, so no later use depends on the working directory."""
        root = info.data.get("root", DEFAULT_ROOT.expanduser())
        return (root / path.expanduser()).resolve()
