"""Opening the model record store a settings path names: the backend follows the extension."""

from __future__ import annotations

from pathlib import Path

from services.model_manager.records.record_store import ModelRecordStore, refuse
from services.model_manager.records.sqlite_record_store import SqliteModelRecordStore
from services.model_manager.records.yaml_record_store import YamlModelRecordStore

SQLITE_SUFFIXES = (".db", ".sqlite")
YAML_SUFFIXES = (".yaml", ".yml")


def open_record_store(path: Path) -> ModelRecordStore:
    """The store in `path`, created when missing: SQLite for .db/.sqlite, YAML for .yaml/.yml.

    A file of the wrong kind, or without the store's schema metadata, is refused with
    FailedPreconditionError (INVALID_RECORD_STORE) and left untouched.
    """
    suffix = path.suffix.lower()
    if suffix in SQLITE_SUFFIXES:
        return SqliteModelRecordStore(path)
    if suffix in YAML_SUFFIXES:
        return YamlModelRecordStore(path)
    raise refuse(path, f"the extension must be one of {', '.join(SQLITE_SUFFIXES + YAML_SUFFIXES)}")
