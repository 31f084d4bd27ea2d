"""Model records in one YAML file: the reference's file layout, for small collections that
people read, edit or keep under version control.

The file maps each key to its record, after a `__metadata__` entry holding the schema
version. The store keeps every record in memory and rewrites the whole file on each change:
into a temporary file beside it, flushed to disk, then renamed over it, so a crash leaves
the old file or the new one, never a mix.

Keeping records in memory needs the store to be the file's only writer, so it holds an
exclusive `flock` on the file from open to close; a second store on the same file, in this
process or another, is refused (RECORD_STORE_LOCKED). Each new file is locked before it is
renamed into place, so the file the path names is locked at every moment.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import FailedPreconditionError
from services.model_manager.records.configs import AnyModelConfig
from services.model_manager.records.record_store import (
    EVERY_MODEL,
    SCHEMA_VERSION,
    ModelQuery,
    ModelRecordStore,
    StoreBackend,
    migrate,
    not_found,
    refuse,
)

METADATA = "__metadata__"
RECORD_STORE_LOCKED = "RECORD_STORE_LOCKED"
LEADING_FIELDS = ("name", "type", "format", "base", "path")
"""Written first in each record, for the people who read the file."""

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class YamlModelRecordStore(ModelRecordStore):
    """Records in memory, written through to one YAML file."""

    backend = StoreBackend.YAML

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._held: int | None = self._claim()
        try:
            self._records = self._load()
        except BaseException:
            self.close()
            raise

    @property
    def schema_version(self) -> str:
        return SCHEMA_VERSION

    def get(self, key: str) -> AnyModelConfig:
        with self._lock:
            if key not in self._records:
                raise not_found(key)
            return self._records[key]

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._records

    def search(
        self, query: ModelQuery = EVERY_MODEL, *, offset: int = 0, limit: int | None = None
    ) -> list[AnyModelConfig]:
        with self._lock:
            found = [config for config in self._records.values() if query.matches(config)]
        found.sort(key=lambda config: (config.name, config.key))
        return found[offset : None if limit is None else offset + limit]

    def count(self, query: ModelQuery = EVERY_MODEL) -> int:
        with self._lock:
            return sum(1 for config in self._records.values() if query.matches(config))

    def close(self) -> None:
        """Release the file for another store; every change is on disk already."""
        with self._lock:
            if self._held is not None:
                os.close(self._held)
                self._held = None

    def _claim(self) -> int:
        """A descriptor of the file that holds its exclusive lock (the file is created empty
        when missing). A file replaced between opening and locking is opened again, so the
        lock is always on the file the path names."""
        self.location.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                handle = os.open(self.location, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as exc:
                raise refuse(self.location, f"cannot open it ({exc})") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise FailedPreconditionError(
                    f"{self.location} is in use by another model record store: a YAML store "
                    "has one writer, so run one model manager on it",
                    reason=RECORD_STORE_LOCKED,
                    metadata={"path": str(self.location)},
                ) from None
            try:
                current = os.path.samestat(os.fstat(handle), os.stat(self.location))
            except FileNotFoundError:
                current = False
            if current:
                return handle
            os.close(handle)

    def _insert(self, config: AnyModelConfig) -> None:
        self._commit({**self._records, config.key: config})

    def _replace(self, config: AnyModelConfig) -> None:
        self._commit({**self._records, config.key: config})

    def _remove(self, key: str) -> None:
        self._commit({k: config for k, config in self._records.items() if k != key})

    def _commit(self, records: dict[str, AnyModelConfig]) -> None:
        """Write `records` to the file, then make them the store's; a failed write keeps both."""
        with self._lock:
            self._write(records)
            self._records = records

    def _write(self, records: dict[str, AnyModelConfig]) -> None:
        ordered = sorted(records.values(), key=lambda config: (config.name, config.key))
        document: dict[str, Any] = {METADATA: {"version": SCHEMA_VERSION}}
        for config in ordered:
            fields = config.model_dump(mode="json", exclude={"key"})
            document[config.key] = {name: fields.pop(name) for name in LEADING_FIELDS} | fields
        self.location.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=self.location.parent, prefix=f".{self.location.name}.", suffix=".tmp"
        )
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)  # a new file: no one else holds it
            with os.fdopen(handle, "w", encoding="utf-8", closefd=False) as out:
                yaml.dump(document, out, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.location)
        except BaseException:
            os.close(handle)
            Path(temporary).unlink(missing_ok=True)
            raise
        previous, self._held = self._held, handle
        if previous is not None:
            os.close(previous)

    def _load(self) -> dict[str, AnyModelConfig]:
        """The file's records, migrated and validated; an empty or missing file starts empty."""
        try:
            text = self.location.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise refuse(self.location, f"cannot read it as YAML text ({exc})") from None
        if not text.strip():
            self._write({})
            return {}
        try:
            document = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise refuse(self.location, f"not valid YAML ({exc})") from None
        metadata = document.get(METADATA) if isinstance(document, dict) else None
        if not isinstance(metadata, dict) or "version" not in metadata:
            raise refuse(self.location, f"no {METADATA} mapping with the schema version")
        entries = {str(key): value for key, value in document.items() if key != METADATA}
        if not all(isinstance(value, dict) for value in entries.values()):
            raise refuse(self.location, "every entry but the metadata must be a record mapping")
        version = str(metadata["version"])
        configs = migrate(version, [{**v, "key": k} for k, v in entries.items()], self.location)
        paths = [config.path for config in configs]
        if len(set(paths)) < len(paths):
            raise refuse(self.location, "several records have the same path")
        records = {config.key: config for config in configs}
        if version != SCHEMA_VERSION:
            self._write(records)
        return records
