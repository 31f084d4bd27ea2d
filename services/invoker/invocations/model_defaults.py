"""The rule for a model input left empty: the default model of its type, so that graphs
like `txt2img | upscale | show_image` need no model key.

A type's default is, in order: the one set through the API (kept in the invoker's SQLite
file or PostgreSQL database, so it survives a restart and needs none; invoker processes
sharing a database share them), the `default_models` setting, the only installed model
of the type. Set defaults win over the setting so that a client (e.g.
`easel demo install`) can choose a default on a running invoker whatever its settings.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from services.common.database_url import postgres_url
from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.migrations import Migration
from services.common.model_taxonomy import ModelType
from services.common.postgres_async_pool import AsyncPostgresPool
from services.common.sqlite_files import open_wal_database
from services.invoker.replica_notices import DEFAULTS_CHANNEL, invoker_pool, notify
from services.invoker.sessions.writer import on_writer


class DefaultSource(StrEnum):
    """Where a default model comes from."""

    SET = "set"
    SETTING = "setting"


@dataclass(frozen=True)
class DefaultModel:
    """The default model of one model type; `update_time` only for a set one."""

    model_type: ModelType
    model_key: str
    source: DefaultSource
    update_time: datetime | None = None


class DefaultModelStore(ABC):
    """The defaults set through the API, by model type; one caller at a time."""

    @abstractmethod
    async def load(self) -> list[DefaultModel]:
        """Every stored default (read at start-up, and when another process changed them)."""

    @abstractmethod
    async def put(self, model_type: ModelType, model_key: str, update_time: datetime) -> None:
        """Stores the default of `model_type`, replacing the earlier one."""

    @abstractmethod
    async def delete(self, model_type: ModelType) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS default_model (model_type TEXT PRIMARY KEY, "
    "model_key TEXT NOT NULL, update_time TEXT NOT NULL)",
)


class SqliteDefaultModelStore:
    """Set defaults as rows of a `default_model` table, in the sessions' SQLite file.
    Blocking: `WriterDefaultModelStore` runs its calls on the file's writer thread."""

    def __init__(self, path: Path) -> None:
        self._db = open_wal_database(path, _SCHEMA)

    def load(self) -> list[DefaultModel]:
        rows = self._db.execute("SELECT model_type, model_key, update_time FROM default_model")
        known = {member.value for member in ModelType}
        return [
            DefaultModel(
                ModelType(model_type), key, DefaultSource.SET, datetime.fromisoformat(time)
            )
            for model_type, key, time in rows
            if model_type in known
        ]

    def put(self, model_type: ModelType, model_key: str, update_time: datetime) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO default_model VALUES (?, ?, ?)",
            (model_type.value, model_key, update_time.isoformat()),
        )

    def delete(self, model_type: ModelType) -> None:
        self._db.execute("DELETE FROM default_model WHERE model_type = ?", (model_type.value,))

    def close(self) -> None:
        self._db.close()


class WriterDefaultModelStore(DefaultModelStore):
    """A SQLite default-model store whose calls all run on `writer`, the thread shared
    with the other stores of its file (the sessions and the queue)."""

    def __init__(self, store: SqliteDefaultModelStore, writer: ThreadPoolExecutor) -> None:
        self._store = store
        self._writer = writer

    async def load(self) -> list[DefaultModel]:
        return await on_writer(self._writer, self._store.load)

    async def put(self, model_type: ModelType, model_key: str, update_time: datetime) -> None:
        await on_writer(self._writer, self._store.put, model_type, model_key, update_time)

    async def delete(self, model_type: ModelType) -> None:
        await on_writer(self._writer, self._store.delete, model_type)

    async def close(self) -> None:
        await on_writer(self._writer, self._store.close)


_POSTGRES_MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE invoker_default_models (model_type TEXT PRIMARY KEY, "
            "model_key TEXT NOT NULL, update_time TIMESTAMPTZ NOT NULL)",
        ),
    )
]


class PostgresDefaultModelStore(DefaultModelStore):
    """Set defaults in the `invoker_default_models` table, shared by every invoker process
    of the database; a change is announced on DEFAULTS_CHANNEL as `owner`, so the other
    processes reload. `open` makes one."""

    def __init__(self, pool: AsyncPostgresPool, owner: str) -> None:
        self._owner = owner
        self._pool = pool

    @classmethod
    async def open(cls, url: str, owner: str) -> PostgresDefaultModelStore:
        pool = await invoker_pool(url, "invoker_default_models", _POSTGRES_MIGRATIONS, max_size=2)
        return cls(pool, owner)

    async def load(self) -> list[DefaultModel]:
        async with self._pool.connection() as db:
            cursor = await db.execute(
                "SELECT model_type, model_key, update_time FROM invoker_default_models"
            )
            rows = await cursor.fetchall()
        known = {member.value for member in ModelType}
        return [
            DefaultModel(ModelType(model_type), key, DefaultSource.SET, time)
            for model_type, key, time in rows
            if model_type in known
        ]

    async def put(self, model_type: ModelType, model_key: str, update_time: datetime) -> None:
        async with self._pool.connection() as db, db.transaction():
            await db.execute(
                "INSERT INTO invoker_default_models VALUES (%s, %s, %s) ON CONFLICT (model_type) "
                "DO UPDATE SET model_key = EXCLUDED.model_key, update_time = EXCLUDED.update_time",
                (model_type.value, model_key, update_time),
            )
            await notify(db, DEFAULTS_CHANNEL, f"{self._owner} changed")

    async def delete(self, model_type: ModelType) -> None:
        async with self._pool.connection() as db, db.transaction():
            await db.execute(
                "DELETE FROM invoker_default_models WHERE model_type = %s", (model_type.value,)
            )
            await notify(db, DEFAULTS_CHANNEL, f"{self._owner} changed")

    async def close(self) -> None:
        await self._pool.close()


