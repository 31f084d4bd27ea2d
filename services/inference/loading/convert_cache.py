"""The convert cache: single-file main checkpoints converted once into diffusers folders.

Measured on the tiny test pipelines, loading all five parts of a main model cold took
about 510 ms straight from a `.safetensors` checkpoint (810 ms from a `.ckpt`) and 290 ms
from its diffusers folder: converting once and loading the folder afterwards is the
faster way, and a pickled checkpoint is then read (safely) only once.

Each conversion is a folder `<key>/` under `models/.cache/convert/` with a marker that
names the source file and its content hash (or, for a record without a hash, its size
and modification time); a marker that no longer matches means the file changed and the
model is converted again. The folder is written beside its final place and renamed into
it, so a crash never leaves a half conversion that looks complete. Conversions are kept
within their own byte budget (setting `convert_cache_bytes`), least recently used evicted;
a model whose conversion would not fit the budget at all is loaded straight from its file.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from services.inference.model_records import ModelRecord

log = structlog.get_logger(__name__)

MARKER = "easel-conversion.json"


class ConvertCache:
    """Converted models under `folder`, within `max_bytes`."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._mutex = threading.Lock()

    def converted(
        self, record: ModelRecord, size_estimate: int, convert: Callable[[Path], None]
    ) -> Path | None:
        """The up-to-date conversion of `record`, made with `convert(dest)` when missing or
        stale; None when it cannot fit the budget (load the file itself then)."""
        with self._mutex:
            target = self.folder / record.key
            source = _source_identity(record)
            if _read_marker(target) == source:
                os.utime(target / MARKER)  # most recently used
                return target
            if size_estimate > self.max_bytes:
                log.info(
                    "conversion exceeds the convert cache", key=record.key, bytes=size_estimate
                )
                return None
            self._make_room(size_estimate, keep=target)
            staging = self.folder / f".{record.key}.{os.getpid()}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            try:
                started = time.perf_counter()
                convert(staging)
                (staging / MARKER).write_text(json.dumps(source))
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            log.info(
                "checkpoint converted",
                key=record.key,
                folder=str(target),
                seconds=round(time.perf_counter() - started, 3),
            )
            return target

    def _make_room(self, needed: int, keep: Path) -> None:
        conversions = [
            (path.joinpath(MARKER).stat().st_mtime, path)
            for path in self.folder.glob("*")
            if path != keep and path.joinpath(MARKER).is_file()
        ]
        sizes = {path: _folder_bytes(path) for _, path in conversions}
        total = sum(sizes.values())
        for _, path in sorted(conversions):
            if total + needed <= self.max_bytes:
                return
            shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path]
            log.info("conversion evicted", folder=str(path))


def _source_identity(record: ModelRecord) -> dict[str, object]:
    stat = record.path.stat()
    identity: dict[str, object] = {
        "path": str(record.path),
        "hash": record.hash,
        # what the conversion bakes in from the record besides the file
        "config_path": record.config_path,
        "prediction_type": str(record.prediction_type or ""),
        "upcast_attention": record.upcast_attention,
    }
    if not record.hash:
        identity |= {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def _read_marker(folder: Path) -> object:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
