"""Opening a service's SQLite file the one way every store does it, and the lock file a
store that must be its file's only user holds beside it.

WAL lets readers go on while a write lands, and `synchronous=NORMAL` is durable across a
crash of the process under WAL (a power loss may take the last transactions). One
connection is shared across threads, each store guarding it with its own lock or writer
thread; autocommit (`isolation_level=None`) leaves transactions to explicit statements.
"""

from __future__ import annotations

import fcntl
import os
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


def claim_lock_file(path: Path) -> int | None:
    """A descriptor of `path` (created, with its folder, when missing) that holds its
    exclusive `flock`, or None while another open of it holds the lock, in this process or
    another.

    The kernel frees the lock when the descriptor closes or its process ends, kill -9
    included, so no stale lock is ever left to clear. The file stays and is never deleted:
    a process that deleted it could leave two holders, each of a file of its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
