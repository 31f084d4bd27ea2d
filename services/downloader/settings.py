"""Settings of the downloader process, beside the common ones."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings


class DownloaderSettings(CommonSettings):
    """What the downloader reads on top of the common settings."""

    max_parallel_downloads: int = Field(default=5, ge=1)
    """Files transferred at once across all jobs; further files wait by priority."""

    download_roots: list[Path] = Field(default_factory=list)
    """Folders downloads may be written into and local sources read from; the root when
    empty."""

    allowed_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    """Private, loopback or link-local networks downloads may reach anyway (e.g.
    127.0.0.0/8); all such addresses are refused otherwise."""

    free_space_reserve_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Free space a download must leave on its filesystem."""

    downloads_db: Path = Path("databases/downloads.db")
    """SQLite file of the download jobs; relative to the root."""

    @property
    def allowed_roots(self) -> list[Path]:
        roots = self.download_roots or [self.root]
        return [(self.root / root).resolve() for root in roots]

    @property
    def downloads_db_path(self) -> Path:
        return self.root / self.downloads_db
