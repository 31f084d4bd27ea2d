"""Settings of the model manager process, beside the common ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from services.common.settings import DEFAULT_ROOT, CommonSettings


class ModelManagerSettings(CommonSettings):
    """What the model manager reads on top of the common settings."""

    models_dir: Path = Path("models")
    """Folder models are installed into, against which relative record paths resolve;
    relative to the root."""

    model_config_db: Path = Path("databases/models.db")
    """The model record store: a SQLite file (.db, .sqlite) or a YAML file (.yaml, .yml),
    chosen by its extension; relative to the root."""

    install_jobs_db: Path = Path("databases/installs.db")
    """SQLite file of the install jobs (they survive a restart); relative to the root."""

    import_roots: list[Path] = Field(default_factory=list)
    """Folders (besides models_dir) local models may be probed, registered or installed
    from; the root when empty. Relative values are relative to the root."""

    allow_unconditional_delete: bool = False
    """Let UninstallModel delete model files outside models_dir."""

    remove_missing_models: bool = False
    """At start, remove records whose files have vanished (they are reported either way)."""

    register_found_models: bool = False
    """At start, register models found in models_dir/<base>/<type>/ that have no record."""

    hf_endpoint: str = "https://huggingface.co"
    """The HuggingFace Hub that repo ids are fetched from."""

    downloader_reconnect_s: float = Field(default=30.0, ge=0)
    """How long an install whose download is under way waits for a downloader that went
    away (a restart) to come back before it fails with DOWNLOADER_UNAVAILABLE; the
    download jobs themselves survive the downloader's restart."""

    download_cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    """Size limit of models/.cache/downloads (DownloadAndCache); least recently used
    entries are evicted beyond it."""

    @property
    def install_roots(self) -> list[Path]:
        """Where local model paths named by callers may lie."""
        roots = [(self.root / root).resolve() for root in self.import_roots] or [self.root]
        return [self.models_dir, *roots]

    @field_validator("models_dir", "model_config_db", "install_jobs_db")
    @classmethod
    def _under_root(cls, path: Path, info: ValidationInfo) -> Path:
        """Absolute from here on, so no later use depends on the working directory."""
        root = info.data.get("root", DEFAULT_ROOT.expanduser())
        return (root / path.expanduser()).resolve()
