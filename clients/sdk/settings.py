"""What a client reads on top of the settings it shares with the services."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class ClientSettings(CommonSettings):
    """The common settings (addresses, token, TLS, message size) plus how calls are made."""

    call_timeout_s: float | None = Field(default=None, gt=0)
    """Deadline in seconds of each unary call made without its own `timeout=`; none by
    default, since some calls rightly run long (LoadModel, InstallPath, DownloadAndCache
    read or move gigabytes). Streams and `Wait…` calls never take it: how long to follow
    or wait is the caller's `timeout=`."""

    retry_attempts: int = Field(default=5, ge=1, le=5)
    """Attempts a call gets while its service answers UNAVAILABLE (unreachable, or a
    service it depends on is down), with exponential backoff from 0.1 s; 1 turns retrying
    off (gRPC allows at most 5). A stream is retried only before its first message."""


def client_settings(settings: CommonSettings | None) -> ClientSettings:
    """`settings` as client settings: loaded from the file and environment when None; a
    plain `CommonSettings` keeps its values and takes the client defaults for the rest."""
    if settings is None:
        return ClientSettings.load()
    if isinstance(settings, ClientSettings):
        return settings
    values = {name: getattr(settings, name) for name in CommonSettings.model_fields}
    return ClientSettings.model_construct(**values)
