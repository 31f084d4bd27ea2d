"""Typed settings shared by every Easel process.

Each setting is read, in increasing order of precedence, from its default, the root's
`easel.yaml`, an `EASEL_<NAME>` environment variable and a `--<name>` command-line flag.
One flat namespace serves all four processes: each process reads the settings it knows and
ignores the rest, so a single `easel.yaml` configures the whole suite.
"""

from __future__ import annotations

import os
import sys
import types
import typing
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from services.common.database_url import SQLITE_URL, check_database_url
from services.common.errors import FieldViolation, InvalidArgumentError

SETTINGS_FILE_NAME = "easel.yaml"
DEFAULT_ROOT = Path("~/easel")


class LogFormat(StrEnum):
    """How log lines are rendered."""

    AUTO = "auto"  # console when stderr is a terminal, JSON otherwise
    CONSOLE = "console"
    JSON = "json"


class CommonSettings(BaseSettings):
    """Settings every process reads: where things are, how to log, how to serve."""

    model_config = SettingsConfigDict(
        env_prefix="EASEL_",
        extra="ignore",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    root: Path = DEFAULT_ROOT
    """Root directory holding easel.yaml, databases/, models/ and outputs/ (EASEL_ROOT or
    --root only: the settings file lives inside it)."""

    invoker_address: str = "127.0.0.1:50051"
    """host:port the invoker listens on and other processes call it at."""

    model_manager_address: str = "127.0.0.1:50052"
    """host:port the model manager listens on and other processes call it at."""

    downloader_address: str = "127.0.0.1:50053"
    """host:port the downloader listens on and other processes call it at."""

    inference_address: str = "127.0.0.1:50054"
    """host:port the inference service listens on and other processes call it at. The
    invoker also takes several workers here: a comma-separated list of IP addresses or one
    DNS name resolving to every worker (`dns:///inference:50054`); see InvokerSettings."""

    log_level: str = "info"
    """Lowest level logged: debug, info, warning or error."""

    log_format: LogFormat = LogFormat.AUTO
    """auto (console on a terminal, JSON otherwise), console or json."""

    shutdown_grace_s: float = Field(default=5.0, ge=0)
    """Seconds in-flight calls get to finish after SIGTERM/SIGINT before they are cancelled."""

    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024)
    """Largest gRPC message sent or received, in bytes (images cross as PNG bytes)."""

    max_connection_age_s: float = Field(default=60.0, gt=0)
    """Seconds a server keeps a client's connection before asking the client to make a new
    one (calls in flight on it finish first): a client that reaches several servers through
    one DNS name, as the invoker reaches its inference workers, resolves the name again
    then, so servers added since get calls within this time."""

    auth_token: SecretStr | None = None
    """Bearer token: servers require it on every call but health checks; clients send it."""

    tls_cert_file: Path | None = None
    """PEM certificate chain the servers present; set with tls_key_file to serve TLS."""

    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""

    tls_ca_file: Path | None = None
    """PEM roots clients trust when calling a TLS server; the system roots when unset."""

    address_file: Path | None = None
    """File a server writes the host:port it listens on to, once bound: with port 0 in its
    address, the port the system chose. Set it per process (flag or environment)."""

    database_url: str = SQLITE_URL
    """Where services keep their state: sqlite: (each store in its own file under the root)
    or postgresql://user:password@host:port/database (every store in that database)."""

    @field_validator("root", "tls_cert_file", "tls_key_file", "tls_ca_file", "address_file")
    @classmethod
    def _expand_user(cls, path: Path | None) -> Path | None:
        return path.expanduser().resolve() if path is not None else None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str) -> str:
        return check_database_url(url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load` passes the file's values as init arguments, so they rank below the
        # environment; the CLI source, when given, is put in front of these by pydantic.
        return (EnvironmentVariables(settings_cls), init_settings)

    @classmethod
    def load(cls, argv: Sequence[str] = (), *, prog: str | None = None) -> Self:
        """Settings from the file under the root, the environment and `argv`'s flags.

        Invalid settings raise InvalidArgumentError naming them; for a program (`prog`
        given) they end it instead with one line on stderr and exit status 2, as a bad
        flag does, rather than a traceback.
        """
        try:
            return cls._load(argv, prog)
        except InvalidArgumentError as error:
            if prog is None:
                raise
            print(f"{prog}: {error.message}", file=sys.stderr)
            sys.exit(2)

    @classmethod
    def _load(cls, argv: Sequence[str], prog: str | None) -> Self:
        try:
            flags = CliSettingsSource(
                cls,
                cli_prog_name=prog,
                cli_kebab_case=True,
                cli_implicit_flags=True,
                cli_exit_on_error=True,
            )(args=list(argv))
            root = flags().get("root") or os.environ.get("EASEL_ROOT") or DEFAULT_ROOT
            file_values = read_settings_file(Path(root).expanduser() / SETTINGS_FILE_NAME)
            file_values.pop("root", None)
            return cls(_cli_settings_source=flags, **file_values)
        except ValidationError as exc:
            raise _invalid_settings(exc) from None
        except SettingsError as exc:
            raise InvalidArgumentError(f"invalid settings: {exc}") from None


class EnvironmentVariables(EnvSettingsSource):
    """EASEL_* variables; a list setting takes a JSON list or plain comma-separated values
    (`EASEL_ALLOWED_NETWORKS=127.0.0.0/8,10.0.0.0/8`)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if _is_list(field.annotation) and not value.lstrip().startswith("["):
            return [item.strip() for item in value.split(",") if item.strip()]
        return super().decode_complex_value(field_name, field, value)


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset)


def _invalid_settings(exc: ValidationError) -> InvalidArgumentError:
    """One error naming every invalid setting (by path, e.g. `allowed_networks[0]`)."""
    problems: dict[str, list[str]] = {}
    for error in exc.errors():
        path = str(error["loc"][0]) if error["loc"] else "settings"
        for part in error["loc"][1:]:
            if not isinstance(part, int):
                break  # the rest names alternatives of a union, not a place
            path += f"[{part}]"
        problems.setdefault(path, []).append(error["msg"])
    violations = [FieldViolation(path, " or ".join(msgs)) for path, msgs in problems.items()]
    described = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return InvalidArgumentError(f"invalid settings: {described}", violations=violations)


def read_settings_file(path: Path) -> dict[str, Any]:
    """The mapping in a settings file; empty when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"{path} is not valid YAML: {exc}", field=str(path)) from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidArgumentError(f"{path} must hold a mapping of settings", field=str(path))
    return {str(key).replace("-", "_"): value for key, value in values.items()}
