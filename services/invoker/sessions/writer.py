"""The one thread that writes the invoker's database file (sessions.db): the sessions, the
queue items and the set default models all live there, and SQLite makes a connection that
writes while another one does sleep and retry (1 ms, then 2, 5, 10…). Writers that share
one thread never wait that way, so every store of the file runs its calls on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from services.common.model_taxonomy import ModelType
from services.invoker.invocations.model_defaults import DefaultModel, DefaultModelStore


def database_writer() -> ThreadPoolExecutor:
    """A new writer thread for the stores of one database file."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessions-db")


class WriterDefaultModelStore(DefaultModelStore):
    """A default-model store whose calls all run on `writer`, the thread shared with the
    other stores of its file. Its methods block until done: call them off the event loop,
    never on `writer` itself."""

    def __init__(self, store: DefaultModelStore, writer: ThreadPoolExecutor) -> None:
        self._store = store
        self._writer = writer

    def load(self) -> list[DefaultModel]:
        return self._writer.submit(self._store.load).result()

    def put(self, model_type: ModelType, model_key: str, update_time: datetime) -> None:
        self._writer.submit(self._store.put, model_type, model_key, update_time).result()

    def delete(self, model_type: ModelType) -> None:
        self._writer.submit(self._store.delete, model_type).result()

    def close(self) -> None:
        self._writer.submit(self._store.close).result()