async def open_default_model_store(
    database_url: str, sqlite_path: Path, writer: ThreadPoolExecutor, owner: str = ""
) -> DefaultModelStore:
    """The set defaults in the PostgreSQL database of `database_url` (changes announced
    as `owner`), or in the SQLite file `sqlite_path` when it is `sqlite:`, called on
    `writer`, the file's writer thread."""
    url = postgres_url(database_url)
    if url is None:
        store = await on_writer(writer, SqliteDefaultModelStore, sqlite_path)
        return WriterDefaultModelStore(store, writer)
    return await PostgresDefaultModelStore.open(url, owner)


class DefaultModels:
    """The defaults in effect: those set through the API over those the setting names.

    Reads come from memory; a change is written to the store before it takes effect, so a
    failed write changes nothing. Changes and reloads run one at a time. `open` makes one.
    """

    def __init__(
        self,
        store: DefaultModelStore,
        configured: Mapping[ModelType, str],
        stored: Sequence[DefaultModel] = (),
    ) -> None:
        self._store = store
        self._configured = dict(configured)
        self._set = {default.model_type: default for default in stored}
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, store: DefaultModelStore, configured: Mapping[ModelType, str]
    ) -> DefaultModels:
        """The defaults in effect with those `store` holds."""
        return cls(store, configured, await store.load())

    async def reload(self) -> None:
        """Read the set defaults again: another invoker process changed them."""
        async with self._lock:
            self._set = {default.model_type: default for default in await self._store.load()}

    def get(self, model_type: ModelType) -> DefaultModel | None:
        """The default of `model_type` in effect, or None when neither is there."""
        chosen = self._set.get(model_type)
        if chosen is not None:
            return chosen
        key = self._configured.get(model_type)
        return None if key is None else DefaultModel(model_type, key, DefaultSource.SETTING)

    def list(self) -> list[DefaultModel]:
        """The defaults in effect, in model type order."""
        return [default for model_type in ModelType if (default := self.get(model_type))]

    def keys(self) -> dict[ModelType, str]:
        """The key of each type's default in effect."""
        return {default.model_type: default.model_key for default in self.list()}

    async def set(
        self, model_type: ModelType, model_key: str, actual_type: ModelType
    ) -> DefaultModel:
        """Make the model `model_key`, whose type is `actual_type`, the default of
        `model_type`; a model of another type is MODEL_TYPE_MISMATCH."""
        if actual_type != model_type:
            raise InvalidArgumentError(
                f"model {model_key} is a {actual_type.value} model, not a {model_type.value} model",
                field="model_key",
                reason="MODEL_TYPE_MISMATCH",
                metadata={"model_type": model_type.value, "actual_type": actual_type.value},
            )
        now = datetime.now(UTC)
        default = DefaultModel(model_type, model_key, DefaultSource.SET, now)
        async with self._lock:
            await self._store.put(model_type, model_key, now)
            self._set[model_type] = default
        return default

    async def delete(self, model_type: ModelType) -> DefaultModel | None:
        """Remove the set default of `model_type` (DEFAULT_MODEL_NOT_SET when there is
        none); returns the default in effect afterwards (the setting's, or None)."""
        async with self._lock:
            if model_type not in self._set:
                raise NotFoundError(
                    f"no default model was set for {model_type.value!r}",
                    reason="DEFAULT_MODEL_NOT_SET",
                    metadata={"model_type": model_type.value},
                )
            await self._store.delete(model_type)
            del self._set[model_type]
        return self.get(model_type)

    async def close(self) -> None:
        await self._store.close()


def default_model_key(
    field: str,
    model_type: ModelType,
    configured: Mapping[ModelType, str],
    installed: Sequence[str],
) -> str:
    """The key an empty model input `field` takes: the default in effect for its type
    (`configured`), else the only installed model of that type (`installed`: their keys).

    No default and zero or several installed is MISSING_REQUIRED_INPUT naming the field,
    since choosing among several would make a graph's result depend on install order.
    """
    if model_type in configured:
        return configured[model_type]
    if len(installed) == 1:
        return installed[0]
    found = "none is installed" if not installed else f"{len(installed)} are installed"
    raise InvalidArgumentError(
        f"{field} needs a {model_type.value} model: no default is set for "
        f"{model_type.value!r} and {found}",
        field=field,
        reason="MISSING_REQUIRED_INPUT",
        metadata={"field": field, "model_type": model_type.value},
    )
