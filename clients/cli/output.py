"""How commands print: rich tables for people, JSON for scripts, progress bars on stderr.

Results go to stdout and nothing else does, so `--json` output pipes cleanly into `jq`;
progress bars and errors go to stderr. JSON is the API's own JSON form of the messages
(proto field names, enum names, RFC 3339 times, int64 values as strings, every field
present), the form `buf curl` and `grpcurl` print too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table


def stdout() -> Console:
    """A console on the current stdout (made per use: tests swap sys.stdout)."""
    return Console(highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def say(text: str) -> None:
    """One plain line of result on stdout (no markup: names may hold brackets)."""
    stdout().print(text, markup=False, soft_wrap=True)


def message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(value: Any) -> None:
    """Messages, lists and dicts of them, and plain values as indented JSON on stdout."""
    sys.stdout.write(json.dumps(_plain(value), indent=2) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, Message):
        return message_dict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    caption: str | None = None,
) -> None:
    """A table on stdout; long values (keys, paths) wrap rather than being cut short."""
    view = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for column in columns:
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(*row)
    stdout().print(view)


def fields(pairs: Iterable[tuple[str, str]], *, title: str | None = None) -> None:
    """One record as a two-column table of its non-empty fields."""
    view = Table(title=title, title_justify="left", show_header=False)
    view.add_column(style="bold")
    view.add_column(overflow="fold")
    for name, value in pairs:
        if value:
            view.add_row(name, value)
    stdout().print(view)


def label(enum: EnumTypeWrapper, number: int) -> str:
    """An enum value without its type's prefix, lower case: `running` for
    DOWNLOAD_JOB_STATUS_RUNNING; an empty string for UNSPECIFIED."""
    if number == 0:
        return ""
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    try:
        return enum.Name(number).removeprefix(prefix).lower()
    except ValueError:  # a value newer than this client's stubs
        return str(number)


def choices(enum: EnumTypeWrapper) -> type[StrEnum]:
    """A string enum of a proto enum's labels but UNSPECIFIED, for an option's choices."""
    names = [label(enum, value.number) for value in enum.DESCRIPTOR.values if value.number]
    return StrEnum(enum.DESCRIPTOR.name, {name.upper(): name for name in names})


def from_label(enum: EnumTypeWrapper, text: str) -> int:
    """The proto enum value that `label` writes as `text`."""
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return enum.Value(prefix + text.upper())


def count(number: int, noun: str) -> str:
    """`1 model`, `2 models`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def size(number: int) -> str:
    """Bytes for people: `1.2 MB`; empty for 0 (unknown)."""
    return decimal(number) if number else ""


def when(stamp: Timestamp) -> str:
    """A timestamp in local time to the second; empty when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return datetime.fromtimestamp(stamp.seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def transfer(done: int, total: int) -> str:
    """`3.1 MB / 10 MB (31%)`, or what is known of it."""
    if not total:
        return size(done)
    return f"{size(done) or '0'} / {size(total)} ({100 * done // total}%)"


def progress_bars() -> Progress:
    """Bars for byte transfers on stderr: spinner, name, bar, bytes, speed, time left.
    They vanish when done: the command's result says how it ended."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr(),
        transient=True,
    )
