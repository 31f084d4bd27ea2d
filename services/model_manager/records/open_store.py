"""Opening the model record store the settings name: the PostgreSQL database of
`database_url` when it names one, otherwise the file of `model_config_db`, whose extension
picks the backend."""

from __future__ import annotations

from pathlib import Path

from services.common.database_url import SQLITE_URL, postgres_url
from services.model_manager.records.postgres_record_store import PostgresModelRecordStore
from services.model_manager.records.record_store import ModelRecordStore, refuse
from services.model_manager.records.sqlite_record_store import SqliteModelRecordStore
from services.model_manager.records.yaml_record_store import YamlModelRecordStore

SQLITE_SUFFIXES = (".db", ".sqlite")
YAML_SUFFIXES = (".yaml", ".yml")


def open_record_store(path: Path, database_url: str = SQLITE_URL) -> ModelRecordStore:
    """The store in the PostgreSQL database of `database_url` (`path` unused then), or in
    `path`, created when missing: SQLite for .db/.sqlite, YAML for .yaml/.yml.

    A file of the wrong kind, or without the store's schema metadata, is refused with
    FailedPreconditionError (INVALID_RECORD_STORE) and left untouched.
    """
    url = postgres_url(database_url)
    if url is not None:
        return PostgresModelRecordStore(url)
    suffix = path.suffix.lower()
    if suffix in SQLITE_SUFFIXES:
        return SqliteModelRecordStore(path)
    if suffix in YAML_SUFFIXES:
        return YamlModelRecordStore(path)
    raise refuse(path, f"the extension must be one of {', '.join(SQLITE_SUFFIXES + YAML_SUFFIXES)}")
