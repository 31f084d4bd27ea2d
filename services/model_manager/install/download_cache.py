"""`download_and_cache`: remote files kept in `models/.cache/downloads`, evicted by age of use.

An entry is a folder named after its source; it appears only once complete (downloaded
into a sibling and renamed), so an existing entry is always whole. Using an entry touches
it; beyond the size limit the least recently used entries go, except those pinned: an
entry is pinned from the start of each call for it until that call returns, so a returned
path exists when its answer is sent, whatever other calls evict meanwhile. Two callers
asking for the same source share one download, which goes on when a caller gives up (its
deadline passed) so that a later call finds it done.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.common import errors
from services.model_manager.install.downloader_client import DownloaderClient
from services.model_manager.install.hf_repo import HuggingFaceRepo
from services.model_manager.install.model_files import tree_size
from services.model_manager.install.model_sources import (
    HuggingFaceModelSource,
    LocalModelSource,
    UrlModelSource,
    parse_source,
)


@dataclass(frozen=True)
class CachedDownload:
    path: Path
    cached: bool
    size_bytes: int


class DownloadCache:
    def __init__(
        self, folder: Path, limit_bytes: int, downloads: DownloaderClient, hub: HuggingFaceRepo
    ) -> None:
        self._folder = folder
        self._limit = limit_bytes
        self._downloads = downloads
        self._hub = hub
        self._in_flight: dict[str, asyncio.Task[Path]] = {}
        self._pins: Counter[Path] = Counter()
        self._pins_lock = threading.Lock()  # eviction runs in a worker thread
        self._evicting = asyncio.Lock()

    async def get(self, source_text: str, access_token: str) -> CachedDownload:
        source = parse_source(source_text, access_token=access_token)
        if isinstance(source, LocalModelSource):
            raise errors.InvalidArgumentError(
                "a local path is not a remote source",
                field="source",
                reason="INVALID_SOURCE",
                metadata={"source": source_text},
            )
        if isinstance(source, HuggingFaceModelSource):
            source = source.resolved()  # the files an install of it would take
        key = hashlib.sha256(str(source).encode()).hexdigest()[:32]
        entry = self._folder / key
        with self._pins_lock:
            self._pins[entry] += 1
        try:
            cached = entry.exists()
            if not cached:
                if key not in self._in_flight:
                    task = asyncio.create_task(self._fetch(source, entry))
                    task.add_done_callback(lambda _: self._in_flight.pop(key, None))
                    self._in_flight[key] = task
                await asyncio.shield(self._in_flight[key])
            os.utime(entry)
            path = _content(entry)
            async with self._evicting:
                await asyncio.to_thread(self._evict)
            return CachedDownload(path, cached, await asyncio.to_thread(tree_size, path))
        finally:
            with self._pins_lock:
                self._pins -= Counter([entry])

    async def _fetch(self, source: UrlModelSource | HuggingFaceModelSource, entry: Path) -> Path:
        partial = entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.partial")
        try:
            await self._downloads.follow(await self._start(source, partial))
            partial.rename(entry)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return entry

    async def _start(self, source: UrlModelSource | HuggingFaceModelSource, folder: Path) -> int:
        token = source.access_token.get_secret_value() if source.access_token else None
        if isinstance(source, UrlModelSource):
            return await self._downloads.start_url(source.url, folder, token)
        selection = await self._hub.select_files(
            source.repo_id, source.variant, source.subfolder or None, token
        )
        return await self._downloads.start_files(
            selection.download_files(), selection.download_folder(folder), token
        )

    def _evict(self) -> None:
        """Remove the least recently used unpinned entries until the cache fits its limit.

        An entry is moved aside under the pins' lock, so a call that pins it afterwards
        finds it gone (and fetches it again) rather than losing it while it answers.
        """
        entries = sorted(
            (p for p in self._folder.iterdir() if p.is_dir() and "." not in p.name),
            key=lambda p: p.stat().st_mtime,
        )
        sizes = {entry: tree_size(entry) for entry in entries}
        total = sum(sizes.values())
        for entry in entries:
            if total <= self._limit:
                break
            with self._pins_lock:
                if self._pins[entry]:
                    continue
                doomed = entry.rename(entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.evicted"))
            shutil.rmtree(doomed, ignore_errors=True)
            total -= sizes[entry]


def _content(entry: Path) -> Path:
    """The file or folder a cache entry holds (entries hold exactly one)."""
    return next(entry.iterdir())
