"""Where image files live: `<folder>/<name>` and its thumbnail `<folder>/thumbnails/<name>`.

Files are written under a temporary name and renamed into place, so a reader never sees
half a PNG, and a crash leaves at most files that no record names. Names are the
server's own (a UUID4 and ".png"); a name of any other form is never turned into a path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from pathlib import Path

from services.common.errors import ResourceExhaustedError
from services.invoker.images.records import image_not_found

NAME_PATTERN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.png"
)


def new_name() -> str:
    """A fresh image name: a random UUID4 in canonical form and ".png"."""
    return f"{uuid.uuid4()}.png"


class ImageFiles:
    """The image and thumbnail files of one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.thumbnails = self.folder / "thumbnails"
        self.thumbnails.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, *, thumbnail: bool = False) -> Path:
        if not NAME_PATTERN.fullmatch(name):
            raise image_not_found(name)
        return (self.thumbnails if thumbnail else self.folder) / name

    def write(self, name: str, png: bytes, thumbnail: bytes) -> None:
        """Place an image and its thumbnail; on failure neither is left behind. A full disk
        is ResourceExhaustedError (DISK_FULL)."""
        try:
            _write_atomically(self.path(name), png)
            _write_atomically(self.path(name, thumbnail=True), thumbnail)
        except BaseException as exc:
            self.remove(name)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhaustedError(
                    "no disk space left for the image", reason="DISK_FULL"
                ) from None
            raise

    def write_thumbnail(self, name: str, thumbnail: bytes) -> None:
        _write_atomically(self.path(name, thumbnail=True), thumbnail)

    def remove(self, name: str) -> None:
        """Delete an image's file and thumbnail; either may be missing already."""
        for path in (self.path(name), self.path(name, thumbnail=True)):
            path.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    part = path.with_name(f".{path.name}.part")
    try:
        with part.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
