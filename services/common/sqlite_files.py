"""Opening a service's SQLite file the one way every store does it.

WAL lets readers go on while a write lands, and `synchronous=NORMAL` is durable across a
crash of the process under WAL (a power loss may take the last transactions). One
connection is shared across threads, each store guarding it with its own lock or writer
thread; autocommit (`isolation_level=None`) leaves transactions to explicit statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


def open_wal_database(path: Path, schema: Iterable[str] = ()) -> sqlite3.Connection:
    """The database at `path` (created with its folder when missing) in WAL mode, with the
    `schema` statements (CREATE ... IF NOT EXISTS) run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db
