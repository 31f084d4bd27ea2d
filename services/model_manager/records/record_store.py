"""Where model records live: one interface, a SQLite and a YAML implementation.

The interface does the record logic once (duplicate keys and paths, sparse updates, the
unique name+base+type lookup) on top of a few storage primitives, under one lock per
store, so both backends behave identically and a rejected write changes nothing.
`open_store.open_record_store` picks the backend: PostgreSQL when `database_url` names
one, otherwise by file extension.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from services.common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType
from services.model_manager.records.configs import AnyModelConfig, apply_changes, now, parse_config

SCHEMA_VERSION = "3.2"
"""Version of the stored record layout; continues the reference's numbering (its
`version()` answers 3.2), whose fields these records carry."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]

MIGRATIONS: dict[str, tuple[str, Migration]] = {}
"""Upgrades of stored records, keyed by the version they start from: the version they reach
and how one record dict changes. Stores apply them in a chain when they open an older file.
Empty while 3.2 is the only version ever written."""

INVALID_RECORD_STORE = "INVALID_RECORD_STORE"

EXACT_FILTERS = ("name", "base", "type", "format", "path", "hash", "source")
"""The fields of `ModelQuery` that a record's field of the same name must equal."""


class StoreBackend(StrEnum):
    """Where a store keeps its records: a kind of file, or a PostgreSQL database."""

    SQLITE = "sqlite"
    YAML = "yaml"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class ModelQuery:
    """Filters of a search; None (or no tags) matches every record, given ones must all match.

    Strings compare exactly; `tags` must all be on a record, which may have more.
    """

    name: str | None = None
    base: BaseModelType | None = None
    type: ModelType | None = None
    format: ModelFormat | None = None
    path: str | None = None
    tags: tuple[str, ...] = ()
    hash: str | None = None
    source: str | None = None

    def matches(self, config: AnyModelConfig) -> bool:
        return all(
            getattr(self, name) is None or getattr(self, name) == getattr(config, name)
            for name in EXACT_FILTERS
        ) and set(self.tags) <= set(config.tags)


EVERY_MODEL = ModelQuery()


class ModelRecordStore(ABC):
    """Model config records by key; searches come ordered by name, then key."""

    backend: ClassVar[StoreBackend]

    def __init__(self, location: Path | str) -> None:
        """`location`: the store's file, or a description of its database (no password)."""
        self.location = location.resolve() if isinstance(location, Path) else location
        self._lock = threading.RLock()

    @property
    @abstractmethod
    def schema_version(self) -> str: ...

    @abstractmethod
    def get(self, key: str) -> AnyModelConfig:
        """The record with `key`; NotFoundError (MODEL_NOT_FOUND) when there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def search(
        self, query: ModelQuery = EVERY_MODEL, *, offset: int = 0, limit: int | None = None
    ) -> list[AnyModelConfig]:
        """Records matching `query`, by name then key, from `offset` on, at most `limit`."""

    @abstractmethod
    def count(self, query: ModelQuery = EVERY_MODEL) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _insert(self, config: AnyModelConfig) -> None:
        """Store a new record, already checked for duplicates."""

    @abstractmethod
    def _replace(self, config: AnyModelConfig) -> None:
        """Overwrite the record with `config.key`, already checked to exist."""

    @abstractmethod
    def _remove(self, key: str) -> None:
        """Drop the record `key`, already checked to exist."""

    def search_page(
        self, query: ModelQuery, offset: int, limit: int
    ) -> tuple[list[AnyModelConfig], int]:
        """One page of a search and the number of all matches, read together so they agree."""
        with self._lock:
            return self.search(query, offset=offset, limit=limit), self.count(query)

    def find(self, name: str, base: BaseModelType, type: ModelType) -> AnyModelConfig:
        """The one record with this name, base and type (the reference's
        `model_info_by_name`); several are FailedPreconditionError (MODEL_AMBIGUOUS)."""
        found = self.search(ModelQuery(name=name, base=base, type=type))
        metadata = {"name": name, "base": base, "type": type}
        if not found:
            raise NotFoundError(
                f"no {base} {type} model is named {name!r}",
                reason="MODEL_NOT_FOUND",
                metadata=metadata,
            )
        if len(found) > 1:
            keys = ",".join(config.key for config in found)
            raise FailedPreconditionError(
                f"{len(found)} {base} {type} models are named {name!r} ({keys}); choose one by key",
                reason="MODEL_AMBIGUOUS",
                metadata={**metadata, "keys": keys},
            )
        return found[0]

    def add(self, config: AnyModelConfig) -> AnyModelConfig:
        """Store `config` as a new record, created now; its key and path must be free."""
        with self._lock:
            if self.exists(config.key):
                raise AlreadyExistsError(
                    f"a model with key {config.key} exists already",
                    reason="MODEL_ALREADY_EXISTS",
                    metadata={"key": config.key},
                )
            self._check_path_free(config)
            moment = now()
            stored = config.model_copy(update={"create_time": moment, "update_time": moment})
            self._insert(stored)
            return stored

    def update(
        self, key: str, changes: Mapping[str, Any], *, field: str = "changes"
    ) -> AnyModelConfig:
        """The record `key` with `changes` applied (see `configs.apply_changes`) and stored.

        `field` names `changes` in error reports, as for `parse_config`.
        """
        with self._lock:
            updated = apply_changes(self.get(key), changes, field=field)
            self._check_path_free(updated)
            self._replace(updated)
            return updated

    def delete(self, key: str) -> AnyModelConfig:
        """Remove the record `key` and return it as it was."""
        with self._lock:
            config = self.get(key)
            self._remove(key)
            return config

    def _check_path_free(self, config: AnyModelConfig) -> None:
        holders = [other.key for other in self.search(ModelQuery(path=config.path))]
        taken_by = [holder for holder in holders if holder != config.key]
        if taken_by:
            raise AlreadyExistsError(
                f"model {taken_by[0]} is registered at {config.path} already",
                reason="MODEL_PATH_ALREADY_REGISTERED",
                metadata={"path": config.path, "key": taken_by[0]},
            )


def not_found(key: str) -> NotFoundError:
    return NotFoundError(f"no model has key {key}", reason="MODEL_NOT_FOUND", metadata={"key": key})


def migrate(version: str, records: list[dict[str, Any]], location: Path) -> list[AnyModelConfig]:
    """Record dicts of a store at `version`, brought to SCHEMA_VERSION through MIGRATIONS
    and validated; a record that fails validation refuses the whole store."""
    while version != SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise FailedPreconditionError(
                f"{location} has model records of schema version {version}, which this "
                f"server (schema {SCHEMA_VERSION}) cannot read",
                reason="UNSUPPORTED_SCHEMA_VERSION",
                metadata={"path": str(location), "schema_version": version},
            )
        version, step = MIGRATIONS[version]
        records = [step(record) for record in records]
    try:
        return [parse_config(record, field="record") for record in records]
    except InvalidArgumentError as error:
        raise refuse(location, error.message) from None


def refuse(location: Path, why: str) -> FailedPreconditionError:
    """The error for a file that is not a model record store of ours."""
    return FailedPreconditionError(
        f"{location} is not a model record store: {why}",
        reason=INVALID_RECORD_STORE,
        metadata={"path": str(location)},
    )
