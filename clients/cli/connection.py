"""How a command reaches the services: the settings its global options select, one SDK
client per invocation, and every page of a List call.

The global options are passed to `ClientSettings.load` as flags, so the CLI resolves
settings exactly as the services do (default < root's easel.yaml < EASEL_* < flag), with
the SDK's own (`call_timeout_s`, `retry_attempts`) on top.
Settings are read when a command first needs them, so `--help` works whatever they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer

from clients.cli.errors import UsageError
from clients.sdk import ClientSettings, EaselClient
from services.common.errors import InvalidArgumentError
from services.common.settings import SETTINGS_FILE_NAME

MAX_PAGE_SIZE = 1000
"""The largest page a List call returns (protos/README.md)."""


@dataclass
class Connection:
    """The invocation's settings and its client; made by the global options' callback."""

    flags: list[str] = field(default_factory=list)
    """The global options given, as `ClientSettings.load` flags (`--root`, `--auth-token`…)."""
    debug: bool = False
    _settings: ClientSettings | None = field(default=None, repr=False)
    _client: EaselClient | None = field(default=None, repr=False)

    @property
    def settings(self) -> ClientSettings:
        if self._settings is None:
            try:
                self._settings = ClientSettings.load(self.flags)
            except InvalidArgumentError as error:
                hint = (
                    f"Fix it in the environment (EASEL_<NAME>), {SETTINGS_FILE_NAME} under the "
                    "root, or the option."
                )
                raise UsageError(error.message, hint=hint) from error
        return self._settings

    @property
    def client(self) -> EaselClient:
        if self._client is None:
            self._client = EaselClient(self.settings)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def current(ctx: typer.Context) -> Connection:
    """The running command's connection, as `easel`'s global options set it up."""
    return ctx.ensure_object(Connection)


def client(ctx: typer.Context) -> EaselClient:
    """The running command's SDK client."""
    return current(ctx).client


def all_pages(call: Callable[[Any], Any], request: Any, items: str, limit: int = 0) -> list[Any]:
    """Every item of a paged List call, or the first `limit` when it is above 0."""
    if limit:
        request.page_size = min(limit, MAX_PAGE_SIZE)
    found: list[Any] = []
    while True:
        response = call(request)
        found.extend(getattr(response, items))
        if not response.next_page_token or (limit and len(found) >= limit):
            return found[:limit] if limit else found
        request.page_token = response.next_page_token
