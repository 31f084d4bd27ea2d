"""Local jobs: a file or folder copied or moved into place, reporting bytes like a download;
and the file-system steps every job shares (folders on the way, putting a file in place,
removing partial data).

Everything here blocks on the file system, so the queue calls it from worker threads; a
copy stops between chunks through `stop`. A source is walked once per run (`list_source`)
and copied from that listing, so the size checked against free space is the size copied.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.downloader.jobs import TransferError

CHUNK_BYTES = 8 * 1024 * 1024


class TransferStopped(Exception):
    """The queue asked the copy to stop (pause, cancel or shutdown)."""


@dataclass(frozen=True)
class SourceTree:
    """A local file or folder as listed once: its files (paths relative to the folder; the
    empty path for a single file) and their sizes."""

    root: Path
    is_folder: bool
    files: tuple[tuple[Path, int], ...]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


def list_source(source: Path) -> SourceTree:
    """Walk `source` once; symlinked files count as files, symlinked folders are not
    entered. SOURCE_NOT_FOUND when nothing is there (any more)."""
    try:
        if not source.is_dir():
            return SourceTree(source, False, ((Path(), source.stat().st_size),))
        files: list[tuple[Path, int]] = []
        _walk(source, Path(), files)
    except FileNotFoundError:
        raise TransferError("SOURCE_NOT_FOUND", f"nothing exists at {source}") from None
    return SourceTree(source, True, tuple(sorted(files)))


def _walk(folder: Path, relative: Path, files: list[tuple[Path, int]]) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _walk(Path(entry.path), relative / entry.name, files)
            elif entry.is_file():
                files.append((relative / entry.name, entry.stat().st_size))


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem `folder` is (or will be) on."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def make_folder(folder: Path) -> None:
    """Create `folder` and its parents; DESTINATION_EXISTS when a file is in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TransferError(
            "DESTINATION_EXISTS", f"cannot create the folder {folder}: a file is in the way"
        ) from None


def put_in_place(data: Path, final: Path) -> None:
    """Rename the file or folder `data` to `final`, replacing a file there but never a
    folder, nor a file by a folder (DESTINATION_EXISTS)."""
    if final.is_dir() or (data.is_dir() and final.exists()):
        kind = "folder" if final.is_dir() else "file"
        raise TransferError("DESTINATION_EXISTS", f"a {kind} exists at {final}")
    make_folder(final.parent)
    os.replace(data, final)


def move_by_rename(source: Path, final: Path) -> bool:
    """Put `source` in place at `final` by a rename; False when they are on different
    filesystems (the caller copies instead)."""
    if not source.exists():
        raise TransferError("SOURCE_NOT_FOUND", f"nothing exists at {source}")
    try:
        put_in_place(source, final)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def copy_tree(
    tree: SourceTree, target: Path, on_bytes: Callable[[int], None], stop: threading.Event
) -> None:
    """Copy the files of `tree` to `target`, calling `on_bytes` with the total so far."""
    try:
        _copy(tree, target, on_bytes, stop)
    except FileNotFoundError as exc:
        raise TransferError("SOURCE_NOT_FOUND", f"a source file vanished: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise TransferError("DISK_FULL", f"no space left on device: {exc}") from None
        raise


def remove_tree(path: Path) -> None:
    """Remove a file or folder; nothing there (or a file where a folder was expected on
    the way) is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(NotADirectoryError):
            path.unlink(missing_ok=True)


def _copy(
    tree: SourceTree, target: Path, on_bytes: Callable[[int], None], stop: threading.Event
) -> None:
    copied = 0
    if tree.is_folder:
        target.mkdir(parents=True, exist_ok=True)
    for relative, _size in tree.files:
        source, destination = tree.root / relative, target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as reader, destination.open("wb") as writer:
            while chunk := reader.read(CHUNK_BYTES):
                if stop.is_set():
                    raise TransferStopped
                writer.write(chunk)
                copied += len(chunk)
                on_bytes(copied)
        shutil.copystat(source, destination)
