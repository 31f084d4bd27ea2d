"""`download_and_cache`: remote files kept in `models/.cache/downloads`, evicted by age of use.

An entry is a folder named after its source; it appears only once complete (downloaded
into a sibling and renamed), so an existing entry is always whole. Using an entry touches
it; beyond the size limit the least recently used entries go, never the one just asked
for. Two callers asking for the same source share one download, which goes on when a
caller gives up (its deadline passed) so that a later call finds it done.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from easel.downloader.v1 import download_service_pb2 as download_pb
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

    async def get(self, source_text: str, access_token: str) -> CachedDownload:
        source = parse_source(source_text, access_token=access_token)
        if isinstance(source, LocalModelSource):
            raise errors.InvalidArgumentError(
                "a local path is not a remote source",
                field="source",
                reason="INVALID_SOURCE",
                metadata={"source": source_text},
            )
        key = hashlib.sha256(str(source).encode()).hexdigest()[:32]
        entry = self._folder / key
        cached = entry.exists()
        if not cached:
            if key not in self._in_flight:
                task = asyncio.create_task(self._fetch(source, entry))
                task.add_done_callback(lambda _: self._in_flight.pop(key, None))
                self._in_flight[key] = task
            await asyncio.shield(self._in_flight[key])
        os.utime(entry)
        path = _content(entry)
        await asyncio.to_thread(self._evict, keep=entry)
        return CachedDownload(path, cached, tree_size(path))

    async def _fetch(self, source: UrlModelSource | HuggingFaceModelSource, entry: Path) -> Path:
        partial = entry.with_name(f"{entry.name}.{uuid.uuid4().hex}.partial")
        try:
            await self._downloads.download(await self._request(source, partial), lambda _: None)
            partial.rename(entry)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return entry

    async def _request(
        self, source: UrlModelSource | HuggingFaceModelSource, folder: Path
    ) -> download_pb.CreateDownloadJobRequest:
        token = source.access_token.get_secret_value() if source.access_token else ""
        if isinstance(source, UrlModelSource):
            return download_pb.CreateDownloadJobRequest(
                single_source=source.url, dest_dir=str(folder), access_token=token
            )
        selection = await self._hub.select_files(
            source.repo_id, source.variant, source.subfolder or None, token or None
        )
        files = [
            download_pb.MultiFileSourceFile(url=f.url, path=f.local_path, size=f.size)
            for f in selection.files
        ]
        target = folder / selection.model_dir_name if selection.is_folder else folder
        return download_pb.CreateDownloadJobRequest(
            multi_file=download_pb.MultiFileSource(files=files),
            dest_dir=str(target),
            access_token=token,
        )

    def _evict(self, keep: Path) -> None:
        entries = sorted(
            (p for p in self._folder.iterdir() if p.is_dir() and not p.name.endswith(".partial")),
            key=lambda p: p.stat().st_mtime,
        )
        sizes = {entry: tree_size(entry) for entry in entries}
        total = sum(sizes.values())
        for entry in entries:
            if total <= self._limit:
                break
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]


def _content(entry: Path) -> Path:
    """The file or folder a cache entry holds (entries hold exactly one)."""
    return next(entry.iterdir())
