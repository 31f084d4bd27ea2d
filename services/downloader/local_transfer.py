"""Local jobs (the reference's DownloadJobPath): a file or folder copied or moved into
place in the background, reporting bytes like a download.

Copies run in a worker thread; the queue stops them between chunks through `stop`.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from services.downloader.jobs import TransferError

CHUNK_BYTES = 8 * 1024 * 1024


class TransferStopped(Exception):
    """The queue asked the copy to stop (pause, cancel or shutdown)."""


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rename_into_place(source: Path, final: Path) -> bool:
    """Move `source` to `final` by a rename; False when they are on different filesystems."""
    try:
        os.rename(source, final)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def copy_tree(
    source: Path, target: Path, on_bytes: Callable[[int], None], stop: threading.Event
) -> None:
    """Copy the file or folder `source` to `target`, calling `on_bytes` with the total."""
    try:
        _copy(source, target, on_bytes, stop)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise TransferError("DISK_FULL", f"no space left on device: {exc}") from None
        raise


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _copy(source: Path, target: Path, on_bytes: Callable[[int], None], stop: threading.Event):
    copied = 0
    single = source.is_file()
    files = [source] if single else sorted(f for f in source.rglob("*") if f.is_file())
    if not single:
        target.mkdir(parents=True, exist_ok=True)
    for file in files:
        destination = target if single else target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with file.open("rb") as reader, destination.open("wb") as writer:
            while chunk := reader.read(CHUNK_BYTES):
                if stop.is_set():
                    raise TransferStopped
                writer.write(chunk)
                copied += len(chunk)
                on_bytes(copied)
        shutil.copystat(file, destination)
