"""Model records in one YAML file: the reference's file layout, for small collections that
people read, edit or keep under version control.

The file maps each key to its record, after a `__metadata__` entry holding the schema
version. The store keeps every record in memory (it must be the file's only writer) and
rewrites the whole file on each change: into a temporary file beside it, flushed to disk,
then renamed over it, so a crash leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

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
LEADING_FIELDS = ("name", "type", "format", "base", "path")
"""Written first in each record, for the people who read the file."""

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class YamlModelRecordStore(ModelRecordStore):
    """Records in memory, written through to one YAML file."""

    backend = StoreBackend.YAML

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._records = self._load()

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
        """Nothing to release: every change is on disk when its call returns."""

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
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                yaml.dump(document, out, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.location)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

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
